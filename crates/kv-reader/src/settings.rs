//! kv-reader's settings: the shared core plus where and how the replica is kept.

use std::path::PathBuf;
use std::time::Duration;

use kv_core::secret::Secret;
use kv_core::settings::{CoreSettings, Env, SettingsError};

/// redb's page cache of a disk store unless KV_API_STATE_STORAGE_CACHE_MB says otherwise.
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Where the replica lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// redb's in-memory backend: rebuilt from the topic at every start.
    Memory,
    /// A redb file; a directory gets `kv-reader.redb` inside it. Resumes where it left off.
    Disk { location: PathBuf },
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub core: CoreSettings,
    pub storage: Storage,
    pub storage_password: Option<Secret<String>>,
    /// redb's page cache. Pages beyond it are read from the file (through the OS page cache) or,
    /// in memory, from redb's in-memory backend, so it bounds what the cache adds to memory.
    pub storage_cache_bytes: usize,
    /// Used only to commit progress, so lag is visible to Kafka tooling; every reader reads
    /// every partition.
    pub group_id: String,
    /// KAFKA_ENABLE_AUTO_COMMIT: commit progress to the group (after it is in redb).
    pub commit_progress: bool,
    pub commit_interval: Duration,
    pub schema_registry_url: Option<String>,
    /// Longest a read carrying a consistency token waits for this replica to catch up.
    pub read_your_writes_timeout: Duration,
    /// How often the consumer looks for partitions added to the topic while it runs.
    pub partition_discovery_interval: Duration,
    /// Most value bytes one `POST /v1/kv:batchGet` answer may carry (413 past it).
    pub max_batch_get_bytes: usize,
    /// Most reads waiting for their consistency token at once (503 past it).
    pub max_read_your_writes_waiters: usize,
    /// KV_API_TTL_SWEEPER: this reader produces the tombstones of expired keys for every
    /// partition it holds. Exactly one reader of a topic may (docs/architecture.md).
    pub ttl_sweeper: bool,
}

/// KV_API_MAX_READ_YOUR_WRITES_WAITERS unless set.
pub const DEFAULT_MAX_READ_YOUR_WRITES_WAITERS: usize = 10_000;

/// KV_API_MAX_BATCH_GET_BYTES unless set: sixteen values at the writer's default limit.
pub const DEFAULT_MAX_BATCH_GET_BYTES: usize = 16 * 1024 * 1024;

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let mut core = CoreSettings::from_env(env)?;
        let storage = storage(env, &mut core.notices)?;
        let storage_password = match env.string("KV_API_STATE_STORAGE_PASSWORD") {
            Some(password) => Some(Secret::new(password)),
            None => env
                .string("KV_API_STATE_STORAGE_SQLITE_PASSWORD")
                .map(Secret::new),
        };
        let storage_cache_mib: usize =
            env.number("KV_API_STATE_STORAGE_CACHE_MB", DEFAULT_CACHE_BYTES >> 20)?;
        if storage_cache_mib == 0 {
            return Err(SettingsError::new(
                "KV_API_STATE_STORAGE_CACHE_MB",
                "must be at least 1 (MiB)",
            ));
        }
        Ok(Self {
            core,
            storage,
            storage_password,
            storage_cache_bytes: storage_cache_mib.saturating_mul(1024 * 1024),
            group_id: env.required("KAFKA_GROUP_ID")?,
            commit_progress: env.bool("KAFKA_ENABLE_AUTO_COMMIT", true)?,
            commit_interval: env.millis("KAFKA_AUTO_COMMIT_INTERVAL_MS", Duration::from_secs(1))?,
            schema_registry_url: env.string("KAFKA_SCHEMA_REGISTRY_URL"),
            read_your_writes_timeout: env
                .millis("KV_API_READ_YOUR_WRITES_TIMEOUT_MS", Duration::from_secs(5))?,
            partition_discovery_interval: env.millis(
                "KV_API_PARTITION_DISCOVERY_INTERVAL_MS",
                Duration::from_secs(30),
            )?,
            max_batch_get_bytes: match env
                .number("KV_API_MAX_BATCH_GET_BYTES", DEFAULT_MAX_BATCH_GET_BYTES)?
            {
                0 => {
                    return Err(SettingsError::new(
                        "KV_API_MAX_BATCH_GET_BYTES",
                        "must be at least 1 (bytes)",
                    ))
                }
                bytes => bytes,
            },
            max_read_your_writes_waiters: match env.number(
                "KV_API_MAX_READ_YOUR_WRITES_WAITERS",
                DEFAULT_MAX_READ_YOUR_WRITES_WAITERS,
            )? {
                0 => {
                    return Err(SettingsError::new(
                        "KV_API_MAX_READ_YOUR_WRITES_WAITERS",
                        "must be at least 1",
                    ))
                }
                waiters => waiters,
            },
            ttl_sweeper: env.bool("KV_API_TTL_SWEEPER", false)?,
        })
    }
}

/// KV_API_STATE_STORAGE_TYPE as the original documented it: unset (or its `sqlite`) means in
/// memory unless KV_API_STATE_STORAGE_DISK_LOCATION is given; `dict` is the original's memory.
fn storage(env: &Env, notices: &mut Vec<String>) -> Result<Storage, SettingsError> {
    const TYPE: &str = "KV_API_STATE_STORAGE_TYPE";
    const LOCATION: &str = "KV_API_STATE_STORAGE_DISK_LOCATION";
    let location = env.string(LOCATION).map(PathBuf::from);
    let kind = env.string(TYPE).map(|t| t.trim().to_ascii_lowercase());
    let disk_or_memory = |location: Option<PathBuf>| match location {
        Some(location) => Storage::Disk { location },
        None => Storage::Memory,
    };
    match kind.as_deref() {
        None => Ok(disk_or_memory(location)),
        Some("memory") => Ok(Storage::Memory),
        Some("disk") => match location {
            Some(location) => Ok(Storage::Disk { location }),
            None => Err(SettingsError::new(
                LOCATION,
                "is required when KV_API_STATE_STORAGE_TYPE=disk",
            )),
        },
        Some("dict") => {
            notices.push(format!(
                "{TYPE}=dict is the original's name for memory; using redb in memory"
            ));
            Ok(Storage::Memory)
        }
        Some("sqlite") => {
            notices.push(format!(
                "{TYPE}=sqlite is the original's name; using redb {}",
                if location.is_some() {
                    "on disk"
                } else {
                    "in memory"
                }
            ));
            Ok(disk_or_memory(location))
        }
        Some(other) => Err(SettingsError::new(
            TYPE,
            format!("expected memory or disk (or the original's dict, sqlite), got {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let mut all = vec![
            ("KAFKA_BOOTSTRAP_SERVERS", "b:9092"),
            ("KV_API_KAFKA_KEY_VALUE_TOPIC", "t"),
            ("KV_API_DISABLE_API_AUTH", "true"),
            ("KAFKA_GROUP_ID", "reader-1"),
        ];
        all.extend_from_slice(pairs);
        Settings::from_env(&Env::from_pairs(all.iter().copied())?)
    }

    #[test]
    fn storage_is_in_memory_unless_a_location_is_given() {
        assert_eq!(settings(&[]).expect("settings").storage, Storage::Memory);
        assert_eq!(
            settings(&[("KV_API_STATE_STORAGE_DISK_LOCATION", "/data")])
                .expect("settings")
                .storage,
            Storage::Disk {
                location: "/data".into()
            }
        );
    }

    #[test]
    fn the_originals_storage_names_are_aliases() {
        let s = settings(&[("KV_API_STATE_STORAGE_TYPE", "dict")]).expect("settings");
        assert_eq!(s.storage, Storage::Memory);
        assert!(s.core.notices.iter().any(|n| n.contains("dict")));
        let s = settings(&[
            ("KV_API_STATE_STORAGE_TYPE", "sqlite"),
            ("KV_API_STATE_STORAGE_DISK_LOCATION", "/data"),
        ])
        .expect("settings");
        assert_eq!(
            s.storage,
            Storage::Disk {
                location: "/data".into()
            }
        );
    }

    #[test]
    fn disk_storage_without_a_location_names_the_missing_variable() {
        let err = settings(&[("KV_API_STATE_STORAGE_TYPE", "disk")]).expect_err("must fail");
        assert_eq!(err.var, "KV_API_STATE_STORAGE_DISK_LOCATION");
    }

    #[test]
    fn an_unknown_storage_type_is_refused() {
        let err = settings(&[("KV_API_STATE_STORAGE_TYPE", "floppy")]).expect_err("must fail");
        assert_eq!(err.var, "KV_API_STATE_STORAGE_TYPE");
    }

    #[test]
    fn a_reader_needs_a_group_id() {
        let env = Env::from_pairs([
            ("KAFKA_BOOTSTRAP_SERVERS", "b:9092"),
            ("KV_API_KAFKA_KEY_VALUE_TOPIC", "t"),
            ("KV_API_DISABLE_API_AUTH", "true"),
        ])
        .expect("env");
        assert_eq!(
            Settings::from_env(&env).expect_err("must fail").var,
            "KAFKA_GROUP_ID"
        );
    }

    #[test]
    fn partition_discovery_runs_every_30_seconds_unless_told_otherwise() {
        let s = settings(&[]).expect("settings");
        assert_eq!(s.partition_discovery_interval, Duration::from_secs(30));
        let s = settings(&[("KV_API_PARTITION_DISCOVERY_INTERVAL_MS", "500")]).expect("settings");
        assert_eq!(s.partition_discovery_interval, Duration::from_millis(500));
        let err = settings(&[("KV_API_PARTITION_DISCOVERY_INTERVAL_MS", "0")]).expect_err("zero");
        assert_eq!(err.var, "KV_API_PARTITION_DISCOVERY_INTERVAL_MS");
    }

    #[test]
    fn the_store_cache_is_32_mib_unless_told_otherwise() {
        let default = settings(&[]).expect("settings");
        assert_eq!(default.storage_cache_bytes, 32 * 1024 * 1024);
        let told = settings(&[("KV_API_STATE_STORAGE_CACHE_MB", "256")]).expect("settings");
        assert_eq!(told.storage_cache_bytes, 256 * 1024 * 1024);
        let error = settings(&[("KV_API_STATE_STORAGE_CACHE_MB", "0")]).expect_err("zero");
        assert!(error.to_string().contains("KV_API_STATE_STORAGE_CACHE_MB"));
    }

    #[test]
    fn read_your_writes_waiters_are_bounded_at_ten_thousand_unless_told_otherwise() {
        assert_eq!(
            settings(&[])
                .expect("settings")
                .max_read_your_writes_waiters,
            10_000
        );
        let told = settings(&[("KV_API_MAX_READ_YOUR_WRITES_WAITERS", "50")]).expect("settings");
        assert_eq!(told.max_read_your_writes_waiters, 50);
        let error = settings(&[("KV_API_MAX_READ_YOUR_WRITES_WAITERS", "0")]).expect_err("zero");
        assert_eq!(error.var, "KV_API_MAX_READ_YOUR_WRITES_WAITERS");
    }

    #[test]
    fn a_reader_sweeps_expired_keys_only_when_told_to() {
        assert!(!settings(&[]).expect("settings").ttl_sweeper);
        assert!(
            settings(&[("KV_API_TTL_SWEEPER", "true")])
                .expect("settings")
                .ttl_sweeper
        );
        let error = settings(&[("KV_API_TTL_SWEEPER", "maybe")]).expect_err("not a bool");
        assert_eq!(error.var, "KV_API_TTL_SWEEPER");
    }

    #[test]
    fn the_originals_sqlite_password_is_an_alias() {
        let s = settings(&[("KV_API_STATE_STORAGE_SQLITE_PASSWORD", "pw")]).expect("settings");
        assert_eq!(s.storage_password.expect("password").expose(), "pw");
    }
}
