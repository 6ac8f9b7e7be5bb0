//! Log level and format, with the original's .NET level names.

use super::env::{Env, SettingsError};

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
    pub(super) fn from_env(env: &Env) -> Result<Self, SettingsError> {
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
