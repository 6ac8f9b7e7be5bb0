//! librdkafka properties from `KAFKA_*` variables, with the original service's names translated.

use std::collections::BTreeMap;
use std::fmt;

use super::env::{read_first_line, Env, SettingsError};

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
    "KAFKA_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO",
    "KAFKA_SCHEMA_REGISTRY_CA_PEM_LOCATION",
    // Translated below.
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SSL_CA_PEM_LOCATION",
    "KAFKA_SSL_KEY_PASSWORD_LOCATION",
];

impl KafkaProperties {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Self::from_env_noting(env, &mut Vec::new())
    }

    /// As [`Self::from_env`], adding a notice for each variable passed over.
    pub fn from_env_noting(env: &Env, notices: &mut Vec<String>) -> Result<Self, SettingsError> {
        let mut properties = BTreeMap::new();
        let mut service_links = Vec::new();
        properties.insert(
            "bootstrap.servers".to_owned(),
            env.required("KAFKA_BOOTSTRAP_SERVERS")?,
        );
        for (var, value) in env.vars_with_prefix("KAFKA_") {
            if RESERVED.contains(&var.as_str()) {
                continue;
            }
            if is_service_link(&var) {
                service_links.push(var);
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
        if !service_links.is_empty() {
            notices.push(format!(
                "ignored {}: Kubernetes service-link variables for a Service named kafka, not \
                 librdkafka properties (the chart sets enableServiceLinks: false)",
                service_links.join(", ")
            ));
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

/// The variables Kubernetes injects for a Service named `kafka` in the namespace
/// (`KAFKA_SERVICE_HOST`, `KAFKA_SERVICE_PORT[_NAME]`, `KAFKA_PORT`, `KAFKA_PORT_9092_TCP[_*]`).
/// No librdkafka property is spelled `service.*` or `port*`, so passing them through would only
/// abort start-up on an unknown property.
fn is_service_link(var: &str) -> bool {
    let Some(rest) = var.strip_prefix("KAFKA_") else {
        return false;
    };
    // For a Service named `kafka` the name part is empty; for `kafka-ui` it is `UI_`.
    let shapes = ["SERVICE_HOST", "SERVICE_PORT", "PORT"];
    if shapes
        .iter()
        .any(|shape| rest == *shape || rest.ends_with(&format!("_{shape}")))
    {
        return true;
    }
    if rest.starts_with("SERVICE_PORT_") || rest.contains("_SERVICE_PORT_") {
        return true;
    }
    // `…PORT_9092_TCP`, `…PORT_9092_TCP_PROTO`, `_PORT`, `_ADDR`.
    let mut words = rest.split('_').peekable();
    while let Some(word) = words.next() {
        if word == "PORT" {
            let number = words.peek().copied().unwrap_or_default();
            if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
                words.next();
                if matches!(words.next(), Some("TCP" | "UDP" | "SCTP")) {
                    return true;
                }
            }
        }
    }
    false
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
