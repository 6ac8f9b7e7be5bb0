//! The composition root: `main` and the tests build the writer the same way.

use std::net::{SocketAddr, TcpListener};

use actix_web::dev::Server;
use actix_web::{web, HttpServer};
use kv_core::kafka::{check_topic_config, UnsafeTopic, TOPIC_CONFIG_TIMEOUT};
use kv_core::otlp::{Exporting, OtlpError, SpanExport, SPAN_FLUSH_TIMEOUT};
use kv_core::record::RecordCodec;
use kv_core::settings::CoreSettings;
use kv_core::web::auth::{AuthGate, DiscoveryError};
use kv_core::web::http::{bind, path_config, query_config, JsonLimit, ListenError};
use kv_core::web::metrics::Metrics;
use kv_core::web::routing::{register, route_not_found};
use kv_core::web::stack::with_shared_middleware;

use crate::conditional::Readers;
use crate::metrics::{ConditionalMetrics, ProducerMetrics};
use crate::producer::KvProducer;
use crate::routes;
use crate::settings::Settings;
use crate::state::WriterState;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot create the Kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("OpenID Connect: {0}")]
    Auth(#[from] DiscoveryError),
    #[error("cannot register the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    UnsafeTopic(#[from] UnsafeTopic),
    #[error("cannot build the HTTP client that asks readers for outcomes: {0}")]
    ReaderClient(#[from] reqwest::Error),
    #[error(transparent)]
    Otlp(#[from] OtlpError),
}

pub struct App {
    server: Server,
    port: u16,
    producer: KvProducer,
    settings: Settings,
    /// The export of request spans, when OTEL_EXPORTER_OTLP_ENDPOINT turned it on.
    exporting: Option<Exporting>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// `check-config`: whether each reader of KV_API_READERS answers `/healthz/live`. Only a
/// warning when one does not: readers may start after the writer, and conditional writes ask
/// the next one.
async fn check_readers(settings: &Settings, report: &mut kv_core::cli::Report) {
    if settings.readers.is_empty() {
        report.skip(
            "readers",
            "KV_API_READERS is not set: conditional writes answer 501",
        );
        return;
    }
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(2))
        .build()
    {
        Ok(client) => client,
        Err(error) => return report.fail("readers", error),
    };
    for base in &settings.readers {
        match client.get(format!("{base}/healthz/live")).send().await {
            Ok(response) if response.status().is_success() => {
                report.ok("readers", format!("{base} is live"));
            }
            Ok(response) => report.warn(
                "readers",
                format!("{base}/healthz/live answered {}", response.status()),
            ),
            Err(error) => report.warn("readers", format!("{base} is not reachable: {error}")),
        }
    }
}

impl App {
    /// Start-up as a list of steps, each named for what it sets up. A step that fails stops
    /// start-up with its error before anything is served.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        settings.core.log_notices();
        let auth = web::Data::new(AuthGate::from_settings(&settings.core.auth, "kv-writer").await?);
        check_topic(&settings.core).await?;
        let codec = record_codec(&settings.core);
        let metrics = web::Data::new(Metrics::new("kv-writer"));
        auth.register_metrics(metrics.registry())?;
        let (spans, exporting) =
            SpanExport::start(settings.core.otlp.as_ref(), "kv-writer", metrics.registry())?;
        let producer = KvProducer::new(
            &settings,
            codec,
            ProducerMetrics::register(metrics.registry())?,
        )?;
        let readers = conditional_readers(&settings, metrics.registry())?;
        let (listener, address) = bind(&settings.core.listen)?;
        let state = web::Data::new(WriterState::new(&settings, producer.clone(), readers));
        let server = serve_http(&settings, (listener, address), state, auth, metrics, spans)?;
        tracing::info!("kv-writer listening on http://{address}");
        Ok(Self {
            server,
            port: address.port(),
            producer,
            settings,
            exporting,
        })
    }

    /// `check-config`: the settings were read; reach what start-up needs and say what was found.
    pub async fn check(settings: &Settings) -> std::process::ExitCode {
        let mut report = kv_core::cli::Report::default();
        report.ok(
            "settings",
            format!(
                "topic {}, listen {}",
                settings.core.topic, settings.core.listen
            ),
        );
        kv_core::cli::check_shared(&settings.core, "kv-writer", &mut report).await;
        check_readers(settings, &mut report).await;
        report.exit_code()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM/SIGINT: stops accepting, lets in-flight writes finish, then flushes.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await?;
        if let Some(exporting) = self.exporting {
            exporting.finish(SPAN_FLUSH_TIMEOUT).await;
        }
        let producer = self.producer;
        let timeout = self.settings.shutdown_timeout;
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        match flushed {
            Ok(Ok(())) => tracing::info!("producer flushed; kv-writer stopped"),
            Ok(Err(error)) => tracing::error!(%error, "producer flush did not complete"),
            Err(error) => tracing::error!(%error, "producer flush task failed"),
        }
        Ok(())
    }
}

impl kv_core::cli::Service for App {
    const ROLE: kv_core::settings::catalogue::Role = kv_core::settings::catalogue::Role::Writer;
    const NAME: &'static str = "kv-writer";
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

/// Refuses a topic whose configuration would lose keys when `KV_API_REQUIRE_COMPACTED_TOPIC`
/// asks for it. Otherwise it is only a warning to give: a writer whose broker is down still
/// starts at once and answers 503 until it is back.
async fn check_topic(core: &CoreSettings) -> Result<(), UnsafeTopic> {
    if core.require_compacted_topic {
        check_topic_config(&core.kafka, &core.topic, true, TOPIC_CONFIG_TIMEOUT).await?;
    } else {
        let (kafka, topic) = (core.kafka.clone(), core.topic.clone());
        tokio::spawn(async move {
            let _ = check_topic_config(&kafka, &topic, false, TOPIC_CONFIG_TIMEOUT).await;
        });
    }
    Ok(())
}

fn record_codec(core: &CoreSettings) -> RecordCodec {
    let codec = RecordCodec::for_topic(&core.topic_encryption);
    if matches!(codec, RecordCodec::Encrypted(_)) {
        tracing::info!("records on the topic are encrypted (KV_API_ENCRYPT_DATA_ON_KAFKA)");
    }
    codec
}

/// The readers conditional writes ask for their outcome; `None` when KV_API_READERS is not
/// set, and conditional writes answer 501. Their metrics are registered either way, so
/// `/metrics` names the same series whether or not readers are set.
fn conditional_readers(
    settings: &Settings,
    registry: &prometheus::Registry,
) -> Result<Option<Readers>, StartupError> {
    let metrics = ConditionalMetrics::register(registry)?;
    if settings.readers.is_empty() {
        return Ok(None);
    }
    tracing::info!(
        readers = %settings.readers.join(","),
        "conditional writes ask these readers for their outcome (KV_API_READERS)"
    );
    Ok(Some(Readers::new(
        settings.readers.clone(),
        settings.conditional_timeout,
        metrics,
    )?))
}

/// The HTTP server on the socket bound at start: the shared middlewares, then the write
/// routes. Its graceful stop waits up to KV_API_SHUTDOWN_TIMEOUT_MS for writes in flight.
fn serve_http(
    settings: &Settings,
    (listener, address): (TcpListener, SocketAddr),
    state: web::Data<WriterState>,
    auth: web::Data<AuthGate>,
    metrics: web::Data<Metrics>,
    spans: SpanExport,
) -> Result<Server, ListenError> {
    let json_limit = settings.json_body_limit();
    let batch_limit = settings.max_batch_bytes;
    let server = HttpServer::new(move || {
        with_shared_middleware(actix_web::App::new(), &spans)
            .app_data(state.clone())
            .app_data(auth.clone())
            .app_data(metrics.clone())
            .app_data(JsonLimit(json_limit))
            .app_data(path_config())
            .app_data(query_config())
            .configure(|config| register(config, routes::endpoints(batch_limit)))
            .default_service(web::to(route_not_found))
    })
    .listen(listener)
    .map_err(|source| ListenError {
        address: address.to_string(),
        source,
    })?
    .shutdown_timeout(settings.shutdown_timeout.as_secs().max(1))
    .run();
    Ok(server)
}
