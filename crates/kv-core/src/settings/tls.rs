//! Extra certificate authorities an HTTP client of the services trusts, beside the system's
//! store: a private provider's or registry's CA, given as a PEM file.

use super::env::{Env, SettingsError};

/// A PEM bundle read and parsed at start-up, so a bad file fails naming its variable.
#[derive(Clone)]
pub struct CaFile {
    pub path: String,
    certificates: Vec<reqwest::Certificate>,
}

impl std::fmt::Debug for CaFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaFile")
            .field("path", &self.path)
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

impl PartialEq for CaFile {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.certificates.len() == other.certificates.len()
    }
}

impl Eq for CaFile {}

impl CaFile {
    pub fn from_env(env: &Env, var: &str) -> Result<Option<Self>, SettingsError> {
        let Some(path) = env.string(var) else {
            return Ok(None);
        };
        let pem = std::fs::read(&path)
            .map_err(|e| SettingsError::new(var, format!("cannot read {path}: {e}")))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| SettingsError::new(var, format!("{path}: not PEM certificates: {e}")))?;
        if certificates.is_empty() {
            return Err(SettingsError::new(
                var,
                format!("{path} holds no PEM certificate"),
            ));
        }
        Ok(Some(Self { path, certificates }))
    }

    /// The client builder trusting these authorities too (the system's store stays trusted).
    pub fn trusted_by(&self, mut builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        for certificate in &self.certificates {
            builder = builder.add_root_certificate(certificate.clone());
        }
        builder
    }
}

/// A client builder that trusts `ca` beside the system's store, when given.
pub fn client_trusting(ca: Option<&CaFile>) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder();
    match ca {
        Some(ca) => ca.trusted_by(builder),
        None => builder,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_names_its_variable() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let path = path.to_str().expect("utf-8").to_owned();
        let env = Env::from_pairs([("OIDC_CA_PEM_LOCATION", path.as_str())]).expect("env");
        let err = CaFile::from_env(&env, "OIDC_CA_PEM_LOCATION").expect_err("must fail");
        assert_eq!(err.var, "OIDC_CA_PEM_LOCATION");
        let env = Env::from_pairs([("OIDC_CA_PEM_LOCATION", "/nonexistent/ca.pem")]).expect("env");
        let err = CaFile::from_env(&env, "OIDC_CA_PEM_LOCATION").expect_err("must fail");
        assert!(err.reason.contains("cannot read"), "{err}");
    }
}
