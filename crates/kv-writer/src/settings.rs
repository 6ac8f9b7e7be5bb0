//! kv-writer's settings: the shared core plus what only the write path needs.

use std::time::Duration;

use kv_core::settings::{CoreSettings, Env, SettingsError};

#[derive(Debug, Clone)]
pub struct Settings {
    pub core: CoreSettings,
    /// librdkafka's `acks` value, from KAFKA_ACKS (all/leader/none or -1/1/0).
    pub acks: &'static str,
    /// Upper bound on the time from accepting a write to answering it, broker outages included.
    pub produce_timeout: Duration,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// How long SIGTERM waits for in-flight writes before the producer is flushed and the process exits.
    pub shutdown_timeout: Duration,
    /// Most writes one `POST /v1/kv:batch` request may carry.
    pub max_batch_items: usize,
    /// Largest JSON body a batch request may have.
    pub max_batch_bytes: usize,
    /// How long a request body may take to arrive, from the moment the handler starts reading.
    pub body_timeout: Duration,
    /// Most bytes of request bodies held at once, all requests together.
    pub max_buffered_body_bytes: usize,
    /// The longest TTL a write may ask for.
    pub max_ttl_seconds: u64,
    /// The readers a conditional write's outcome is asked of (KV_API_READERS), in order: base
    /// URLs without a trailing `/`. Empty: conditional writes are not configured (501).
    pub readers: Vec<String>,
    /// How long after Kafka's acknowledgement a conditional write waits for a reader to tell its
    /// outcome before it is answered 503 `outcome_unknown`.
    pub conditional_timeout: Duration,
}

pub const DEFAULT_MAX_KEY_BYTES: usize = 16 * 1024;
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_BATCH_ITEMS: usize = 1000;
pub const DEFAULT_MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Four batches of the default largest size at once.
pub const DEFAULT_MAX_BUFFERED_BODY_BYTES: usize = 64 * 1024 * 1024;
/// KV_API_MAX_TTL_SECONDS unless set: a year.
pub const DEFAULT_MAX_TTL_SECONDS: u64 = 365 * 24 * 3600;
/// KV_API_CONDITIONAL_TIMEOUT_MS unless set.
pub const DEFAULT_CONDITIONAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest KV_API_MAX_TTL_SECONDS taken: a hundred years keeps every expiry, in
/// milliseconds since the Unix epoch, within the wire format's 18 digits.
const LARGEST_MAX_TTL_SECONDS: u64 = 100 * 365 * 24 * 3600;

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Self::with_core(env, CoreSettings::from_env(env)?)
    }

    /// For `migrate-seed-topic`, which serves no HTTP: the auth settings are not read.
    pub fn from_env_serving_nothing(env: &Env) -> Result<Self, SettingsError> {
        Self::with_core(env, CoreSettings::from_env_serving_nothing(env)?)
    }

    fn with_core(env: &Env, core: CoreSettings) -> Result<Self, SettingsError> {
        let settings = Self {
            core,
            acks: acks(env.string("KAFKA_ACKS").as_deref())?,
            produce_timeout: env.millis("KV_API_PRODUCE_TIMEOUT_MS", Duration::from_secs(10))?,
            max_key_bytes: env.number("KV_API_MAX_KEY_BYTES", DEFAULT_MAX_KEY_BYTES)?,
            max_value_bytes: env.number("KV_API_MAX_VALUE_BYTES", DEFAULT_MAX_VALUE_BYTES)?,
            shutdown_timeout: env.millis("KV_API_SHUTDOWN_TIMEOUT_MS", Duration::from_secs(30))?,
            max_batch_items: env.number("KV_API_MAX_BATCH_ITEMS", DEFAULT_MAX_BATCH_ITEMS)?,
            max_batch_bytes: env.number("KV_API_MAX_BATCH_BYTES", DEFAULT_MAX_BATCH_BYTES)?,
            body_timeout: env.millis("KV_API_BODY_TIMEOUT_MS", DEFAULT_BODY_TIMEOUT)?,
            max_buffered_body_bytes: env.number(
                "KV_API_MAX_BUFFERED_BODY_BYTES",
                DEFAULT_MAX_BUFFERED_BODY_BYTES,
            )?,
            max_ttl_seconds: env.number("KV_API_MAX_TTL_SECONDS", DEFAULT_MAX_TTL_SECONDS)?,
            readers: match env.string("KV_API_READERS") {
                None => Vec::new(),
                Some(list) => reader_urls(&list)?,
            },
            conditional_timeout: env
                .millis("KV_API_CONDITIONAL_TIMEOUT_MS", DEFAULT_CONDITIONAL_TIMEOUT)?,
        };
        if !settings.readers.is_empty() && settings.acks == "0" {
            return Err(SettingsError::new(
                "KV_API_READERS",
                "conditional writes need the offset Kafka assigns, which KAFKA_ACKS=none does \
                 not report: use KAFKA_ACKS=all (or leader), or unset KV_API_READERS",
            ));
        }
        if !(1..=LARGEST_MAX_TTL_SECONDS).contains(&settings.max_ttl_seconds) {
            return Err(SettingsError::new(
                "KV_API_MAX_TTL_SECONDS",
                format!("must be from 1 to {LARGEST_MAX_TTL_SECONDS} (a hundred years)"),
            ));
        }
        for (var, value) in [
            ("KV_API_MAX_KEY_BYTES", settings.max_key_bytes),
            ("KV_API_MAX_BATCH_ITEMS", settings.max_batch_items),
            ("KV_API_MAX_BATCH_BYTES", settings.max_batch_bytes),
        ] {
            if value == 0 {
                return Err(SettingsError::new(var, "must be at least 1"));
            }
        }
        // Otherwise the largest body a route takes could never be read.
        let largest = settings.largest_body();
        if settings.max_buffered_body_bytes < largest {
            return Err(SettingsError::new(
                "KV_API_MAX_BUFFERED_BODY_BYTES",
                format!(
                    "must be at least the largest body a route takes, {largest} bytes (the \
                     larger of KV_API_MAX_BATCH_BYTES and the JSON limit of a single write)"
                ),
            ));
        }
        Ok(settings)
    }

    /// The most bytes the JSON body of a single write may have. Base64 makes a value a third
    /// larger and JSON escapes can double it; the value's own limit is checked once decoded,
    /// with an error naming the field.
    pub fn json_body_limit(&self) -> usize {
        self.max_value_bytes
            .saturating_mul(2)
            .saturating_add(self.max_key_bytes)
            .saturating_add(64 * 1024)
    }

    /// The largest body any route takes.
    pub fn largest_body(&self) -> usize {
        self.max_batch_bytes
            .max(self.json_body_limit())
            .max(self.max_value_bytes)
    }
}

/// KV_API_READERS: one base URL or a comma list of them, each http:// or https:// with a host
/// and no query or fragment.
fn reader_urls(list: &str) -> Result<Vec<String>, SettingsError> {
    const VAR: &str = "KV_API_READERS";
    if list.trim().is_empty() {
        return Ok(Vec::new());
    }
    list.split(',')
        .map(str::trim)
        .map(|url| {
            if url.is_empty() {
                return Err(SettingsError::new(
                    VAR,
                    "has an empty entry: give one URL or a comma list of URLs",
                ));
            }
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| SettingsError::new(VAR, format!("{url:?} is not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https")
                || parsed.host_str().is_none()
                || parsed.query().is_some()
                || parsed.fragment().is_some()
                || !parsed.username().is_empty()
                || parsed.password().is_some()
            {
                return Err(SettingsError::new(
                    VAR,
                    format!(
                        "{url:?} must be an http:// or https:// URL with a host and no query, \
                         fragment or credentials (a reader's base URL, such as \
                         http://kv-reader:8080)"
                    ),
                ));
            }
            Ok(url.trim_end_matches('/').to_owned())
        })
        .collect()
}

fn acks(raw: Option<&str>) -> Result<&'static str, SettingsError> {
    let Some(raw) = raw else {
        return Ok("all");
    };
    match raw.trim().to_ascii_lowercase().as_str() {
        "all" | "-1" => Ok("all"),
        "leader" | "1" => Ok("1"),
        "none" | "0" => Ok("0"),
        _ => Err(SettingsError::new(
            "KAFKA_ACKS",
            format!("expected all, leader or none (or -1, 1, 0), got {raw:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_accepts_the_originals_names_and_librdkafkas_values() {
        assert_eq!(acks(None), Ok("all"));
        assert_eq!(acks(Some("Leader")), Ok("1"));
        assert_eq!(acks(Some("none")), Ok("0"));
        assert_eq!(acks(Some("-1")), Ok("all"));
        let err = acks(Some("most")).expect_err("must fail");
        assert_eq!(err.var, "KAFKA_ACKS");
    }

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let mut all = vec![
            ("KAFKA_BOOTSTRAP_SERVERS", "b:9092"),
            ("KV_API_KAFKA_KEY_VALUE_TOPIC", "t"),
            ("KV_API_DISABLE_API_AUTH", "true"),
        ];
        all.extend_from_slice(pairs);
        Settings::from_env(&Env::from_pairs(all.iter().copied())?)
    }

    #[test]
    fn batch_limits_have_documented_defaults_and_refuse_zero() {
        let defaults = settings(&[]).expect("settings");
        assert_eq!(defaults.max_batch_items, DEFAULT_MAX_BATCH_ITEMS);
        assert_eq!(defaults.max_batch_bytes, DEFAULT_MAX_BATCH_BYTES);
        let err = settings(&[("KV_API_MAX_BATCH_ITEMS", "0")]).expect_err("must fail");
        assert_eq!(err.var, "KV_API_MAX_BATCH_ITEMS");
        let err = settings(&[("KV_API_PRODUCE_TIMEOUT_MS", "0")]).expect_err("must fail");
        assert_eq!(err.var, "KV_API_PRODUCE_TIMEOUT_MS");
    }

    #[test]
    fn readers_are_one_url_or_a_comma_list_and_off_unless_set() {
        let defaults = settings(&[]).expect("settings");
        assert!(defaults.readers.is_empty());
        assert_eq!(defaults.conditional_timeout, DEFAULT_CONDITIONAL_TIMEOUT);
        let one = settings(&[("KV_API_READERS", "http://kv-reader:8080/")]).expect("one");
        assert_eq!(one.readers, vec!["http://kv-reader:8080"]);
        let list = settings(&[("KV_API_READERS", " http://a:8081, https://b.example/kv ")])
            .expect("a list");
        assert_eq!(list.readers, vec!["http://a:8081", "https://b.example/kv"]);
        for bad in [
            "kv-reader:8080",
            "ftp://a",
            "http://a:8081,",
            "http://a/?x=1",
            "http://user:pw@a",
            "http://",
        ] {
            let err = settings(&[("KV_API_READERS", bad)]).expect_err(bad);
            assert_eq!(err.var, "KV_API_READERS", "{bad}");
        }
        let err = settings(&[("KV_API_READERS", "http://a"), ("KAFKA_ACKS", "none")])
            .expect_err("acks none");
        assert!(err.to_string().contains("KAFKA_ACKS=none"), "{err}");
        let err = settings(&[("KV_API_CONDITIONAL_TIMEOUT_MS", "0")]).expect_err("zero");
        assert_eq!(err.var, "KV_API_CONDITIONAL_TIMEOUT_MS");
    }

    #[test]
    fn ttls_are_bounded_at_a_year_unless_told_otherwise() {
        assert_eq!(settings(&[]).expect("settings").max_ttl_seconds, 31_536_000);
        let told = settings(&[("KV_API_MAX_TTL_SECONDS", "60")]).expect("settings");
        assert_eq!(told.max_ttl_seconds, 60);
        for bad in ["0", "3153600001", "-1", "soon"] {
            let err = settings(&[("KV_API_MAX_TTL_SECONDS", bad)]).expect_err(bad);
            assert_eq!(err.var, "KV_API_MAX_TTL_SECONDS");
        }
    }

    #[test]
    fn body_bounds_have_documented_defaults_and_the_budget_must_fit_the_largest_body() {
        let defaults = settings(&[]).expect("settings");
        assert_eq!(defaults.body_timeout, DEFAULT_BODY_TIMEOUT);
        assert_eq!(
            defaults.max_buffered_body_bytes,
            DEFAULT_MAX_BUFFERED_BODY_BYTES
        );
        let err = settings(&[("KV_API_BODY_TIMEOUT_MS", "0")]).expect_err("must fail");
        assert_eq!(err.var, "KV_API_BODY_TIMEOUT_MS");
        let err =
            settings(&[("KV_API_MAX_BUFFERED_BODY_BYTES", "1000000")]).expect_err("too small");
        assert_eq!(err.var, "KV_API_MAX_BUFFERED_BODY_BYTES");
        assert!(err.to_string().contains("16777216"), "{err}");
    }
}
