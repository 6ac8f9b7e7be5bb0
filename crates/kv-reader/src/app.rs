//! The composition root: `main` and the tests build the reader the same way.

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, HttpServer};
use kv_core::kafka::{
    check_topic_config, compacted_delete_retention, UnsafeTopic, TOPIC_CONFIG_TIMEOUT,
};
use kv_core::kafka_stats::KafkaStats;
use kv_core::record::RecordCodec;
use kv_core::web::auth::{AuthGate, DiscoveryError};
use kv_core::web::http::{
    bind, close_when_body_unread, correlation_id_middleware, path_config, query_config, JsonLimit,
    ListenError,
};
use kv_core::web::metrics::{metrics_middleware, Metrics};
use kv_core::web::routing::{register, route_not_found};

use crate::acting::owner::{self, Election};
use crate::acting::ttl::{check_compaction_lag, SweptPartitions, Ttl, TtlError, TtlMetrics};
use crate::cluster::shard::Topology;
use crate::cluster::Cluster;
use crate::http::watch::{end_watches_on_shutdown, WatchState};
use crate::http::{self, HttpState, PeerClient};
use crate::read::ReadCore;
use crate::metrics::{ReplicaCollector, RespMetrics, SnapshotMetrics, WatchMetrics};
use crate::replica::schema_registry::{Registry, RegistryError, SchemaFraming, SchemaIds};
use crate::replica::{DeleteRetention, Replica, ReplicaError, Wiring};
use crate::resp::{self, RespServer};
use crate::settings::{Settings, Storage};
use crate::store::{Store, StoreError};
use crate::transfer::bootstrap::BootstrapConfig;

/// JSON request bodies of the read routes hold a key or a list of keys.
const JSON_LIMIT: usize = 4 * 1024 * 1024;
/// How long start-up waits for the schema registry's list of subjects.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the schema ids of the topic's subjects are read again, so a schema a foreign
/// producer registers while the reader runs is stripped within this time.
const REGISTRY_REFRESH: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error(transparent)]
    SchemaRegistry(#[from] RegistryError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot register the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("OpenID Connect: {0}")]
    Auth(#[from] DiscoveryError),
    #[error(transparent)]
    UnsafeTopic(#[from] UnsafeTopic),
    #[error(transparent)]
    Ttl(#[from] TtlError),
    #[error(transparent)]
    Owner(#[from] owner::OwnerError),
    #[error("a start-up task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot build the HTTP client that forwards reads to peer shards: {0}")]
    PeerClient(#[from] reqwest::Error),
}

/// The client a worker forwards reads to peer shards with.
fn peer_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
}

pub struct App {
    server: Server,
    port: u16,
    resp: Option<RespServer>,
    replica: Replica,
    /// This candidate's owner lease, ended when the app stops.
    owner_lease: Option<owner::LeaseHolder>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("port", &self.port)
            .field("resp_port", &self.resp_port())
            .finish_non_exhaustive()
    }
}

impl App {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        for notice in &settings.core.notices {
            tracing::warn!("{notice}");
        }
        let auth = web::Data::new(AuthGate::from_settings(&settings.core.auth, "kv-reader").await?);
        let codec = RecordCodec::for_topic(&settings.core.topic_encryption);
        if matches!(codec, RecordCodec::Encrypted(_)) {
            tracing::info!("records on the topic are encrypted (KV_API_ENCRYPT_DATA_ON_KAFKA)");
        }
        let password = match (&settings.storage, &settings.storage_password) {
            (Storage::Disk { .. }, password) => password.as_ref(),
            (Storage::Memory, Some(_)) => {
                tracing::warn!(
                    "KV_API_STATE_STORAGE_PASSWORD has no effect on a store kept in memory"
                );
                None
            }
            (Storage::Memory, None) => None,
        };
        // PBKDF2 costs a fraction of a second by design; keep it off the async runtime.
        let storage = settings.storage.clone();
        let password = password.cloned();
        let cache_bytes = settings.storage_cache_bytes;
        let store = tokio::task::spawn_blocking(move || {
            Store::open_with_cache(&storage, password.as_ref(), cache_bytes)
        })
        .await??;
        let store = Arc::new(store);
        store.set_rules(settings.core.state_rules.clone());
        if store.is_encrypted() {
            tracing::info!("the replica is encrypted at rest (KV_API_STATE_STORAGE_PASSWORD)");
        }
        match store.path() {
            Some(path) => tracing::info!(path = %path.display(), "replica stored on disk"),
            None => tracing::info!("replica kept in memory; it is rebuilt from the topic at start"),
        }
        let (listener, address) = bind(&settings.core.listen)?;
        let metrics = web::Data::new(Metrics::new("kv-reader"));
        auth.register_metrics(metrics.registry())?;
        let framing = match &settings.schema_registry {
            None => SchemaFraming::default(),
            Some(access) => {
                let url = &access.url;
                let registry = Registry::new(access, &settings.core.topic, REGISTRY_TIMEOUT)?;
                let mut framing = registry.discover().await?;
                if matches!(codec, RecordCodec::Encrypted(_)) {
                    framing = framing.without_keys();
                }
                tracing::info!(
                    key_schema_ids = framing.key.as_ref().map(SchemaIds::len),
                    value_schema_ids = framing.value.as_ref().map(SchemaIds::len),
                    "schema registry subjects of the topic looked up"
                );
                if framing.is_on() {
                    let (registry, framing) = (registry, framing.clone());
                    tokio::spawn(async move {
                        let mut ticks = tokio::time::interval(REGISTRY_REFRESH);
                        ticks.tick().await;
                        loop {
                            ticks.tick().await;
                            registry.refresh(&framing).await;
                        }
                    });
                }
                framing.looking_up(url, &settings.core.topic)
            }
        };
        let delete_retention = DeleteRetention::default();
        let (kafka, topic) = (settings.core.kafka.clone(), settings.core.topic.clone());
        // Owner candidates keep the owner's bookkeeping for every partition they hold, so any
        // of them can act on one as soon as it owns it (docs/architecture.md, "The acting owner
        // of a partition").
        let swept = if settings.owner {
            SweptPartitions::All
        } else {
            SweptPartitions::None
        };
        // A sweeper waits for the topic's configuration: it relies on min.compaction.lag.ms.
        if settings.core.require_compacted_topic || settings.owner {
            let require = settings.core.require_compacted_topic;
            let config = check_topic_config(&kafka, &topic, require, TOPIC_CONFIG_TIMEOUT).await?;
            delete_retention.set(config.as_ref().and_then(compacted_delete_retention));
            if settings.owner {
                check_compaction_lag(&topic, config.as_ref())?;
            }
        } else {
            // Read beside the start-up, not before it: only a replica resuming from its stored
            // offsets waits for the answer (a broker may not answer DescribeConfigs at all).
            let retention = delete_retention.clone();
            tokio::spawn(async move {
                let config = check_topic_config(&kafka, &topic, false, TOPIC_CONFIG_TIMEOUT)
                    .await
                    .ok()
                    .flatten();
                retention.set(config.as_ref().and_then(compacted_delete_retention));
            });
        }
        let topology = Arc::new(Topology::default());
        let cluster = match &settings.shard {
            None => None,
            Some(sharding) => {
                let cluster = Arc::new(Cluster::new(sharding, topology.clone(), codec.clone())?);
                cluster.register_metrics(metrics.registry())?;
                cluster.spawn_health_polls()?;
                tracing::info!(
                    shard = %sharding.spec,
                    replicas = sharding.spec.replicas,
                    "sharded: this reader holds its shard's partitions and forwards other reads"
                );
                Some(cluster)
            }
        };
        let bootstrap = (!settings.bootstrap_peers.is_empty()).then(|| {
            let oidc = &settings.core.auth.oidc;
            BootstrapConfig {
                peers: settings.bootstrap_peers.clone(),
                topic: settings.core.topic.clone(),
                shard: settings.shard.as_ref().map(|s| s.spec),
                client: settings.bootstrap_client.clone(),
                token_endpoint: oidc.token_endpoint.clone(),
                issuer: oidc.idp_address_for_server.clone(),
                scopes: oidc.admin.clone(),
            }
        });
        let ttl_metrics = TtlMetrics::register(metrics.registry())?;
        let (election, owner_lease) = match (settings.owner, &cluster) {
            (false, _) => (Election::Off, None),
            (true, Some(cluster)) => (Election::Shards(cluster.clone()), None),
            (true, None) => {
                let (ownership, lease) = owner::hold_lease(
                    &settings.core.kafka,
                    &settings.owner_topic,
                    topology.clone(),
                    metrics.registry(),
                )
                .await?;
                (Election::Leases(ownership), Some(lease))
            }
        };
        let ttl = Ttl::new(
            &settings,
            codec.clone(),
            swept,
            election.clone(),
            ttl_metrics,
            crate::acting::computed::ComputedMetrics::register(metrics.registry())?,
        )?;
        let replica = Replica::start(
            &settings,
            store.clone(),
            Wiring {
                codec: codec.clone(),
                framing,
                delete_retention,
                topology: topology.clone(),
                bootstrap,
                ttl,
                kafka_stats: KafkaStats::register(metrics.registry(), Some(&settings.core.topic))?,
            },
        )?;
        let read = Arc::new(ReadCore::new(
            store.clone(),
            replica.progress(),
            cluster,
            settings.read_your_writes_timeout,
            settings.max_batch_get_bytes,
        ));
        let watches = web::Data::new(WatchState {
            feed: replica.feed(),
            store: store.clone(),
            slots: Arc::new(tokio::sync::Semaphore::new(settings.watch.max_watches)),
            max_watches: settings.watch.max_watches,
            metrics: WatchMetrics::register(metrics.registry(), replica.feed())?,
            sealed_listings: read.sealed_listings.clone(),
            shard: settings.shard.as_ref().map(|s| s.spec),
        });
        end_watches_on_shutdown(replica.feed());
        let state = web::Data::new(HttpState {
            read: read.clone(),
            topic: settings.core.topic.clone(),
            topology,
            codec,
            snapshots: Arc::new(tokio::sync::Semaphore::new(settings.snapshot_concurrency)),
            snapshot_metrics: SnapshotMetrics::new(metrics.registry())?,
            election,
        });
        // Built once to fail start-up on a bad TLS setup; each worker gets its own below.
        peer_client()?;
        metrics.registry().register(Box::new(ReplicaCollector::new(
            read.store.clone(),
            read.progress.clone(),
            replica.import_progress(),
        )?))?;
        let resp = match &settings.resp {
            None => None,
            Some(resp) => {
                let metrics = RespMetrics::register(metrics.registry(), &resp::metric_labels())?;
                let (read, auth) = (read.clone(), auth.clone());
                let max_connections = resp.max_connections;
                Some(RespServer::start(&resp.listen, |port| {
                    resp::Shared::new(read, auth.into_inner(), metrics, port, max_connections)
                })?)
            }
        };
        let server = HttpServer::new(move || {
            let client = PeerClient(peer_client().unwrap_or_default());
            actix_web::App::new()
                .wrap(from_fn(http::freshness_middleware))
                .wrap(from_fn(metrics_middleware))
                .wrap(from_fn(correlation_id_middleware))
                .wrap(from_fn(close_when_body_unread))
                .app_data(state.clone())
                .app_data(watches.clone())
                .app_data(auth.clone())
                .app_data(metrics.clone())
                .app_data(web::Data::new(client))
                .app_data(JsonLimit(JSON_LIMIT))
                .app_data(path_config())
                .app_data(query_config())
                .configure(|config| register(config, http::endpoints()))
                .default_service(web::to(route_not_found))
        })
        .listen(listener)
        .map_err(|source| ListenError {
            address: address.to_string(),
            source,
        })?
        .run();
        tracing::info!("kv-reader listening on http://{address}");
        Ok(Self {
            server,
            port: address.port(),
            resp,
            replica,
            owner_lease,
        })
    }

    /// `check-config`: the settings were read; reach what start-up needs and say what was found.
    pub async fn check(settings: &Settings) -> std::process::ExitCode {
        let mut report = kv_core::cli::Report::default();
        let storage = match &settings.storage {
            Storage::Memory => "store in memory".to_owned(),
            Storage::Disk { .. } => "store on disk".to_owned(),
        };
        report.ok(
            "settings",
            format!(
                "topic {}, listen {}, {storage}",
                settings.core.topic, settings.core.listen
            ),
        );
        kv_core::cli::check_shared(&settings.core, "kv-reader", &mut report).await;
        match &settings.schema_registry {
            None => report.skip("schema registry", "KAFKA_SCHEMA_REGISTRY_URL is not set"),
            Some(access) => {
                let url = &access.url;
                let found = match Registry::new(access, &settings.core.topic, REGISTRY_TIMEOUT) {
                    Ok(registry) => registry.discover().await.map(|framing| {
                        format!(
                            "{url}: key schema ids {}, value schema ids {}",
                            framing.key.as_ref().map_or(0, SchemaIds::len),
                            framing.value.as_ref().map_or(0, SchemaIds::len)
                        )
                    }),
                    Err(error) => Err(error),
                };
                match found {
                    Ok(found) => report.ok("schema registry", found),
                    Err(error) => report.fail("schema registry", format!("{url}: {error}")),
                }
            }
        }
        report.exit_code()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Redis-protocol read port, when `KV_API_RESP_LISTEN` turned it on.
    pub fn resp_port(&self) -> Option<u16> {
        self.resp.as_ref().map(RespServer::port)
    }

    /// Serves until SIGTERM/SIGINT, then stops the consumer after its current batch.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await?;
        drop(self.resp);
        // Handed on at once, not after the lease's session timeout.
        if let Some(lease) = self.owner_lease {
            tokio::task::spawn_blocking(move || drop(lease))
                .await
                .map_err(std::io::Error::other)?;
        }
        let replica = self.replica;
        tokio::task::spawn_blocking(move || replica.stop())
            .await
            .map_err(std::io::Error::other)?;
        tracing::info!("kv-reader stopped");
        Ok(())
    }
}
