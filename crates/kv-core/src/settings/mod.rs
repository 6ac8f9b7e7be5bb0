//! Settings read once from the environment at start-up, with the original service's variable names.
//!
//! [`Env`] is the typed view over the environment (through the `config` crate) that both binaries
//! use; every error it returns names the variable that was wrong. [`CoreSettings`] holds what both
//! binaries need; each binary adds its own role's settings on top.

mod auth;
pub mod catalogue;
mod encryption;
mod env;
mod kafka;
mod log;
mod otlp;
pub mod prefixes;
mod role;
mod tls;

pub use auth::{AuthSettings, OidcSettings, ASYMMETRIC_ALGORITHMS};
pub use encryption::{aes_key, TopicEncryption};
pub use env::{read_first_line, Env, SettingsError, CONFIG_FILE_VAR};
pub use kafka::KafkaProperties;
pub use log::{LogFormat, LogSettings};
pub use otlp::OtlpSettings;
pub use role::check_role_flags;
pub use tls::{client_trusting, CaFile};

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
    /// OTEL_EXPORTER_OTLP_ENDPOINT and the rest: where request spans are exported; `None`: off.
    pub otlp: Option<OtlpSettings>,
    /// KV_API_REQUIRE_COMPACTED_TOPIC: refuse to start on a topic whose configuration would
    /// lose keys (not compacted, or time retention under a delete policy).
    pub require_compacted_topic: bool,
    /// KV_API_STATE_RULES: the rules that compute keys from agents' reports (empty: none).
    pub state_rules: std::sync::Arc<crate::computed::StateRules>,
    /// Lines worth logging once tracing is up, such as a deprecated alias in use.
    pub notices: Vec<String>,
}

impl CoreSettings {
    /// Logs what reading the settings noted (a deprecated alias in use); call it once logging
    /// is on.
    pub fn log_notices(&self) {
        for notice in &self.notices {
            tracing::warn!("{notice}");
        }
    }

    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let mut notices = Vec::new();
        Ok(Self {
            listen: listen_address(env)?,
            topic: topic_name(env)?,
            kafka: KafkaProperties::from_env_noting(env, &mut notices)?,
            topic_encryption: TopicEncryption::from_env(env, &mut notices)?,
            auth: AuthSettings::from_env(env)?,
            log: LogSettings::from_env(env)?,
            otlp: OtlpSettings::from_env(env)?,
            require_compacted_topic: env.bool("KV_API_REQUIRE_COMPACTED_TOPIC", false)?,
            state_rules: state_rules(env)?,
            notices,
        })
    }

    /// As [`CoreSettings::from_env`] for a one-shot command that serves no HTTP (kv-writer's
    /// `migrate-seed-topic`): the auth settings are not read, so it needs no OpenID provider.
    pub fn from_env_serving_nothing(env: &Env) -> Result<Self, SettingsError> {
        let mut notices = Vec::new();
        Ok(Self {
            listen: DEFAULT_LISTEN.to_owned(),
            topic: topic_name(env)?,
            kafka: KafkaProperties::from_env_noting(env, &mut notices)?,
            topic_encryption: TopicEncryption::from_env(env, &mut notices)?,
            auth: AuthSettings {
                disabled: true,
                oidc: OidcSettings::default(),
            },
            log: LogSettings::from_env(env)?,
            // It serves no requests, so it makes no spans.
            otlp: None,
            require_compacted_topic: env.bool("KV_API_REQUIRE_COMPACTED_TOPIC", false)?,
            state_rules: Default::default(),
            notices,
        })
    }
}

/// KV_API_STATE_RULES: the path of a rules file, read and validated once.
fn state_rules(env: &Env) -> Result<std::sync::Arc<crate::computed::StateRules>, SettingsError> {
    const VAR: &str = "KV_API_STATE_RULES";
    let Some(path) = env.string(VAR).filter(|p| !p.trim().is_empty()) else {
        return Ok(Default::default());
    };
    let rules = crate::computed::StateRules::load(std::path::Path::new(path.trim()))
        .map_err(|reason| SettingsError::new(VAR, reason))?;
    if !rules.is_empty()
        && !matches!(
            TopicEncryption::from_env(env, &mut Vec::new())?,
            TopicEncryption::Off
        )
    {
        return Err(SettingsError::new(
            VAR,
            "computed state is not available on an encrypted topic yet (reports would name agents in clear)",
        ));
    }
    Ok(std::sync::Arc::new(rules))
}

const DEFAULT_LISTEN: &str = "0.0.0.0:8080";

/// KV_API_LISTEN (`host:port`) wins; otherwise the first `http://` entry of ASPNETCORE_URLS, the
/// original's variable (`http://+:8080;https://...`), where `+` and `*` mean every interface.
pub fn listen_address(env: &Env) -> Result<String, SettingsError> {
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

/// A `host:port` listen address in `var`, as the services' listen variables take it.
pub fn parse_host_port(var: &str, value: &str) -> Result<String, SettingsError> {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
        // Each variable with its own default, so that the value read is never the default.
        let (off, on) = ("KV_API_DISABLE_API_AUTH", "KAFKA_ENABLE_AUTO_COMMIT");
        for raw in ["True", "1", "yes", "ON"] {
            assert!(env(&[(off, raw)]).bool(off, false).expect(raw), "{raw}");
        }
        for raw in ["FALSE", "0", "no", "off"] {
            assert!(!env(&[(on, raw)]).bool(on, true).expect(raw), "{raw}");
        }
        assert!(env(&[]).bool(on, true).expect("default"));
    }

    #[test]
    fn every_variable_of_the_catalogue_is_documented() {
        let reference = include_str!("../../../../docs/configuration.md");
        for var in catalogue::VARS {
            assert!(
                reference.contains(&format!("`{}`", var.name)),
                "{} is missing from docs/configuration.md",
                var.name
            );
        }
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
    fn prefix_rules_need_auth_on_and_a_bad_rule_names_the_variable() {
        let on = [
            ("KV_API_DISABLE_API_AUTH", "false"),
            ("OIDC_IDP_ADDRESS_FOR_SERVER", "https://idp"),
            ("OIDC_AUDIENCE", "kv"),
        ];
        let with = |rules: &'static str| {
            let mut pairs = on.to_vec();
            pairs.push(("KV_API_AUTH_PREFIXES", rules));
            core(&pairs)
        };
        let settings = with("billing read,write billing/; ops * *").expect("settings");
        let rules = settings.auth.oidc.prefixes.expect("rules");
        assert_eq!(rules.0.len(), 2);
        assert!(core(&on).expect("settings").auth.oidc.prefixes.is_none());
        let err = with("billing read").expect_err("must fail");
        assert_eq!(err.var, "KV_API_AUTH_PREFIXES");
        assert!(err.reason.contains("\"billing read\""), "{}", err.reason);
        let err = core(&[("KV_API_AUTH_PREFIXES", "ops * *")]).expect_err("must fail");
        assert_eq!(err.var, "KV_API_AUTH_PREFIXES");
        assert!(
            err.reason.contains("KV_API_DISABLE_API_AUTH"),
            "{}",
            err.reason
        );
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

    fn settings_file(name: &str, content: &str) -> (tempfile_dir::Dir, String) {
        let dir = tempfile_dir::Dir::new();
        let path = dir.0.join(name);
        std::fs::write(&path, content).expect("write the settings file");
        let path = path.to_str().expect("utf-8 path").to_owned();
        (dir, path)
    }

    /// A folder removed on drop, so a failing assertion leaves nothing behind.
    mod tempfile_dir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let dir =
                    std::env::temp_dir().join(format!("kv-settings-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&dir).expect("dir");
                Dir(dir)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                std::fs::remove_dir_all(&self.0).ok();
            }
        }
    }

    #[test]
    fn a_yaml_settings_file_is_read_and_the_environment_wins_over_it() {
        let (_dir, path) = settings_file(
            "kv.yaml",
            "KV_API_KAFKA_KEY_VALUE_TOPIC: from-file\nASPNETCORE_URLS: http://+:5000\n\
             KAFKA_SOCKET_KEEPALIVE_ENABLE: true\nKV_API_LOG_FORMAT: json\n",
        );
        let env = Env::from_pairs([
            ("KV_API_CONFIG_FILE", path.as_str()),
            ("KAFKA_BOOTSTRAP_SERVERS", "b:9092"),
            ("KV_API_DISABLE_API_AUTH", "true"),
            ("KV_API_LOG_FORMAT", "text"),
        ])
        .expect("environment");
        let settings = CoreSettings::from_env(&env).expect("settings");
        assert_eq!(settings.topic, "from-file");
        assert_eq!(
            settings.listen, "0.0.0.0:5000",
            "a .NET alias works from the file"
        );
        assert_eq!(settings.kafka.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(settings.log.format, LogFormat::Text, "the environment wins");
    }

    #[test]
    fn prefix_rules_come_from_a_settings_file_one_per_line() {
        let (_dir, path) = settings_file(
            "kv.yaml",
            "KV_API_AUTH_PREFIXES: |\n  billing read,write billing/\n  ops * *\n",
        );
        let env = Env::from_pairs([
            ("KV_API_CONFIG_FILE", path.as_str()),
            ("KAFKA_BOOTSTRAP_SERVERS", "b:9092"),
            ("KV_API_KAFKA_KEY_VALUE_TOPIC", "t"),
            ("OIDC_IDP_ADDRESS_FOR_SERVER", "https://idp"),
            ("OIDC_AUDIENCE", "kv"),
        ])
        .expect("environment");
        let settings = CoreSettings::from_env(&env).expect("settings");
        let rules = settings.auth.oidc.prefixes.expect("rules");
        assert_eq!(rules.0.len(), 2);
        assert_eq!(rules.0[1].scope, "ops");
    }

    #[test]
    fn a_toml_settings_file_is_read_too() {
        let (_dir, path) = settings_file(
            "kv.toml",
            "KV_API_KAFKA_KEY_VALUE_TOPIC = \"toml-topic\"\nKAFKA_BOOTSTRAP_SERVERS = \"b:9092\"\n\
             KV_API_DISABLE_API_AUTH = true\n",
        );
        let env = Env::from_pairs([("KV_API_CONFIG_FILE", path.as_str())]).expect("environment");
        let settings = CoreSettings::from_env(&env).expect("settings");
        assert_eq!(settings.topic, "toml-topic");
        assert!(settings.auth.disabled);
    }

    #[test]
    fn a_bad_value_from_the_settings_file_names_the_variable_and_the_file() {
        let (_dir, path) = settings_file("kv.yml", "KV_API_DISABLE_API_AUTH: maybe\n");
        let env = Env::from_pairs([
            ("KV_API_CONFIG_FILE", path.as_str()),
            ("KAFKA_BOOTSTRAP_SERVERS", "b:9092"),
            ("KV_API_KAFKA_KEY_VALUE_TOPIC", "t"),
        ])
        .expect("environment");
        let err = env.locate(CoreSettings::from_env(&env).expect_err("must fail"));
        assert!(err.var.starts_with("KV_API_DISABLE_API_AUTH"), "{err}");
        assert!(err.var.contains(&path), "{err}");
    }

    #[test]
    fn a_settings_file_with_a_key_that_is_no_variable_or_a_nested_value_is_refused() {
        for (name, content) in [
            ("a.yaml", "kafka:\n  bootstrap: b:9092\n"),
            ("b.yaml", "KAFKA_BOOTSTRAP_SERVERS:\n  - b:9092\n"),
            ("c.ini", "KAFKA_BOOTSTRAP_SERVERS=b:9092\n"),
            ("d.yaml", "KAFKA_BOOTSTRAP_SERVERS: [unclosed\n"),
        ] {
            let (_dir, path) = settings_file(name, content);
            let err =
                Env::from_pairs([("KV_API_CONFIG_FILE", path.as_str())]).expect_err("must fail");
            assert_eq!(err.var, "KV_API_CONFIG_FILE", "{name}: {err}");
            assert!(err.reason.contains(&path), "{name}: {err}");
        }
        let err = Env::from_pairs([("KV_API_CONFIG_FILE", "/nonexistent/kv.yaml")])
            .expect_err("a missing file must fail");
        assert_eq!(err.var, "KV_API_CONFIG_FILE");
    }

    #[test]
    fn kubernetes_service_link_variables_are_ignored_and_said() {
        let settings = core(&[
            ("KAFKA_SERVICE_HOST", "10.0.0.7"),
            ("KAFKA_SERVICE_PORT", "9092"),
            ("KAFKA_SERVICE_PORT_BROKER", "9092"),
            ("KAFKA_PORT", "tcp://10.0.0.7:9092"),
            ("KAFKA_PORT_9092_TCP", "tcp://10.0.0.7:9092"),
            ("KAFKA_PORT_9092_TCP_PROTO", "tcp"),
            ("KAFKA_PORT_9092_TCP_PORT", "9092"),
            ("KAFKA_PORT_9092_TCP_ADDR", "10.0.0.7"),
            // Services named kafka-ui and kafka-schema-registry in the same namespace.
            ("KAFKA_UI_SERVICE_HOST", "10.0.0.8"),
            ("KAFKA_UI_PORT", "tcp://10.0.0.8:8080"),
            ("KAFKA_SCHEMA_REGISTRY_SERVICE_PORT_HTTP", "8081"),
            ("KAFKA_SCHEMA_REGISTRY_PORT_8081_TCP_ADDR", "10.0.0.9"),
            ("KAFKA_SOCKET_KEEPALIVE_ENABLE", "true"),
        ])
        .expect("settings");
        let properties: Vec<&str> = settings.kafka.iter().map(|(name, _)| name).collect();
        assert_eq!(properties, ["bootstrap.servers", "socket.keepalive.enable"]);
        assert!(
            settings
                .notices
                .iter()
                .any(|n| n.contains("KAFKA_PORT_9092_TCP_ADDR")),
            "{:?}",
            settings.notices
        );
    }
}
