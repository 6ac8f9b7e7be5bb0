//! Export of request spans over OTLP (`crate::otlp`), with the OpenTelemetry SDK's standard
//! variable names so that a deployment's usual set-up applies: off unless
//! OTEL_EXPORTER_OTLP_ENDPOINT is set.

use std::time::Duration;

use super::env::{Env, SettingsError};
use crate::secret::Secret;

const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
const QUEUE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
const BATCH: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";
/// The only protocol built in: the gRPC exporter would bring a second HTTP/2 stack.
const HTTP_PROTOBUF: &str = "http/protobuf";

#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// Where spans are posted: the endpoint's `/v1/traces`, as the specification appends it
    /// to OTEL_EXPORTER_OTLP_ENDPOINT for OTLP/HTTP.
    pub traces_url: String,
    /// OTEL_EXPORTER_OTLP_HEADERS: sent with every export (a collector's API key, say).
    pub headers: Secret<Vec<(String, String)>>,
    /// OTEL_SERVICE_NAME; unset, the binary's name.
    pub service_name: Option<String>,
    /// OTEL_EXPORTER_OTLP_TIMEOUT: the longest one export may take.
    pub timeout: Duration,
    /// OTEL_BSP_MAX_QUEUE_SIZE: spans waiting for export; past it new spans are dropped.
    pub max_queue: usize,
    /// OTEL_BSP_MAX_EXPORT_BATCH_SIZE: spans sent in one request at most.
    pub max_batch: usize,
    /// OTEL_BSP_SCHEDULE_DELAY: the longest a span waits for its batch to fill.
    pub schedule_delay: Duration,
}

impl OtlpSettings {
    /// `None` when OTEL_EXPORTER_OTLP_ENDPOINT is unset: nothing is exported, and the other
    /// variables are not read.
    pub(super) fn from_env(env: &Env) -> Result<Option<Self>, SettingsError> {
        let Some(endpoint) = env.string(ENDPOINT).filter(|e| !e.trim().is_empty()) else {
            return Ok(None);
        };
        let protocol = env
            .string(PROTOCOL)
            .unwrap_or_else(|| HTTP_PROTOBUF.to_owned());
        if protocol.trim() != HTTP_PROTOBUF {
            return Err(SettingsError::new(
                PROTOCOL,
                format!("only {HTTP_PROTOBUF} is supported, got {protocol:?}"),
            ));
        }
        let max_queue = env.number::<usize>(QUEUE, 2048)?;
        let max_batch = env.number::<usize>(BATCH, 512)?;
        if max_queue == 0 {
            return Err(SettingsError::new(QUEUE, "must be at least 1"));
        }
        if max_batch == 0 || max_batch > max_queue {
            return Err(SettingsError::new(
                BATCH,
                format!("must be 1 to {QUEUE} ({max_queue}), got {max_batch}"),
            ));
        }
        Ok(Some(Self {
            traces_url: traces_url(&endpoint)?,
            headers: Secret::new(match env.string(HEADERS) {
                Some(list) => parse_headers(&list)?,
                None => Vec::new(),
            }),
            service_name: env
                .string("OTEL_SERVICE_NAME")
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty()),
            timeout: env.millis("OTEL_EXPORTER_OTLP_TIMEOUT", Duration::from_secs(10))?,
            max_queue,
            max_batch,
            schedule_delay: env.millis("OTEL_BSP_SCHEDULE_DELAY", Duration::from_secs(5))?,
        }))
    }
}

/// The endpoint's traces path: `http://collector:4318` and `http://collector:4318/` both
/// become `http://collector:4318/v1/traces`.
fn traces_url(endpoint: &str) -> Result<String, SettingsError> {
    let endpoint = endpoint.trim();
    let url = reqwest::Url::parse(endpoint)
        .map_err(|e| SettingsError::new(ENDPOINT, format!("{endpoint:?} is no URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(SettingsError::new(
            ENDPOINT,
            format!("expected an http:// or https:// URL of the collector, got {endpoint:?}"),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(SettingsError::new(
            ENDPOINT,
            "the collector's base URL takes no query or fragment",
        ));
    }
    Ok(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
}

/// `name=value,name=value`, values percent-encoded (the W3C Baggage form the specification
/// uses). A bad entry is named by its header name only: values are often credentials.
fn parse_headers(list: &str) -> Result<Vec<(String, String)>, SettingsError> {
    let mut headers = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, value)) = entry.split_once('=') else {
            return Err(SettingsError::new(
                HEADERS,
                "expected name=value pairs separated by commas",
            ));
        };
        let name = name.trim();
        let value = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8()
            .map(|value| value.into_owned())
            .ok()
            .filter(|value| reqwest::header::HeaderValue::from_str(value).is_ok());
        match value {
            Some(value) if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                headers.push((name.to_owned(), value));
            }
            _ => {
                return Err(SettingsError::new(
                    HEADERS,
                    format!("header {name:?} is no valid HTTP header name and value"),
                ))
            }
        }
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn otlp(pairs: &[(&str, &str)]) -> Result<Option<OtlpSettings>, SettingsError> {
        OtlpSettings::from_env(&Env::from_pairs(pairs.iter().copied()).expect("env"))
    }

    #[test]
    fn export_is_off_without_an_endpoint_and_its_other_variables_are_then_not_read() {
        assert!(otlp(&[]).expect("settings").is_none());
        assert!(otlp(&[(QUEUE, "many")]).expect("settings").is_none());
    }

    #[test]
    fn the_endpoint_gets_the_traces_path_and_the_standard_defaults() {
        for endpoint in ["http://collector:4318", "http://collector:4318/"] {
            let settings = otlp(&[(ENDPOINT, endpoint)])
                .expect("settings")
                .expect("on");
            assert_eq!(settings.traces_url, "http://collector:4318/v1/traces");
            assert_eq!(
                (settings.max_queue, settings.max_batch),
                (2048, 512),
                "{endpoint}"
            );
            assert_eq!(settings.schedule_delay, Duration::from_secs(5));
            assert_eq!(settings.timeout, Duration::from_secs(10));
            assert_eq!(settings.service_name, None);
        }
        let settings = otlp(&[
            (ENDPOINT, "https://otel.example/base"),
            (HEADERS, "x-api-key=s%3Dcret, tenant=a"),
            ("OTEL_SERVICE_NAME", "kv-reader-eu"),
        ])
        .expect("settings")
        .expect("on");
        assert_eq!(settings.traces_url, "https://otel.example/base/v1/traces");
        assert_eq!(
            settings.headers.expose(),
            &[
                ("x-api-key".to_owned(), "s=cret".to_owned()),
                ("tenant".to_owned(), "a".to_owned())
            ]
        );
        assert_eq!(settings.service_name.as_deref(), Some("kv-reader-eu"));
    }

    #[test]
    fn a_bad_value_is_refused_naming_its_variable_and_never_a_header_value() {
        let on = (ENDPOINT, "http://collector:4318");
        for (pairs, var) in [
            (vec![(ENDPOINT, "collector:4318")], ENDPOINT),
            (vec![(ENDPOINT, "ftp://collector")], ENDPOINT),
            (vec![on, (PROTOCOL, "grpc")], PROTOCOL),
            (vec![on, (QUEUE, "0")], QUEUE),
            (vec![on, (QUEUE, "10"), (BATCH, "11")], BATCH),
            (
                vec![on, ("OTEL_BSP_SCHEDULE_DELAY", "0")],
                "OTEL_BSP_SCHEDULE_DELAY",
            ),
            (vec![on, (HEADERS, "x-api-key")], HEADERS),
        ] {
            let error = otlp(&pairs).expect_err(var);
            assert_eq!(error.var, var, "{pairs:?}");
        }
        let error = otlp(&[on, (HEADERS, "x-api-key=bad%0Asecret")]).expect_err("a line break");
        assert!(!error.reason.contains("secret"), "{}", error.reason);
        assert!(error.reason.contains("x-api-key"), "{}", error.reason);
    }
}
