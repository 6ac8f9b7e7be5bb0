//! OpenID Connect bearer-token settings, named as in the original service.

use std::time::Duration;

use super::env::{Env, SettingsError};
use super::prefixes::{PrefixRules, PREFIXES_VAR};
use super::tls::CaFile;

/// OpenID Connect bearer-token settings, named as in the original service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// KV_API_DISABLE_API_AUTH=true: no authentication at all (development only).
    pub disabled: bool,
    pub oidc: OidcSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OidcSettings {
    pub idp_address_for_server: Option<String>,
    pub idp_address_for_users: Option<String>,
    pub audience: Option<String>,
    pub require_https_metadata: bool,
    pub validate_external_certificates: bool,
    /// OIDC_CA_PEM_LOCATION: authorities trusted for the provider beside the system's store.
    pub ca: Option<CaFile>,
    pub jwks_uri: Option<String>,
    pub token_endpoint: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub end_session_endpoint: Option<String>,
    /// Where scopes or roles are read in a token: a dotted path, `scope` (a space-separated
    /// string, the OAuth 2 default) or `realm_access.roles` (Keycloak's realm roles, an array).
    pub claim: String,
    /// Per operation, the scopes or roles of which a token needs at least one; empty = any valid token.
    pub read: Vec<String>,
    pub write: Vec<String>,
    pub delete: Vec<String>,
    /// KV_API_AUTH_ADMIN: the reader's snapshot route; `kv:admin` unless set (set it empty to
    /// admit any valid token).
    pub admin: Vec<String>,
    /// KV_API_AUTH_ALLOWED_CLIENTS: when not empty, a token's `azp` (or `client_id`) must be one
    /// of these clients.
    pub allowed_clients: Vec<String>,
    /// JWS algorithms accepted; only asymmetric ones can be configured.
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// How often the provider's keys are re-fetched (also on an unknown `kid`, rate-limited).
    pub jwks_refresh: Duration,
    /// How long start-up keeps trying to reach the provider before giving up.
    pub discovery_timeout: Duration,
    /// KV_API_AUTH_PREFIXES: the key prefixes each scope or role may act on; `None` (unset):
    /// every key, for whoever holds the operation's scope.
    pub prefixes: Option<PrefixRules>,
}

/// Asymmetric JWS algorithms; `none` and the HMAC family can never be enabled.
pub const ASYMMETRIC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// What KV_API_AUTH_ADMIN is unless set: a snapshot copies the whole replica, so no token
/// gets it by default.
pub const DEFAULT_ADMIN_SCOPE: &str = "kv:admin";

fn word_list(raw: Option<String>) -> Vec<String> {
    raw.unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

impl AuthSettings {
    pub(super) fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let disabled = env.bool("KV_API_DISABLE_API_AUTH", false)?;
        let oidc = OidcSettings {
            idp_address_for_server: env.string("OIDC_IDP_ADDRESS_FOR_SERVER"),
            idp_address_for_users: env.string("OIDC_IDP_ADDRESS_FOR_USERS"),
            audience: env.string("OIDC_AUDIENCE"),
            require_https_metadata: env.bool("OIDC_REQUIRE_HTTPS_METADATA", true)?,
            validate_external_certificates: env
                .bool("OIDC_HTTPCLIENT_VALIDATE_EXTERNAL_CERTIFICATES", true)?,
            ca: CaFile::from_env(env, "OIDC_CA_PEM_LOCATION")?,
            jwks_uri: env.string("OIDC_JWKS_URI"),
            token_endpoint: env.string("OIDC_TOKEN_ENDPOINT"),
            authorization_endpoint: env.string("OIDC_AUTHORIZATION_ENDPOINT"),
            end_session_endpoint: env.string("OIDC_END_SESSION_ENDPOINT"),
            claim: env
                .string("KV_API_AUTH_CLAIM")
                .unwrap_or_else(|| "scope".to_owned()),
            read: word_list(env.string("KV_API_AUTH_READ")),
            write: word_list(env.string("KV_API_AUTH_WRITE")),
            delete: word_list(env.string("KV_API_AUTH_DELETE")),
            admin: word_list(Some(
                env.string("KV_API_AUTH_ADMIN")
                    .unwrap_or_else(|| DEFAULT_ADMIN_SCOPE.to_owned()),
            )),
            allowed_clients: word_list(env.string("KV_API_AUTH_ALLOWED_CLIENTS")),
            algorithms: match env.string("KV_API_AUTH_ALGORITHMS") {
                None => ASYMMETRIC_ALGORITHMS
                    .iter()
                    .map(|a| (*a).to_owned())
                    .collect(),
                Some(raw) => {
                    let algorithms = word_list(Some(raw));
                    if let Some(bad) = algorithms
                        .iter()
                        .find(|a| !ASYMMETRIC_ALGORITHMS.contains(&a.as_str()))
                    {
                        return Err(SettingsError::new(
                            "KV_API_AUTH_ALGORITHMS",
                            format!(
                                "{bad:?} is not allowed; choose among {}",
                                ASYMMETRIC_ALGORITHMS.join(", ")
                            ),
                        ));
                    }
                    algorithms
                }
            },
            leeway: Duration::from_secs(env.number("KV_API_AUTH_LEEWAY_SECONDS", 30u64)?),
            jwks_refresh: Duration::from_secs(
                env.number("KV_API_AUTH_JWKS_REFRESH_SECONDS", 300u64)?
                    .max(1),
            ),
            discovery_timeout: Duration::from_secs(
                env.number("KV_API_AUTH_DISCOVERY_TIMEOUT_SECONDS", 60u64)?
                    .max(1),
            ),
            prefixes: env
                .string(PREFIXES_VAR)
                .map(|raw| PrefixRules::parse(&raw))
                .transpose()?,
        };
        if disabled && oidc.prefixes.is_some() {
            // Without tokens there are no scopes to match: the rules could never be enforced,
            // and serving every key while the operator believes them in force is worse.
            return Err(SettingsError::new(
                PREFIXES_VAR,
                "cannot be enforced while KV_API_DISABLE_API_AUTH=true (there are no tokens to \
                 carry scopes); unset one of them",
            ));
        }
        if !disabled {
            // Auth is on by default; without a provider to trust, refuse rather than serve openly.
            for (var, value) in [
                ("OIDC_IDP_ADDRESS_FOR_SERVER", &oidc.idp_address_for_server),
                ("OIDC_AUDIENCE", &oidc.audience),
            ] {
                if value.is_none() {
                    return Err(SettingsError::new(
                        var,
                        "is required while API auth is on (set KV_API_DISABLE_API_AUTH=true \
                         only for local development)",
                    ));
                }
            }
        }
        Ok(Self { disabled, oidc })
    }
}
