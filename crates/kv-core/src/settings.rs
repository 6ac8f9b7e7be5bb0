//! Settings read once from the environment at start-up, with the original service's variable names.
//!
//! [`Env`] is the typed view over the environment (through the `config` crate) that both binaries
//! use; every error it returns names the variable that was wrong. [`CoreSettings`] holds what both
//! binaries need; each binary adds its own role's settings on top.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use config::{Config, Environment, Source};

use crate::secret::Secret;

/// A setting that is missing or malformed. `Display` names the variable, so a start-up failure
/// tells the operator exactly what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct SettingsError {
    pub var: String,
    pub reason: String,
}

impl SettingsError {
    pub fn new(var: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            var: var.into(),
            reason: reason.into(),
        }
    }
}

/// The process environment as the `config` crate sees it, with typed getters.
#[derive(Debug, Clone)]
pub struct Env {
    vars: Config,
}

impl Env {
    pub fn from_process() -> Result<Self, SettingsError> {
        Self::build(Environment::default())
    }

    /// An environment made of the given pairs only; tests use it instead of mutating the process's.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, SettingsError> {
        let map = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Self::build(Environment::default().source(Some(map)))
    }

    fn build(source: Environment) -> Result<Self, SettingsError> {
        // Unparsed strings: "007" must stay "007" for a group id, and each getter parses its own type.
        let source = source.try_parsing(false).ignore_empty(true);
        let vars = Config::builder()
            .add_source(source)
            .build()
            .map_err(|e| SettingsError::new("environment", e.to_string()))?;
        Ok(Self { vars })
    }

    /// The variable's value, or `None` when unset or empty.
    pub fn string(&self, var: &str) -> Option<String> {
        self.vars.get_string(&var.to_ascii_lowercase()).ok()
    }

    pub fn required(&self, var: &str) -> Result<String, SettingsError> {
        self.string(var)
            .ok_or_else(|| SettingsError::new(var, "is required but not set"))
    }

    /// Accepts the spellings .NET and shells use: true/false, 1/0, yes/no, on/off, any case.
    pub fn bool(&self, var: &str, default: bool) -> Result<bool, SettingsError> {
        let Some(raw) = self.string(var) else {
            return Ok(default);
        };
        match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(SettingsError::new(
                var,
                format!("expected true or false, got {raw:?}"),
            )),
        }
    }

    pub fn number<T>(&self, var: &str, default: T) -> Result<T, SettingsError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.string(var) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|e| {
                SettingsError::new(var, format!("expected a number, got {raw:?} ({e})"))
            }),
        }
    }

    /// A duration given in whole milliseconds, which must be positive.
    pub fn millis(&self, var: &str, default: Duration) -> Result<Duration, SettingsError> {
        let default_ms = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
        match self.number::<u64>(var, default_ms)? {
            0 => Err(SettingsError::new(
                var,
                "must be greater than 0 milliseconds",
            )),
            ms => Ok(Duration::from_millis(ms)),
        }
    }

    /// Every variable whose upper-cased name starts with `prefix`, upper-cased, sorted.
    fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let prefix = prefix.to_ascii_lowercase();
        let Ok(all) = self.vars.collect() else {
            return Vec::new();
        };
        let mut found: Vec<(String, String)> = all
            .into_iter()
            .filter(|(name, _)| name.starts_with(&prefix))
            .filter_map(|(name, value)| {
                Some((name.to_ascii_uppercase(), value.into_string().ok()?))
            })
            .collect();
        found.sort();
        found
    }
}

/// Reads a file holding one secret on its first line (trailing newline and spaces dropped).
pub fn read_first_line(var: &str, path: &str) -> Result<Secret<String>, SettingsError> {
    let content = std::fs::read_to_string(Path::new(path))
        .map_err(|e| SettingsError::new(var, format!("cannot read {path}: {e}")))?;
    let line = content.lines().next().unwrap_or_default().trim().to_owned();
    if line.is_empty() {
        return Err(SettingsError::new(var, format!("{path} is empty")));
    }
    Ok(Secret::new(line))
}

/// What both binaries need.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    /// `host:port` to bind; port 0 picks a free one (tests read it back from the bound server).
    pub listen: String,
    pub topic: String,
    pub kafka: KafkaProperties,
    pub topic_encryption: TopicEncryption,
    pub auth: AuthSettings,
    pub log: LogSettings,
    /// Lines worth logging once tracing is up, such as a deprecated alias in use.
    pub notices: Vec<String>,
}

impl CoreSettings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let mut notices = Vec::new();
        Ok(Self {
            listen: listen_address(env)?,
            topic: topic_name(env)?,
            kafka: KafkaProperties::from_env(env)?,
            topic_encryption: TopicEncryption::from_env(env, &mut notices)?,
            auth: AuthSettings::from_env(env)?,
            log: LogSettings::from_env(env)?,
            notices,
        })
    }
}

const DEFAULT_LISTEN: &str = "0.0.0.0:8080";

/// KV_API_LISTEN (`host:port`) wins; otherwise the first `http://` entry of ASPNETCORE_URLS, the
/// original's variable (`http://+:8080;https://...`), where `+` and `*` mean every interface.
fn listen_address(env: &Env) -> Result<String, SettingsError> {
    if let Some(listen) = env.string("KV_API_LISTEN") {
        return parse_host_port("KV_API_LISTEN", &listen);
    }
    let Some(urls) = env.string("ASPNETCORE_URLS") else {
        return Ok(DEFAULT_LISTEN.to_owned());
    };
    let http = urls
        .split(';')
        .map(str::trim)
        .find_map(|url| url.strip_prefix("http://"))
        .ok_or_else(|| {
            SettingsError::new(
                "ASPNETCORE_URLS",
                format!(
                    "no http:// URL in {urls:?}; TLS is terminated in front of this service, \
                     so give an http:// address (or set KV_API_LISTEN)"
                ),
            )
        })?;
    let authority = http.trim_end_matches('/');
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !port.contains(']') => (host, port),
        _ => (authority, "80"),
    };
    let host = match host {
        "+" | "*" => "0.0.0.0",
        "localhost" => "127.0.0.1",
        other => other,
    };
    parse_host_port("ASPNETCORE_URLS", &format!("{host}:{port}"))
}

fn parse_host_port(var: &str, value: &str) -> Result<String, SettingsError> {
    let bad = || {
        SettingsError::new(
            var,
            format!("expected host:port (like 0.0.0.0:8080), got {value:?}"),
        )
    };
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(value.to_owned())
}

/// Kafka's own rule for topic names, checked here so a typo fails at start-up, not on first write.
fn topic_name(env: &Env) -> Result<String, SettingsError> {
    const VAR: &str = "KV_API_KAFKA_KEY_VALUE_TOPIC";
    let topic = env.required(VAR)?;
    let valid_chars = topic
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if topic.len() > 249 || !valid_chars || topic == "." || topic == ".." {
        return Err(SettingsError::new(
            VAR,
            format!("{topic:?} is not a valid Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"),
        ));
    }
    Ok(topic)
}

/// librdkafka properties taken from `KAFKA_*` variables: `KAFKA_FOO_BAR=x` becomes `foo.bar=x`,
/// so every librdkafka setting is reachable from the environment. A few variables of the original
/// service have a meaning of their own and are translated or left to a role (see [`RESERVED`]).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct KafkaProperties {
    properties: BTreeMap<String, String>,
}

/// `KAFKA_*` variables that are not plain librdkafka pass-through.
const RESERVED: &[&str] = &[
    // Read by the roles themselves.
    "KAFKA_ACKS",
    "KAFKA_GROUP_ID",
    "KAFKA_ENABLE_AUTO_COMMIT",
    "KAFKA_AUTO_COMMIT_INTERVAL_MS",
    "KAFKA_SCHEMA_REGISTRY_URL",
    // Translated below.
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SSL_CA_PEM_LOCATION",
    "KAFKA_SSL_KEY_PASSWORD_LOCATION",
];

impl KafkaProperties {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let mut properties = BTreeMap::new();
        properties.insert(
            "bootstrap.servers".to_owned(),
            env.required("KAFKA_BOOTSTRAP_SERVERS")?,
        );
        for (var, value) in env.vars_with_prefix("KAFKA_") {
            if RESERVED.contains(&var.as_str()) {
                continue;
            }
            properties.insert(property_name(&var), value);
        }
        if let Some(protocol) = env.string("KAFKA_SECURITY_PROTOCOL") {
            properties.insert(
                "security.protocol".to_owned(),
                security_protocol(&protocol)?,
            );
        }
        if let Some(mechanism) = env.string("KAFKA_SASL_MECHANISM") {
            properties.insert("sasl.mechanism".to_owned(), sasl_mechanism(&mechanism));
        }
        if let Some(path) = env.string("KAFKA_SSL_CA_PEM_LOCATION") {
            properties.insert("ssl.ca.location".to_owned(), path);
        }
        if let Some(path) = env.string("KAFKA_SSL_KEY_PASSWORD_LOCATION") {
            let password = read_first_line("KAFKA_SSL_KEY_PASSWORD_LOCATION", &path)?;
            properties.insert("ssl.key.password".to_owned(), password.expose().clone());
        }
        Ok(Self { properties })
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn get(&self, property: &str) -> Option<&str> {
        self.properties.get(property).map(String::as_str)
    }

    pub fn bootstrap_servers(&self) -> &str {
        self.get("bootstrap.servers").unwrap_or_default()
    }
}

/// Values of properties whose name says they hold a credential are never printed.
fn is_secret_property(name: &str) -> bool {
    [
        "password",
        "secret",
        "pem",
        "jaas",
        "oauthbearer.config",
        "token",
    ]
    .iter()
    .any(|marker| name.contains(marker))
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in &self.properties {
            if is_secret_property(name) {
                map.entry(name, &"[redacted]");
            } else {
                map.entry(name, value);
            }
        }
        map.finish()
    }
}

fn property_name(var: &str) -> String {
    var.trim_start_matches("KAFKA_")
        .to_ascii_lowercase()
        .replace('_', ".")
}

/// Accepts librdkafka's names and the .NET client's enum names the original service documented.
fn security_protocol(raw: &str) -> Result<String, SettingsError> {
    let normalized = raw.trim().to_ascii_lowercase().replace(['_', '-'], "");
    let protocol = match normalized.as_str() {
        "plaintext" => "plaintext",
        "ssl" => "ssl",
        "saslplaintext" => "sasl_plaintext",
        "saslssl" => "sasl_ssl",
        _ => {
            return Err(SettingsError::new(
                "KAFKA_SECURITY_PROTOCOL",
                format!("expected plaintext, ssl, sasl_plaintext or sasl_ssl, got {raw:?}"),
            ))
        }
    };
    Ok(protocol.to_owned())
}

/// Maps the .NET enum names (`ScramSha256`) to librdkafka's (`SCRAM-SHA-256`); others pass as given.
fn sasl_mechanism(raw: &str) -> String {
    match raw
        .trim()
        .to_ascii_lowercase()
        .replace(['_', '-'], "")
        .as_str()
    {
        "plain" => "PLAIN".to_owned(),
        "scramsha256" => "SCRAM-SHA-256".to_owned(),
        "scramsha512" => "SCRAM-SHA-512".to_owned(),
        "gssapi" => "GSSAPI".to_owned(),
        "oauthbearer" => "OAUTHBEARER".to_owned(),
        _ => raw.trim().to_owned(),
    }
}

/// Whether records on the topic are encrypted, and with which 256-bit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicEncryption {
    Off,
    On { key: Secret<[u8; 32]> },
}

impl TopicEncryption {
    fn from_env(env: &Env, notices: &mut Vec<String>) -> Result<Self, SettingsError> {
        if !env.bool("KV_API_ENCRYPT_DATA_ON_KAFKA", false)? {
            if env.string("KV_API_AES_KEY").is_some()
                || env.string("KV_API_AES_KEY_LOCATION").is_some()
            {
                notices.push(
                    "an AES key is configured but KV_API_ENCRYPT_DATA_ON_KAFKA is not true: \
                     records on the topic are plaintext"
                        .to_owned(),
                );
            }
            return Ok(Self::Off);
        }
        // As in the original, the variable wins over the file when both are set.
        let (var, hex) = match env.string("KV_API_AES_KEY") {
            Some(hex) => ("KV_API_AES_KEY", Secret::new(hex)),
            None => match env.string("KV_API_AES_KEY_LOCATION") {
                Some(path) => (
                    "KV_API_AES_KEY_LOCATION",
                    read_first_line("KV_API_AES_KEY_LOCATION", &path)?,
                ),
                None => {
                    return Err(SettingsError::new(
                        "KV_API_AES_KEY",
                        "KV_API_ENCRYPT_DATA_ON_KAFKA is true, so KV_API_AES_KEY or \
                         KV_API_AES_KEY_LOCATION must give a 256-bit key as 64 hex characters",
                    ))
                }
            },
        };
        let key = decode_hex_key(hex.expose().trim()).ok_or_else(|| {
            SettingsError::new(
                var,
                "expected 64 hex characters (0-9, a-f, A-F), a 256-bit key",
            )
        })?;
        Ok(Self::On {
            key: Secret::new(key),
        })
    }
}

fn decode_hex_key(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (slot, pair) in key.iter_mut().zip(bytes.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *slot = u8::from_str_radix(text, 16).ok()?;
    }
    Some(key)
}

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
    /// JWS algorithms accepted; only asymmetric ones can be configured.
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// How often the provider's keys are re-fetched (also on an unknown `kid`, rate-limited).
    pub jwks_refresh: Duration,
    /// How long start-up keeps trying to reach the provider before giving up.
    pub discovery_timeout: Duration,
}

/// Asymmetric JWS algorithms; `none` and the HMAC family can never be enabled.
pub const ASYMMETRIC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

fn word_list(raw: Option<String>) -> Vec<String> {
    raw.unwrap_or_default()
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

impl AuthSettings {
    fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let disabled = env.bool("KV_API_DISABLE_API_AUTH", false)?;
        let oidc = OidcSettings {
            idp_address_for_server: env.string("OIDC_IDP_ADDRESS_FOR_SERVER"),
            idp_address_for_users: env.string("OIDC_IDP_ADDRESS_FOR_USERS"),
            audience: env.string("OIDC_AUDIENCE"),
            require_https_metadata: env.bool("OIDC_REQUIRE_HTTPS_METADATA", true)?,
            validate_external_certificates: env
                .bool("OIDC_HTTPCLIENT_VALIDATE_EXTERNAL_CERTIFICATES", true)?,
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
        };
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// A `tracing` filter directive such as `info` or `info,kv_reader=debug`.
    pub filter: String,
    pub format: LogFormat,
}

impl LogSettings {
    /// RUST_LOG wins; otherwise the original's LOGGING__LOGLEVEL__DEFAULT with .NET level names.
    fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let filter = match env.string("RUST_LOG") {
            Some(filter) => {
                tracing_subscriber::EnvFilter::try_new(&filter)
                    .map_err(|e| SettingsError::new("RUST_LOG", e.to_string()))?;
                filter
            }
            None => match env.string("LOGGING__LOGLEVEL__DEFAULT") {
                Some(level) => dotnet_level(&level)
                    .ok_or_else(|| {
                        SettingsError::new(
                            "LOGGING__LOGLEVEL__DEFAULT",
                            format!(
                                "expected Trace, Debug, Information, Warning, Error, Critical \
                                 or None, got {level:?}"
                            ),
                        )
                    })?
                    .to_owned(),
                None => "info".to_owned(),
            },
        };
        let format = match env.string("KV_API_LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(SettingsError::new(
                    "KV_API_LOG_FORMAT",
                    format!("expected text or json, got {other:?}"),
                ))
            }
        };
        Ok(Self { filter, format })
    }
}

fn dotnet_level(level: &str) -> Option<&'static str> {
    Some(match level.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "information" | "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "none" | "off" => "off",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let mut all = vec![
            ("KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092,broker-2:9092"),
            ("KV_API_KAFKA_KEY_VALUE_TOPIC", "key-value-store"),
            ("KV_API_DISABLE_API_AUTH", "true"),
        ];
        all.extend_from_slice(pairs);
        Env::from_pairs(all.iter().copied()).expect("environment")
    }

    fn core(pairs: &[(&str, &str)]) -> Result<CoreSettings, SettingsError> {
        CoreSettings::from_env(&env(pairs))
    }

    #[test]
    fn a_minimal_environment_gives_the_documented_defaults() {
        let settings = core(&[]).expect("settings");
        assert_eq!(settings.listen, "0.0.0.0:8080");
        assert_eq!(settings.topic, "key-value-store");
        assert_eq!(
            settings.kafka.bootstrap_servers(),
            "broker-1:9092,broker-2:9092"
        );
        assert_eq!(settings.topic_encryption, TopicEncryption::Off);
        assert_eq!(settings.log.filter, "info");
        assert_eq!(settings.log.format, LogFormat::Text);
    }

    #[test]
    fn a_missing_bootstrap_server_list_is_named_in_the_error() {
        let env = Env::from_pairs([
            ("KV_API_KAFKA_KEY_VALUE_TOPIC", "t"),
            ("KV_API_DISABLE_API_AUTH", "true"),
        ])
        .expect("environment");
        let err = CoreSettings::from_env(&env).expect_err("must fail");
        assert_eq!(err.var, "KAFKA_BOOTSTRAP_SERVERS");
        assert!(err.to_string().contains("required"), "{err}");
    }

    #[test]
    fn an_invalid_topic_name_is_refused() {
        let err = core(&[("KV_API_KAFKA_KEY_VALUE_TOPIC", "my topic!")]).expect_err("must fail");
        assert_eq!(err.var, "KV_API_KAFKA_KEY_VALUE_TOPIC");
    }

    #[test]
    fn a_bad_bool_names_its_variable() {
        let err = core(&[("KV_API_DISABLE_API_AUTH", "maybe")]).expect_err("must fail");
        assert_eq!(err.var, "KV_API_DISABLE_API_AUTH");
        assert!(err.reason.contains("maybe"), "{err}");
    }

    #[test]
    fn dotnet_spellings_of_bools_are_accepted() {
        let env = env(&[("A", "True"), ("B", "FALSE"), ("C", "1"), ("D", "off")]);
        assert!(env.bool("A", false).expect("A"));
        assert!(!env.bool("B", true).expect("B"));
        assert!(env.bool("C", false).expect("C"));
        assert!(!env.bool("D", true).expect("D"));
        assert!(env.bool("UNSET", true).expect("default"));
    }

    #[test]
    fn a_bad_number_names_its_variable() {
        let err = env(&[("KAFKA_AUTO_COMMIT_INTERVAL_MS", "soon")])
            .millis("KAFKA_AUTO_COMMIT_INTERVAL_MS", Duration::from_secs(1))
            .expect_err("must fail");
        assert_eq!(err.var, "KAFKA_AUTO_COMMIT_INTERVAL_MS");
        assert!(err.reason.contains("soon"));
    }

    #[test]
    fn group_ids_keep_leading_zeros() {
        let env = env(&[("KAFKA_GROUP_ID", "007")]);
        assert_eq!(env.string("KAFKA_GROUP_ID").as_deref(), Some("007"));
    }

    #[test]
    fn aspnetcore_urls_plus_means_every_interface() {
        let settings = core(&[("ASPNETCORE_URLS", "http://+:8080")]).expect("settings");
        assert_eq!(settings.listen, "0.0.0.0:8080");
    }

    #[test]
    fn aspnetcore_urls_takes_the_first_http_entry() {
        let settings = core(&[(
            "ASPNETCORE_URLS",
            "https://localhost:8443;http://localhost:5000",
        )])
        .expect("settings");
        assert_eq!(settings.listen, "127.0.0.1:5000");
    }

    #[test]
    fn aspnetcore_urls_with_only_https_is_refused() {
        let err = core(&[("ASPNETCORE_URLS", "https://+:443")]).expect_err("must fail");
        assert_eq!(err.var, "ASPNETCORE_URLS");
    }

    #[test]
    fn kv_api_listen_wins_over_aspnetcore_urls() {
        let settings = core(&[
            ("ASPNETCORE_URLS", "http://+:8080"),
            ("KV_API_LISTEN", "127.0.0.1:0"),
        ])
        .expect("settings");
        assert_eq!(settings.listen, "127.0.0.1:0");
    }

    #[test]
    fn a_listen_address_without_a_port_is_refused() {
        let err = core(&[("KV_API_LISTEN", "localhost")]).expect_err("must fail");
        assert_eq!(err.var, "KV_API_LISTEN");
    }

    #[test]
    fn unknown_kafka_variables_pass_through_as_librdkafka_properties() {
        let settings = core(&[
            ("KAFKA_SOCKET_KEEPALIVE_ENABLE", "true"),
            ("KAFKA_SSL_CERTIFICATE_LOCATION", "/secrets/client.crt"),
            ("KAFKA_GROUP_ID", "not-a-passthrough"),
        ])
        .expect("settings");
        assert_eq!(settings.kafka.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(
            settings.kafka.get("ssl.certificate.location"),
            Some("/secrets/client.crt")
        );
        assert_eq!(settings.kafka.get("group.id"), None);
    }

    #[test]
    fn the_originals_kafka_variables_are_translated() {
        let settings = core(&[
            ("KAFKA_SECURITY_PROTOCOL", "SaslSsl"),
            ("KAFKA_SASL_MECHANISM", "ScramSha512"),
            ("KAFKA_SSL_CA_PEM_LOCATION", "/secrets/ca.crt"),
        ])
        .expect("settings");
        assert_eq!(settings.kafka.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(settings.kafka.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(
            settings.kafka.get("ssl.ca.location"),
            Some("/secrets/ca.crt")
        );
    }

    #[test]
    fn an_unknown_security_protocol_is_refused() {
        let err = core(&[("KAFKA_SECURITY_PROTOCOL", "carrier-pigeon")]).expect_err("must fail");
        assert_eq!(err.var, "KAFKA_SECURITY_PROTOCOL");
    }

    #[test]
    fn the_ssl_key_password_is_read_from_its_file_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("kv-settings-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("password.txt");
        std::fs::write(&file, "s3cr3t-pa55\n").expect("write");
        let settings = core(&[(
            "KAFKA_SSL_KEY_PASSWORD_LOCATION",
            file.to_str().expect("utf-8 path"),
        )])
        .expect("settings");
        assert_eq!(settings.kafka.get("ssl.key.password"), Some("s3cr3t-pa55"));
        assert!(!format!("{settings:?}").contains("s3cr3t-pa55"));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn an_unreadable_password_file_names_its_variable() {
        let err = core(&[(
            "KAFKA_SSL_KEY_PASSWORD_LOCATION",
            "/nonexistent/password.txt",
        )])
        .expect_err("must fail");
        assert_eq!(err.var, "KAFKA_SSL_KEY_PASSWORD_LOCATION");
    }

    #[test]
    fn passthrough_secrets_are_redacted_in_debug_output() {
        let settings = core(&[("KAFKA_SASL_PASSWORD", "hunter2")]).expect("settings");
        assert_eq!(settings.kafka.get("sasl.password"), Some("hunter2"));
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    const HEX_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";

    #[test]
    fn the_aes_key_variable_wins_over_the_key_file() {
        let settings = core(&[
            ("KV_API_ENCRYPT_DATA_ON_KAFKA", "true"),
            ("KV_API_AES_KEY", HEX_KEY),
            ("KV_API_AES_KEY_LOCATION", "/nonexistent/key"),
        ])
        .expect("settings");
        let TopicEncryption::On { key } = settings.topic_encryption else {
            panic!("encryption should be on");
        };
        assert_eq!(key.expose()[1], 0x11);
        assert_eq!(key.expose()[31], 0xff);
        assert!(!format!("{key:?}").contains("11"));
    }

    #[test]
    fn the_aes_key_is_read_from_the_first_line_of_its_file() {
        let dir = std::env::temp_dir().join(format!("kv-aes-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("aes.key");
        std::fs::write(&file, format!("{HEX_KEY}\nignored second line\n")).expect("write");
        let settings = core(&[
            ("KV_API_ENCRYPT_DATA_ON_KAFKA", "true"),
            (
                "KV_API_AES_KEY_LOCATION",
                file.to_str().expect("utf-8 path"),
            ),
        ])
        .expect("settings");
        assert!(
            matches!(settings.topic_encryption, TopicEncryption::On { key } if key.expose()[0] == 0x00 && key.expose()[1] == 0x11)
        );
        std::fs::write(&file, "not hex\n").expect("write");
        let err = core(&[
            ("KV_API_ENCRYPT_DATA_ON_KAFKA", "true"),
            (
                "KV_API_AES_KEY_LOCATION",
                file.to_str().expect("utf-8 path"),
            ),
        ])
        .expect_err("must fail");
        assert_eq!(err.var, "KV_API_AES_KEY_LOCATION");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn encryption_without_a_key_is_refused() {
        let err = core(&[("KV_API_ENCRYPT_DATA_ON_KAFKA", "true")]).expect_err("must fail");
        assert_eq!(err.var, "KV_API_AES_KEY");
    }

    #[test]
    fn a_short_aes_key_is_refused_without_echoing_it() {
        let err = core(&[
            ("KV_API_ENCRYPT_DATA_ON_KAFKA", "true"),
            ("KV_API_AES_KEY", "deadbeef"),
        ])
        .expect_err("must fail");
        assert_eq!(err.var, "KV_API_AES_KEY");
        assert!(!err.to_string().contains("deadbeef"));
    }

    #[test]
    fn auth_is_on_by_default_and_needs_a_provider() {
        let env = Env::from_pairs([
            ("KAFKA_BOOTSTRAP_SERVERS", "b:9092"),
            ("KV_API_KAFKA_KEY_VALUE_TOPIC", "t"),
        ])
        .expect("environment");
        let err = CoreSettings::from_env(&env).expect_err("must fail");
        assert_eq!(err.var, "OIDC_IDP_ADDRESS_FOR_SERVER");
    }

    #[test]
    fn auth_scopes_are_lists_and_hmac_algorithms_cannot_be_enabled() {
        let settings = core(&[
            ("KV_API_AUTH_WRITE", "kv:write, kv:admin"),
            ("KV_API_AUTH_ALGORITHMS", "RS256 ES256"),
        ])
        .expect("settings");
        assert_eq!(settings.auth.oidc.write, ["kv:write", "kv:admin"]);
        assert!(settings.auth.oidc.read.is_empty());
        assert_eq!(settings.auth.oidc.algorithms, ["RS256", "ES256"]);
        assert_eq!(settings.auth.oidc.claim, "scope");
        for bad in ["HS256", "none"] {
            let err = core(&[("KV_API_AUTH_ALGORITHMS", bad)]).expect_err("must fail");
            assert_eq!(err.var, "KV_API_AUTH_ALGORITHMS");
        }
    }

    #[test]
    fn dotnet_log_levels_map_to_tracing_levels() {
        let settings = core(&[("LOGGING__LOGLEVEL__DEFAULT", "Warning")]).expect("settings");
        assert_eq!(settings.log.filter, "warn");
        let settings = core(&[
            ("LOGGING__LOGLEVEL__DEFAULT", "Warning"),
            ("RUST_LOG", "debug"),
        ])
        .expect("settings");
        assert_eq!(settings.log.filter, "debug");
        let err = core(&[("LOGGING__LOGLEVEL__DEFAULT", "Loud")]).expect_err("must fail");
        assert_eq!(err.var, "LOGGING__LOGLEVEL__DEFAULT");
    }
}
