//! The environment (and the optional settings file under it) as the `config` crate sees it,
//! with typed getters whose every error names the variable.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat, Source, Value, ValueKind};

use super::catalogue;
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

/// The variable that names the optional settings file.
pub const CONFIG_FILE_VAR: &str = "KV_API_CONFIG_FILE";

/// The settings as the `config` crate layers them: the file named by `KV_API_CONFIG_FILE` (YAML,
/// TOML or JSON, by its extension; its top-level keys are the variables' names, such as a
/// Kubernetes ConfigMap holds), then the environment, which wins. Built-in defaults live beside
/// each getter call, so the reference in docs/configuration.md and the code say the same.
#[derive(Debug, Clone)]
pub struct Env {
    vars: Config,
    /// The file, and the variables (lower-cased) it set that the environment did not.
    file: Option<(String, BTreeSet<String>)>,
}

impl Env {
    pub fn from_process() -> Result<Self, SettingsError> {
        let file = std::env::var(CONFIG_FILE_VAR)
            .ok()
            .filter(|f| !f.is_empty());
        Self::build(Environment::default(), file)
    }

    /// An environment made of the given pairs only; tests use it instead of mutating the process's.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, SettingsError> {
        let map: std::collections::HashMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let file = map.get(CONFIG_FILE_VAR).filter(|f| !f.is_empty()).cloned();
        Self::build(Environment::default().source(Some(map)), file)
    }

    fn build(source: Environment, file: Option<String>) -> Result<Self, SettingsError> {
        // Unparsed strings: "007" must stay "007" for a group id, and each getter parses its own type.
        let source = source.try_parsing(false).ignore_empty(true);
        let env_keys: BTreeSet<String> = source
            .collect()
            .map_err(|e| SettingsError::new("environment", e.to_string()))?
            .into_keys()
            .collect();
        let mut builder = Config::builder();
        let mut from_file = None;
        if let Some(path) = file {
            let mut keys = BTreeSet::new();
            for (key, value) in read_settings_file(&path)? {
                // The lowest layer: the environment overrides every key the file sets.
                builder = builder
                    .set_default(key.as_str(), value)
                    .map_err(|e| SettingsError::new(CONFIG_FILE_VAR, e.to_string()))?;
                if !env_keys.contains(&key) {
                    keys.insert(key);
                }
            }
            from_file = Some((path, keys));
        }
        let vars = builder
            .add_source(source)
            .build()
            .map_err(|e| SettingsError::new("environment", e.to_string()))?;
        Ok(Self {
            vars,
            file: from_file,
        })
    }

    /// Says where a failing variable was set when it came from the settings file, so the
    /// operator edits the right place.
    pub fn locate(&self, mut error: SettingsError) -> SettingsError {
        if let Some((path, keys)) = &self.file {
            if keys.contains(&error.var.to_ascii_lowercase()) {
                error.var = format!("{} (set in {path})", error.var);
            }
        }
        error
    }

    /// The variable's value, or `None` when unset or empty.
    #[track_caller]
    pub fn string(&self, var: &str) -> Option<String> {
        catalogue::check(var, None);
        self.vars.get_string(&var.to_ascii_lowercase()).ok()
    }

    #[track_caller]
    pub fn required(&self, var: &str) -> Result<String, SettingsError> {
        self.string(var)
            .ok_or_else(|| SettingsError::new(var, "is required but not set"))
    }

    /// Accepts the spellings .NET and shells use: true/false, 1/0, yes/no, on/off, any case.
    #[track_caller]
    pub fn bool(&self, var: &str, default: bool) -> Result<bool, SettingsError> {
        catalogue::check(var, Some(&default));
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

    #[track_caller]
    pub fn number<T>(&self, var: &str, default: T) -> Result<T, SettingsError>
    where
        T: FromStr + fmt::Display,
        T::Err: fmt::Display,
    {
        catalogue::check(var, Some(&default));
        match self.string(var) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|e| {
                SettingsError::new(var, format!("expected a number, got {raw:?} ({e})"))
            }),
        }
    }

    /// A duration given in whole milliseconds, which must be positive.
    #[track_caller]
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
    pub(super) fn vars_with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
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

/// The settings file's variables, lower-cased as the environment's are, each a plain value.
fn read_settings_file(path: &str) -> Result<Vec<(String, String)>, SettingsError> {
    let error = |reason: String| SettingsError::new(CONFIG_FILE_VAR, format!("{path}: {reason}"));
    let format = match Path::new(path).extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => FileFormat::Yaml,
        Some("toml") => FileFormat::Toml,
        Some("json") => FileFormat::Json,
        _ => {
            return Err(error(
                "the file name must end in .yaml, .yml, .toml or .json".to_owned(),
            ))
        }
    };
    let table = File::new(path, format)
        .required(true)
        .collect()
        .map_err(|e| error(e.to_string()))?;
    let mut vars = Vec::with_capacity(table.len());
    for (key, value) in table {
        let looks_like_a_variable = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !looks_like_a_variable {
            return Err(error(format!(
                "key {key:?} is not a variable name: keys are the environment variables' names, \
                 such as KV_API_KAFKA_KEY_VALUE_TOPIC"
            )));
        }
        let text = scalar_text(&value).ok_or_else(|| {
            error(format!(
                "{key} must be a string, number or boolean, not a list or a table"
            ))
        })?;
        vars.push((key.to_ascii_lowercase(), text));
    }
    Ok(vars)
}

fn scalar_text(value: &Value) -> Option<String> {
    match &value.kind {
        ValueKind::String(text) => Some(text.clone()),
        ValueKind::Boolean(b) => Some(b.to_string()),
        ValueKind::I64(n) => Some(n.to_string()),
        ValueKind::I128(n) => Some(n.to_string()),
        ValueKind::U64(n) => Some(n.to_string()),
        ValueKind::U128(n) => Some(n.to_string()),
        ValueKind::Float(n) => Some(n.to_string()),
        ValueKind::Nil | ValueKind::Table(_) | ValueKind::Array(_) => None,
    }
}
