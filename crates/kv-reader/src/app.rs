//! The composition root: `main` and the tests build the reader the same way.

use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, HttpServer};
use kv_core::kafka::{
    check_topic_config, compacted_delete_retention, UnsafeTopic, TOPIC_CONFIG_TIMEOUT,
};
use kv_core::kafka_stats::KafkaStats;
use kv_core::otlp::{Exporting, OtlpError, SpanExport, SPAN_FLUSH_TIMEOUT};
use kv_core::record::RecordCodec;
use kv_core::settings::CoreSettings;
use kv_core::web::auth::{AuthGate, DiscoveryError};
use kv_core::web::http::{bind, path_config, query_config, JsonLimit, ListenError};
use kv_core::web::metrics::Metrics;
use kv_core::web::routing::{register, route_not_found};
use kv_core::web::stack::with_shared_middleware;

use crate::acting::computed::ComputedMetrics;
use crate::acting::owner::{self, Election};
use crate::acting::ttl::{check_compaction_lag, SweptPartitions, Ttl, TtlError, TtlMetrics};
use crate::changes::metrics::WatchMetrics;
use crate::cluster::coalesce::ForwardBatches;
use crate::cluster::metrics::ForwardMetrics;
use crate::cluster::shard::Topology;
use crate::cluster::Cluster;
use crate::http::watch::{end_watches_on_shutdown, Callers, WatchState};
use crate::http::{self, HttpState, PeerClient};
use crate::read::limits::MAX_SEALED_LISTINGS;
use crate::read::ReadCore;
use crate::replica::metrics::ReplicaCollector;
use crate::replica::schema_registry::{Registry, RegistryError, SchemaFraming, SchemaIds};
use crate::replica::{DeleteRetention, Replica, ReplicaError, Wiring};
use crate::resp::metrics::RespMetrics;
use crate::resp::{self, RespServer};
use crate::settings::{Settings, Storage};
use crate::store::{Store, StoreError};
use crate::transfer::bootstrap::BootstrapConfig;
use crate::transfer::cluster::KafkaCluster;
use crate::transfer::metrics::SnapshotMetrics;

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
    #[error(transparent)]
    Otlp(#[from] OtlpError),
}

pub struct App {
    server: Server,
    port: u16,
    resp: Option<RespServer>,
    replica: Replica,
    /// This candidate's owner lease, ended when the app stops.
    owner_lease: Option<owner::LeaseHolder>,
    /// The export of request spans, when OTEL_EXPORTER_OTLP_ENDPOINT turned it on.
    exporting: Option<Exporting>,
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
    /// Start-up as a list of steps, each named for what it sets up. A step that fails stops
    /// start-up with its error before anything is served.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        settings.core.log_notices();
        let auth = web::Data::new(AuthGate::from_settings(&settings.core.auth, "kv-reader").await?);
        let codec = record_codec(&settings.core);
        let store = open_store(&settings).await?;
        let (listener, address) = bind(&settings.core.listen)?;
        let metrics = web::Data::new(Metrics::new("kv-reader"));
        let registry = metrics.registry();
        auth.register_metrics(registry)?;
        let (spans, exporting) =
            SpanExport::start(settings.core.otlp.as_ref(), "kv-reader", registry)?;
        let framing = schema_framing(&settings, &codec).await?;
        let delete_retention = read_delete_retention(&settings).await?;
        let topology = Arc::new(Topology::default());
        let cluster = join_cluster(&settings, &topology, &codec, registry)?;
        let (election, owner_lease) = elect_owner(&settings, &cluster, &topology, registry).await?;
        let ttl = ttl_sweeper(&settings, &codec, &election, registry)?;
        let replica = Replica::start(
            &settings,
            store.clone(),
            Wiring {
                codec: codec.clone(),
                framing,
                delete_retention,
                topology: topology.clone(),
                bootstrap: bootstrap_config(&settings),
                ttl,
                kafka_stats: KafkaStats::register(registry, Some(&settings.core.topic))?,
            },
        )?;
        let read = Arc::new(ReadCore::new(
            store.clone(),
            replica.progress(),
            cluster,
            settings.read_your_writes_timeout,
            settings.max_batch_get_bytes,
        ));
        let watches = watch_state(&settings, &replica, &store, registry)?;
        let state = web::Data::new(HttpState {
            read: read.clone(),
            topic: settings.core.topic.clone(),
            topology,
            codec,
            snapshots: Arc::new(tokio::sync::Semaphore::new(settings.snapshot_concurrency)),
            snapshot_metrics: SnapshotMetrics::register(registry)?,
            election,
            kafka_cluster: KafkaCluster::learn(settings.core.kafka.clone()),
        });
        // Built once to fail start-up on a bad TLS setup; each worker gets its own.
        peer_client()?;
        ReplicaCollector::register(
            registry,
            read.store.clone(),
            read.progress.clone(),
            replica.import_progress(),
        )?;
        let resp = start_resp_port(&settings, &read, &auth, registry)?;
        let server = serve_http(listener, address, (state, watches), auth, metrics, spans)?;
        tracing::info!("kv-reader listening on http://{address}");
        Ok(Self {
            server,
            port: address.port(),
            resp,
            replica,
            owner_lease,
            exporting,
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
        if let Some(exporting) = self.exporting {
            exporting.finish(SPAN_FLUSH_TIMEOUT).await;
        }
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

impl kv_core::cli::Service for App {
    const ROLE: kv_core::settings::catalogue::Role = kv_core::settings::catalogue::Role::Reader;
    const NAME: &'static str = "kv-reader";
    type Settings = Settings;
    type StartupError = StartupError;

    fn core(settings: &Settings) -> &CoreSettings {
        &settings.core
    }

    async fn build(settings: Settings) -> Result<Self, StartupError> {
        App::build(settings).await
    }

    async fn check(settings: &Settings) -> std::process::ExitCode {
        App::check(settings).await
    }

    async fn run_until_stopped(self) -> std::io::Result<()> {
        App::run_until_stopped(self).await
    }
}

fn record_codec(core: &CoreSettings) -> RecordCodec {
    let codec = RecordCodec::for_topic(&core.topic_encryption);
    if matches!(codec, RecordCodec::Encrypted(_)) {
        tracing::info!("records on the topic are encrypted (KV_API_ENCRYPT_DATA_ON_KAFKA)");
    }
    codec
}

/// Opens (or creates) the replica's store, with the state rules it applies.
async fn open_store(settings: &Settings) -> Result<Arc<Store>, StartupError> {
    let password = match (&settings.storage, &settings.storage_password) {
        (Storage::Disk { .. }, password) => password.as_ref(),
        (Storage::Memory, Some(_)) => {
            tracing::warn!("KV_API_STATE_STORAGE_PASSWORD has no effect on a store kept in memory");
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
    Ok(store)
}

/// Which schema-registry headers the topic's records carry, so the replica strips them; looked
/// up again in the background while any are known ([`refresh_schema_ids`]).
async fn schema_framing(
    settings: &Settings,
    codec: &RecordCodec,
) -> Result<SchemaFraming, RegistryError> {
    let Some(access) = &settings.schema_registry else {
        return Ok(SchemaFraming::default());
    };
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
        tokio::spawn(refresh_schema_ids(registry, framing.clone()));
    }
    Ok(framing.looking_up(&access.url, &settings.core.topic))
}

/// Reads the schema ids of the topic's subjects again every [`REGISTRY_REFRESH`], for as long
/// as the reader runs, so a schema a foreign producer registers later is stripped too.
async fn refresh_schema_ids(registry: Registry, framing: SchemaFraming) {
    let mut ticks = tokio::time::interval(REGISTRY_REFRESH);
    // The first tick is at once, and start-up has just read them.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        registry.refresh(&framing).await;
    }
}

/// The topic's `delete.retention.ms`, which tells a resuming replica whether deletes it missed
/// may be gone from the topic. Start-up waits for the topic's configuration when it must refuse
/// an unsafe topic, or when this reader may sweep, since the sweep relies on
/// `min.compaction.lag.ms`.
async fn read_delete_retention(settings: &Settings) -> Result<DeleteRetention, StartupError> {
    let delete_retention = DeleteRetention::default();
    let (kafka, topic) = (settings.core.kafka.clone(), settings.core.topic.clone());
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
    Ok(delete_retention)
}

/// A sharded reader's view of its peers, polled from now on; `None` unsharded.
fn join_cluster(
    settings: &Settings,
    topology: &Arc<Topology>,
    codec: &RecordCodec,
    registry: &prometheus::Registry,
) -> Result<Option<Arc<Cluster>>, StartupError> {
    let Some(sharding) = &settings.shard else {
        return Ok(None);
    };
    let metrics = ForwardMetrics::register(registry, sharding)?;
    let cluster = Arc::new(Cluster::new(
        sharding,
        topology.clone(),
        codec.clone(),
        metrics,
    ));
    cluster.spawn_health_polls()?;
    tracing::info!(
        shard = %sharding.spec,
        replicas = sharding.spec.replicas,
        "sharded: this reader holds its shard's partitions and forwards other reads"
    );
    Ok(Some(cluster))
}

/// How this process learns which partitions it acts on as owner: none unless it is a
/// candidate; among shards, their health decides; otherwise a lease on the owner topic, held
/// from now until the app stops.
async fn elect_owner(
    settings: &Settings,
    cluster: &Option<Arc<Cluster>>,
    topology: &Arc<Topology>,
    registry: &prometheus::Registry,
) -> Result<(Election, Option<owner::LeaseHolder>), StartupError> {
    Ok(match (settings.owner, cluster) {
        (false, _) => (Election::Off, None),
        (true, Some(cluster)) => (Election::Shards(cluster.clone()), None),
        (true, None) => {
            let (ownership, lease) = owner::hold_lease(
                &settings.core.kafka,
                &settings.owner_topic,
                topology.clone(),
                registry,
            )
            .await?;
            (Election::Leases(ownership), Some(lease))
        }
    })
}

/// The TTL purge and, on the partitions this process owns, the sweep and the computed-state
/// actions; the replica's consumer thread drives it between batches.
fn ttl_sweeper(
    settings: &Settings,
    codec: &RecordCodec,
    election: &Election,
    registry: &prometheus::Registry,
) -> Result<Ttl, StartupError> {
    // Owner candidates keep the owner's bookkeeping for every partition they hold, so any of
    // them can act on one as soon as it owns it (docs/architecture.md, "The acting owner of a
    // partition").
    let swept = if settings.owner {
        SweptPartitions::All
    } else {
        SweptPartitions::None
    };
    Ok(Ttl::new(
        settings,
        codec.clone(),
        swept,
        election.clone(),
        TtlMetrics::register(registry)?,
        ComputedMetrics::register(registry)?,
    )?)
}

/// Where a new replica takes a peer's snapshot from instead of replaying the topic; `None`
/// when no peers are configured.
fn bootstrap_config(settings: &Settings) -> Option<BootstrapConfig> {
    if settings.bootstrap_peers.is_empty() {
        return None;
    }
    let oidc = &settings.core.auth.oidc;
    Some(BootstrapConfig {
        peers: settings.bootstrap_peers.clone(),
        kafka: settings.core.kafka.clone(),
        topic: settings.core.topic.clone(),
        shard: settings.shard.as_ref().map(|s| s.spec),
        client: settings.bootstrap_client.clone(),
        allow_http_token: settings.bootstrap_allow_http_token,
        token_endpoint: oidc.token_endpoint.clone(),
        issuer: oidc.idp_address_for_server.clone(),
        scopes: oidc.admin.clone(),
    })
}

/// What the watch route shares; the watches end when the feed closes at shutdown, so that they
/// do not hold up the server's graceful stop.
fn watch_state(
    settings: &Settings,
    replica: &Replica,
    store: &Arc<Store>,
    registry: &prometheus::Registry,
) -> Result<web::Data<WatchState>, prometheus::Error> {
    let watches = web::Data::new(WatchState {
        feed: replica.feed(),
        store: store.clone(),
        slots: Arc::new(tokio::sync::Semaphore::new(settings.watch.max_watches)),
        max_watches: settings.watch.max_watches,
        callers: Callers::new(settings.watch.max_watches_per_caller),
        metrics: WatchMetrics::register(registry, replica.feed())?,
        sealed_first_listings: Arc::new(tokio::sync::Semaphore::new(MAX_SEALED_LISTINGS)),
        shard: settings.shard.as_ref().map(|s| s.spec),
    });
    end_watches_on_shutdown(replica.feed());
    Ok(watches)
}

/// The client a worker forwards reads to peer shards with.
fn peer_client() -> Result<reqwest::Client, reqwest::Error> {
    crate::cluster::forward::peer_client(Duration::from_secs(1))
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
}

/// The Redis-protocol read port, when `KV_API_RESP_LISTEN` turns it on.
fn start_resp_port(
    settings: &Settings,
    read: &Arc<ReadCore>,
    auth: &web::Data<AuthGate>,
    registry: &prometheus::Registry,
) -> Result<Option<RespServer>, StartupError> {
    let Some(resp) = &settings.resp else {
        return Ok(None);
    };
    let metrics = RespMetrics::register(registry, &resp::metric_labels())?;
    let (read, auth) = (read.clone(), auth.clone().into_inner());
    Ok(Some(RespServer::start(&resp.listen, |port| {
        resp::Shared::new(read, auth, metrics, port, resp.clone())
    })?))
}

/// The HTTP server on the socket bound at start: the shared middlewares around the reader's
/// freshness headers, then the read routes.
fn serve_http(
    listener: TcpListener,
    address: SocketAddr,
    (state, watches): (web::Data<HttpState>, web::Data<WatchState>),
    auth: web::Data<AuthGate>,
    metrics: web::Data<Metrics>,
    spans: SpanExport,
) -> Result<Server, ListenError> {
    let server = HttpServer::new(move || {
        let client = peer_client().unwrap_or_default();
        let batches = (state.read.cluster.clone())
            .map(|cluster| Rc::new(ForwardBatches::new(cluster, client.clone())));
        let client = PeerClient(client, batches);
        with_shared_middleware(
            actix_web::App::new().wrap(from_fn(http::freshness_middleware)),
            &spans,
        )
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
    Ok(server)
}
