//! kv-reader's settings: the shared core plus where and how the replica is kept.

use std::path::PathBuf;
use std::time::Duration;

use kv_core::secret::Secret;
use kv_core::settings::{parse_host_port, CaFile, CoreSettings, Env, SettingsError};

use crate::cluster::shard::{peer_urls, ShardSpec, Sharding};

/// redb's page cache of a disk store unless KV_API_STATE_STORAGE_CACHE_MB says otherwise.
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// Free space a disk store's file system keeps beyond what a batch needs, unless
/// KV_API_STATE_STORAGE_MIN_FREE_MB says otherwise.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;

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
    /// KV_API_STATE_STORAGE_MIN_FREE_MB: a disk replica stops applying (and is not ready) while
    /// its file system has less free space than this beyond what the next batch needs, instead
    /// of failing a commit there.
    pub storage_min_free_bytes: u64,
    /// Used only to commit progress, so lag is visible to Kafka tooling; every reader reads
    /// every partition.
    pub group_id: String,
    /// KAFKA_ENABLE_AUTO_COMMIT: commit progress to the group (after it is in redb).
    pub commit_progress: bool,
    pub commit_interval: Duration,
    /// KAFKA_SCHEMA_REGISTRY_URL and how to reach it.
    pub schema_registry: Option<RegistrySettings>,
    /// Longest a read carrying a consistency token waits for this replica to catch up.
    pub read_your_writes_timeout: Duration,
    /// How often the consumer looks for partitions added to the topic while it runs.
    pub partition_discovery_interval: Duration,
    /// Most value bytes one `POST /v1/kv:batchGet` answer may carry (413 past it).
    pub max_batch_get_bytes: usize,
    /// Most reads waiting for their consistency token at once (503 past it).
    pub max_read_your_writes_waiters: usize,
    /// KV_API_REPLAY_PROGRESS_INTERVAL_MS: how often a replay logs how far it got.
    pub replay_progress_interval: Duration,
    /// `KV_API_SHARD`: this reader holds only its shard's partitions and forwards the rest.
    pub shard: Option<Sharding>,
    /// `KV_API_BOOTSTRAP_PEERS`: readers an empty store takes a snapshot from, in order.
    pub bootstrap_peers: Vec<String>,
    /// The client-credentials grant a bootstrapping reader gets its admin token with.
    pub bootstrap_client: Option<(String, Secret<String>)>,
    /// `KV_API_BOOTSTRAP_ALLOW_HTTP_TOKEN`: the admin token may go to an `http://` peer.
    pub bootstrap_allow_http_token: bool,
    /// Most snapshots this reader serves at once (503 past it).
    pub snapshot_concurrency: usize,
    pub watch: WatchSettings,
    /// `KV_API_OWNER` (alias `KV_API_TTL_SWEEPER`): this reader is a candidate owner of the
    /// partitions it holds; the one acting on each produces its TTL tombstones and repairs
    /// (docs/architecture.md, "The acting owner of a partition").
    pub owner: bool,
    /// `KV_API_OWNER_TOPIC`: where unsharded candidates hold their leases.
    pub owner_topic: String,
    /// `KV_API_RESP_LISTEN`: the Redis-protocol read port, off unless set.
    pub resp: Option<RespSettings>,
}

/// `KV_API_OWNER`, or its older name `KV_API_TTL_SWEEPER`; both set must agree.
fn owner_candidate(env: &Env) -> Result<bool, SettingsError> {
    let owner = env
        .string("KV_API_OWNER")
        .map(|_| env.bool("KV_API_OWNER", false))
        .transpose()?;
    let sweeper = env
        .string("KV_API_TTL_SWEEPER")
        .map(|_| env.bool("KV_API_TTL_SWEEPER", false))
        .transpose()?;
    match (owner, sweeper) {
        (Some(owner), Some(sweeper)) if owner != sweeper => Err(SettingsError::new(
            "KV_API_OWNER",
            "contradicts KV_API_TTL_SWEEPER, its older name: set one of them",
        )),
        (owner, sweeper) => Ok(owner.or(sweeper).unwrap_or(false)),
    }
}

/// KV_API_SNAPSHOT_CONCURRENCY unless set.
pub const DEFAULT_SNAPSHOT_CONCURRENCY: usize = 2;

/// KV_API_MAX_READ_YOUR_WRITES_WAITERS unless set.
pub const DEFAULT_MAX_READ_YOUR_WRITES_WAITERS: usize = 10_000;

/// KV_API_MAX_BATCH_GET_BYTES unless set: sixteen values at the writer's default limit.
pub const DEFAULT_MAX_BATCH_GET_BYTES: usize = 16 * 1024 * 1024;

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let mut core = CoreSettings::from_env(env)?;
        let storage = storage(env, &mut core.notices)?;
        let owner_topic = env
            .string("KV_API_OWNER_TOPIC")
            .unwrap_or_else(|| format!("{}-owners", core.topic));
        let storage_password = match env.string("KV_API_STATE_STORAGE_PASSWORD") {
            Some(password) => Some(Secret::new(password)),
            None => env
                .string("KV_API_STATE_STORAGE_SQLITE_PASSWORD")
                .map(Secret::new),
        };
        if storage_password.is_some() && !core.state_rules.is_empty() {
            return Err(SettingsError::new(
                "KV_API_STATE_RULES",
                "computed state is not available on a replica encrypted at rest yet \
                 (KV_API_STATE_STORAGE_PASSWORD): its reports would be stored in clear",
            ));
        }
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
            storage_min_free_bytes: env
                .number::<u64>(
                    "KV_API_STATE_STORAGE_MIN_FREE_MB",
                    DEFAULT_MIN_FREE_BYTES >> 20,
                )?
                .saturating_mul(1024 * 1024),
            group_id: env.required("KAFKA_GROUP_ID")?,
            commit_progress: env.bool("KAFKA_ENABLE_AUTO_COMMIT", true)?,
            commit_interval: env.millis("KAFKA_AUTO_COMMIT_INTERVAL_MS", Duration::from_secs(1))?,
            schema_registry: RegistrySettings::from_env(env)?,
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
            replay_progress_interval: env.millis(
                "KV_API_REPLAY_PROGRESS_INTERVAL_MS",
                Duration::from_secs(10),
            )?,
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
            shard: None,
            bootstrap_peers: match env.string("KV_API_BOOTSTRAP_PEERS") {
                None => Vec::new(),
                Some(list) => bootstrap_peers(&list)?,
            },
            bootstrap_client: match (
                env.string("KV_API_BOOTSTRAP_CLIENT_ID"),
                env.string("KV_API_BOOTSTRAP_CLIENT_SECRET"),
            ) {
                (None, None) => None,
                (Some(id), Some(secret)) => Some((id, Secret::new(secret))),
                (Some(_), None) => {
                    return Err(SettingsError::new(
                        "KV_API_BOOTSTRAP_CLIENT_SECRET",
                        "is required with KV_API_BOOTSTRAP_CLIENT_ID",
                    ))
                }
                (None, Some(_)) => {
                    return Err(SettingsError::new(
                        "KV_API_BOOTSTRAP_CLIENT_ID",
                        "is required with KV_API_BOOTSTRAP_CLIENT_SECRET",
                    ))
                }
            },
            bootstrap_allow_http_token: env.bool("KV_API_BOOTSTRAP_ALLOW_HTTP_TOKEN", false)?,
            snapshot_concurrency: match env
                .number("KV_API_SNAPSHOT_CONCURRENCY", DEFAULT_SNAPSHOT_CONCURRENCY)?
            {
                0 => {
                    return Err(SettingsError::new(
                        "KV_API_SNAPSHOT_CONCURRENCY",
                        "must be at least 1",
                    ))
                }
                n => n,
            },
            watch: WatchSettings::from_env(env)?,
            owner: owner_candidate(env)?,
            owner_topic,
            resp: RespSettings::from_env(env)?,
        })
        .and_then(|mut settings: Self| {
            settings.shard = sharding(env, settings.read_your_writes_timeout)?;
            Ok(settings)
        })
    }
}

/// KV_API_BOOTSTRAP_PEERS: a comma list of http(s) URLs.
fn bootstrap_peers(list: &str) -> Result<Vec<String>, SettingsError> {
    list.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| match reqwest::Url::parse(url) {
            Ok(parsed)
                if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() =>
            {
                Ok(url.trim_end_matches('/').to_owned())
            }
            _ => Err(SettingsError::new(
                "KV_API_BOOTSTRAP_PEERS",
                format!("{url:?} is not an http:// or https:// URL with a host"),
            )),
        })
        .collect()
}

/// KV_API_SHARD, KV_API_SHARD_REPLICAS, KV_API_SHARD_PEERS, KV_API_SHARD_FORWARD_TIMEOUT_MS.
fn sharding(
    env: &Env,
    read_your_writes_timeout: Duration,
) -> Result<Option<Sharding>, SettingsError> {
    let Some(shard) = env.string("KV_API_SHARD") else {
        for var in ["KV_API_SHARD_REPLICAS", "KV_API_SHARD_PEERS"] {
            if env.string(var).is_some() {
                return Err(SettingsError::new(
                    var,
                    "has no effect without KV_API_SHARD (i/N): set both, or neither",
                ));
            }
        }
        return Ok(None);
    };
    let spec = ShardSpec::parse(&shard, env.number("KV_API_SHARD_REPLICAS", 1)?)?;
    let peers = match env.string("KV_API_SHARD_PEERS") {
        Some(peers) => peer_urls(&peers, spec.count)?,
        None if spec.count == 1 => vec![String::new()],
        None => {
            return Err(SettingsError::new(
                "KV_API_SHARD_PEERS",
                format!(
                    "is required with KV_API_SHARD={shard}: where each shard answers, as a \
                     template (http://kv-reader-{{i}}.kv-reader-headless:8080) or {} URLs",
                    spec.count
                ),
            ))
        }
    };
    let default_timeout = read_your_writes_timeout + Duration::from_secs(5);
    let forward_timeout = env.millis("KV_API_SHARD_FORWARD_TIMEOUT_MS", default_timeout)?;
    Ok(Some(Sharding {
        spec,
        peers,
        forward_timeout,
    }))
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

/// The change feed behind `GET /v1/kv:watch`: how much of it is kept for watches that fall
/// behind or resume, and how many watches may be open at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSettings {
    /// Most changes the feed keeps; a resume from before the oldest gets a reset.
    pub buffer_events: usize,
    /// Most bytes of keys and values the feed keeps (at least the newest change is kept).
    pub buffer_bytes: usize,
    /// Most watches open at once (503 past it).
    pub max_watches: usize,
    /// Most watches one caller holds open at once (429 past it), so one client cannot take
    /// every slot.
    pub max_watches_per_caller: usize,
}

/// KV_API_WATCH_BUFFER_EVENTS unless set.
pub const DEFAULT_WATCH_BUFFER_EVENTS: usize = 10_000;
/// KV_API_WATCH_BUFFER_BYTES unless set: 16 MiB.
pub const DEFAULT_WATCH_BUFFER_BYTES: usize = 16 * 1024 * 1024;
/// KV_API_MAX_WATCHES unless set.
pub const DEFAULT_MAX_WATCHES: usize = 1000;
/// KV_API_MAX_WATCHES_PER_CALLER unless set.
pub const DEFAULT_MAX_WATCHES_PER_CALLER: usize = 100;

impl WatchSettings {
    fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let at_least_one = |var: &'static str, default: usize| match env.number(var, default)? {
            0 => Err(SettingsError::new(var, "must be at least 1")),
            n => Ok(n),
        };
        Ok(Self {
            buffer_events: at_least_one("KV_API_WATCH_BUFFER_EVENTS", DEFAULT_WATCH_BUFFER_EVENTS)?,
            buffer_bytes: at_least_one("KV_API_WATCH_BUFFER_BYTES", DEFAULT_WATCH_BUFFER_BYTES)?,
            max_watches: at_least_one("KV_API_MAX_WATCHES", DEFAULT_MAX_WATCHES)?,
            max_watches_per_caller: at_least_one(
                "KV_API_MAX_WATCHES_PER_CALLER",
                DEFAULT_MAX_WATCHES_PER_CALLER,
            )?,
        })
    }
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            buffer_events: DEFAULT_WATCH_BUFFER_EVENTS,
            buffer_bytes: DEFAULT_WATCH_BUFFER_BYTES,
            max_watches: DEFAULT_MAX_WATCHES,
            max_watches_per_caller: DEFAULT_MAX_WATCHES_PER_CALLER,
        }
    }
}

/// The schema registry a topic's foreign producers framed their records for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    pub url: String,
    /// KAFKA_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO: `user:password`, Confluent's
    /// `basic.auth.user.info` (credentials in the URL work too).
    pub user_info: Option<Secret<String>>,
    /// KAFKA_SCHEMA_REGISTRY_CA_PEM_LOCATION: authorities trusted beside the system's store.
    pub ca: Option<CaFile>,
}

const REGISTRY_USER_INFO: &str = "KAFKA_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO";

impl RegistrySettings {
    fn from_env(env: &Env) -> Result<Option<Self>, SettingsError> {
        let Some(url) = env.string("KAFKA_SCHEMA_REGISTRY_URL") else {
            return Ok(None);
        };
        let user_info = env.string(REGISTRY_USER_INFO).map(Secret::new);
        if user_info
            .as_ref()
            .is_some_and(|u| !u.expose().contains(':'))
        {
            return Err(SettingsError::new(
                REGISTRY_USER_INFO,
                "must be user:password",
            ));
        }
        Ok(Some(Self {
            url,
            user_info,
            ca: CaFile::from_env(env, "KAFKA_SCHEMA_REGISTRY_CA_PEM_LOCATION")?,
        }))
    }
}

/// The Redis-protocol (RESP) read port beside the HTTP one (docs/api.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RespSettings {
    /// `host:port`; port 0 takes a free one, which `App::resp_port` reports.
    pub listen: String,
    /// Most connections open at once; one more is answered an error and closed.
    pub max_connections: usize,
    /// With auth on, most connections open at once that have not authenticated yet: past it
    /// (or past `max_connections`) the oldest of them is closed to make room.
    pub max_unauthenticated: usize,
    /// With auth on, how long a connection has from its accept to a successful `AUTH`.
    pub auth_timeout: Duration,
    /// How long a request has from its first byte to its last.
    pub request_timeout: Duration,
    /// Most bytes of large replies (`MGET`) held at once across the port's connections.
    pub reply_budget_bytes: usize,
}

/// KV_API_RESP_MAX_CONNECTIONS unless set.
pub const DEFAULT_RESP_MAX_CONNECTIONS: usize = 1000;
/// KV_API_RESP_AUTH_TIMEOUT_MS unless set.
pub const DEFAULT_RESP_AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// KV_API_RESP_REQUEST_TIMEOUT_MS unless set.
pub const DEFAULT_RESP_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// KV_API_RESP_REPLY_BUDGET_BYTES unless set: sixteen `MGET`s at the default batch limit.
pub const DEFAULT_RESP_REPLY_BUDGET_BYTES: usize = 256 * 1024 * 1024;

impl RespSettings {
    fn from_env(env: &Env) -> Result<Option<Self>, SettingsError> {
        const LISTEN: &str = "KV_API_RESP_LISTEN";
        const MAX: &str = "KV_API_RESP_MAX_CONNECTIONS";
        const MAX_UNAUTHENTICATED: &str = "KV_API_RESP_MAX_UNAUTHENTICATED";
        const AUTH_TIMEOUT: &str = "KV_API_RESP_AUTH_TIMEOUT_MS";
        const REQUEST_TIMEOUT: &str = "KV_API_RESP_REQUEST_TIMEOUT_MS";
        const REPLY_BUDGET: &str = "KV_API_RESP_REPLY_BUDGET_BYTES";
        let Some(listen) = env.string(LISTEN).filter(|l| !l.trim().is_empty()) else {
            for var in [
                MAX,
                MAX_UNAUTHENTICATED,
                AUTH_TIMEOUT,
                REQUEST_TIMEOUT,
                REPLY_BUDGET,
            ] {
                if env.string(var).is_some() {
                    return Err(SettingsError::new(
                        var,
                        "has no effect without KV_API_RESP_LISTEN: set both, or neither",
                    ));
                }
            }
            return Ok(None);
        };
        let max_connections = match env.number(MAX, DEFAULT_RESP_MAX_CONNECTIONS)? {
            0 => return Err(SettingsError::new(MAX, "must be at least 1")),
            n => n,
        };
        let max_unauthenticated =
            match env.number(MAX_UNAUTHENTICATED, max_connections.div_ceil(2))? {
                0 => {
                    return Err(SettingsError::new(
                        MAX_UNAUTHENTICATED,
                        "must be at least 1",
                    ))
                }
                n if n > max_connections => {
                    return Err(SettingsError::new(
                        MAX_UNAUTHENTICATED,
                        format!("must be at most KV_API_RESP_MAX_CONNECTIONS ({max_connections})"),
                    ))
                }
                n => n,
            };
        Ok(Some(Self {
            listen: parse_host_port(LISTEN, listen.trim())?,
            max_connections,
            max_unauthenticated,
            auth_timeout: env.millis(AUTH_TIMEOUT, DEFAULT_RESP_AUTH_TIMEOUT)?,
            request_timeout: env.millis(REQUEST_TIMEOUT, DEFAULT_RESP_REQUEST_TIMEOUT)?,
            reply_budget_bytes: match env.number(REPLY_BUDGET, DEFAULT_RESP_REPLY_BUDGET_BYTES)? {
                n if n < 1024 || n > u32::MAX as usize => {
                    return Err(SettingsError::new(
                        REPLY_BUDGET,
                        format!("must be between 1024 and {}", u32::MAX),
                    ))
                }
                n => n,
            },
        }))
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
    fn a_disk_store_keeps_64_mib_free_unless_told_otherwise() {
        assert_eq!(
            settings(&[]).expect("settings").storage_min_free_bytes,
            64 << 20
        );
        let told = settings(&[("KV_API_STATE_STORAGE_MIN_FREE_MB", "8")]).expect("settings");
        assert_eq!(told.storage_min_free_bytes, 8 << 20);
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
    fn a_shard_needs_its_peers_and_a_peer_list_needs_a_shard() {
        assert!(settings(&[]).expect("settings").shard.is_none());
        let error = settings(&[("KV_API_SHARD", "1/3")]).expect_err("no peers");
        assert_eq!(error.var, "KV_API_SHARD_PEERS");
        let error = settings(&[("KV_API_SHARD_PEERS", "http://r-{i}:8081")]).expect_err("no shard");
        assert_eq!(error.var, "KV_API_SHARD_PEERS");
        let sharded = settings(&[
            ("KV_API_SHARD", "1/3"),
            ("KV_API_SHARD_REPLICAS", "2"),
            ("KV_API_SHARD_PEERS", "http://r-{i}:8081"),
        ])
        .expect("settings")
        .shard
        .expect("sharded");
        assert_eq!(sharded.spec, ShardSpec::parse("1/3", 2).expect("spec"));
        assert_eq!(sharded.peers[2], "http://r-2:8081");
        assert_eq!(sharded.forward_timeout, Duration::from_secs(10));
    }

    #[test]
    fn watches_keep_ten_thousand_changes_in_16_mib_and_a_thousand_open_unless_told_otherwise() {
        assert_eq!(
            settings(&[]).expect("settings").watch,
            WatchSettings::default()
        );
        let told = settings(&[
            ("KV_API_WATCH_BUFFER_EVENTS", "50"),
            ("KV_API_WATCH_BUFFER_BYTES", "4096"),
            ("KV_API_MAX_WATCHES", "3"),
            ("KV_API_MAX_WATCHES_PER_CALLER", "2"),
        ])
        .expect("settings");
        assert_eq!(
            told.watch,
            WatchSettings {
                buffer_events: 50,
                buffer_bytes: 4096,
                max_watches: 3,
                max_watches_per_caller: 2,
            }
        );
        for var in [
            "KV_API_WATCH_BUFFER_EVENTS",
            "KV_API_WATCH_BUFFER_BYTES",
            "KV_API_MAX_WATCHES",
            "KV_API_MAX_WATCHES_PER_CALLER",
        ] {
            assert_eq!(settings(&[(var, "0")]).expect_err("zero").var, var);
        }
    }

    #[test]
    fn a_reader_is_an_owner_candidate_only_when_told_to_under_either_name() {
        assert!(!settings(&[]).expect("settings").owner);
        assert!(
            settings(&[("KV_API_TTL_SWEEPER", "true")])
                .expect("settings")
                .owner
        );
        let error = settings(&[("KV_API_TTL_SWEEPER", "maybe")]).expect_err("not a bool");
        assert_eq!(error.var, "KV_API_TTL_SWEEPER");
        assert!(
            settings(&[("KV_API_OWNER", "true")])
                .expect("settings")
                .owner
        );
        let both = [("KV_API_OWNER", "true"), ("KV_API_TTL_SWEEPER", "false")];
        assert_eq!(
            settings(&both).expect_err("contradiction").var,
            "KV_API_OWNER"
        );
        let s = settings(&[]).expect("settings");
        assert_eq!(s.owner_topic, format!("{}-owners", s.core.topic));
    }

    #[test]
    fn the_resp_port_is_off_unless_an_address_is_given() {
        assert_eq!(settings(&[]).expect("settings").resp, None);
        let on = settings(&[("KV_API_RESP_LISTEN", "127.0.0.1:0")]).expect("settings");
        assert_eq!(
            on.resp,
            Some(RespSettings {
                listen: "127.0.0.1:0".into(),
                max_connections: DEFAULT_RESP_MAX_CONNECTIONS,
                max_unauthenticated: DEFAULT_RESP_MAX_CONNECTIONS / 2,
                auth_timeout: DEFAULT_RESP_AUTH_TIMEOUT,
                request_timeout: DEFAULT_RESP_REQUEST_TIMEOUT,
                reply_budget_bytes: DEFAULT_RESP_REPLY_BUDGET_BYTES,
            })
        );
        for (var, bad) in [
            ("KV_API_RESP_MAX_UNAUTHENTICATED", "0"),
            ("KV_API_RESP_MAX_UNAUTHENTICATED", "1001"),
            ("KV_API_RESP_AUTH_TIMEOUT_MS", "0"),
            ("KV_API_RESP_REQUEST_TIMEOUT_MS", "soon"),
            ("KV_API_RESP_REPLY_BUDGET_BYTES", "10"),
        ] {
            let error =
                settings(&[("KV_API_RESP_LISTEN", "127.0.0.1:0"), (var, bad)]).expect_err(bad);
            assert_eq!(error.var, var);
            let error = settings(&[(var, "1")]).expect_err("no listen");
            assert_eq!(error.var, var);
        }
        let error = settings(&[("KV_API_RESP_LISTEN", "6380")]).expect_err("no host");
        assert_eq!(error.var, "KV_API_RESP_LISTEN");
        let error = settings(&[("KV_API_RESP_MAX_CONNECTIONS", "5")]).expect_err("no listen");
        assert_eq!(error.var, "KV_API_RESP_MAX_CONNECTIONS");
        let error = settings(&[
            ("KV_API_RESP_LISTEN", "127.0.0.1:0"),
            ("KV_API_RESP_MAX_CONNECTIONS", "0"),
        ])
        .expect_err("zero");
        assert_eq!(error.var, "KV_API_RESP_MAX_CONNECTIONS");
    }

    #[test]
    fn the_originals_sqlite_password_is_an_alias() {
        let s = settings(&[("KV_API_STATE_STORAGE_SQLITE_PASSWORD", "pw")]).expect("settings");
        assert_eq!(s.storage_password.expect("password").expose(), "pw");
    }
}
