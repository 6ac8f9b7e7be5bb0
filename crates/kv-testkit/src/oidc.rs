//! A real OpenID provider process (the `oidc-provider` npm package, see `scripts/oidc`), issuing
//! JWT access tokens through the client-credentials grant.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::free_port;

#[derive(Debug)]
pub struct OidcProvider {
    child: Option<Child>,
    port: u16,
    script: PathBuf,
    /// Further variables for the script (see `scripts/oidc/provider.mjs`), kept across rotations.
    env: Vec<(String, String)>,
}

/// The audience the test provider puts in access tokens.
pub const OIDC_AUDIENCE: &str = "urn:kv-api";

impl OidcProvider {
    /// Starts the provider with one fresh signing key named `kid`.
    pub fn start(kid: &str) -> OidcProvider {
        OidcProvider::start_with(kid, &[])
    }

    /// Starts the provider with further variables for its script, such as `EXPORT_KEY_FILE` or
    /// `IMPORT_KEY_FILE` (see `scripts/oidc/provider.mjs`); they are kept across rotations.
    pub fn start_with(kid: &str, env: &[(&str, &str)]) -> OidcProvider {
        let mut provider = OidcProvider {
            child: None,
            port: free_port(),
            script: oidc_provider_script(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        provider.launch(kid, None);
        provider
    }

    fn launch(&mut self, kid: &str, keep: Option<&str>) {
        let mut command = Command::new("node");
        command
            .arg(&self.script)
            .env("PORT", self.port.to_string())
            .env("KEY_ID", kid)
            .env("AUDIENCE", OIDC_AUDIENCE)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(keep) = keep {
            command.env("KEEP_KEY", keep);
        }
        let mut child = command.spawn().expect("start the OpenID provider (node)");
        let stdout = child.stdout.take().expect("provider stdout");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    ready_tx.send(()).ok();
                }
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            child.kill().ok();
            panic!("the OpenID provider did not start");
        }
        self.child = Some(child);
    }

    /// The issuer URL, which is also where discovery starts.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Restarts the provider on the same address with a new signing key `kid`, optionally still
    /// publishing a key named `keep` (a fresh one: tokens signed before the restart no longer verify).
    pub fn rotate(&mut self, kid: &str, keep: Option<&str>) {
        self.stop();
        self.launch(kid, keep);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// An access token for `client` (`kv-full` or `kv-reader`) with the given scopes.
    pub async fn token(&self, client: &str, scope: &str) -> String {
        let response = reqwest::Client::new()
            .post(format!("{}/token", self.issuer()))
            .basic_auth(client, Some(format!("{client}-secret")))
            .form(&[("grant_type", "client_credentials"), ("scope", scope)])
            .send()
            .await
            .expect("token request");
        let status = response.status();
        let body: serde_json::Value = response.json().await.expect("token response");
        assert!(
            status.is_success(),
            "token request refused: {status} {body}"
        );
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// The variables a service needs to trust this provider.
    pub fn service_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OIDC_IDP_ADDRESS_FOR_SERVER", self.issuer()),
            ("OIDC_AUDIENCE", OIDC_AUDIENCE.to_owned()),
            ("OIDC_REQUIRE_HTTPS_METADATA", "false".to_owned()),
        ]
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The installed provider script: `KV_OIDC_PROVIDER`, or what the install script reports
/// (installing it on first use).
fn oidc_provider_script() -> PathBuf {
    if let Some(path) = std::env::var_os("KV_OIDC_PROVIDER") {
        return PathBuf::from(path);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new("bash")
        .arg(root.join("scripts/install-oidc-provider.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/install-oidc-provider.sh");
    assert!(
        output.status.success(),
        "installing the OpenID provider failed"
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// When `token` (a JWT access token) expires: its `exp` claim.
pub fn token_expiry(token: &str) -> std::time::SystemTime {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url claims"),
    )
    .expect("JSON claims");
    let exp = claims["exp"].as_u64().expect("an exp claim");
    std::time::UNIX_EPOCH + Duration::from_secs(exp)
}
