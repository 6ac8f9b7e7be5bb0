//! Export of the services' request spans over OTLP/HTTP in protobuf, off unless
//! OTEL_EXPORTER_OTLP_ENDPOINT is set ([`crate::settings::OtlpSettings`]).
//!
//! The span exported for a request is its [`crate::web::http::RequestTrace`]: the same trace and
//! span id the answer's `traceparent` names and a write carries into its record, so the span a
//! collector shows is the one a caller, a reader's `X-KV-Write-Traceparent` and a watch event
//! point at. The span's parent is the caller's `traceparent`, so it joins the caller's trace.
//!
//! The request middleware hands each finished span to [`SpanExport::record`], which never
//! waits: the spans go to a bounded queue that one task empties in batches. When the collector
//! is slow or down the queue fills, and spans that find it full are dropped and counted
//! (`kv_otlp_spans_dropped_total`); so are those of an export that fails. Only sampled traces
//! are exported (the `traceparent` flag): a caller's decision is kept, and a trace a service
//! starts while exporting is sampled.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::sync::{mpsc, oneshot};

use crate::settings::OtlpSettings;
use crate::trace_context::TraceParent;

/// The longest a stopping service waits for its last spans' export.
pub const SPAN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why spans were dropped, as the metric labels them.
const QUEUE_FULL: &str = "queue_full";
const EXPORT_FAILED: &str = "export_failed";

/// Where a request's spans go: nowhere ([`SpanExport::off`]), or the export queue. Cheap to
/// clone; every HTTP worker holds one.
#[derive(Debug, Clone, Default)]
pub struct SpanExport {
    queue: Option<Arc<Queue>>,
}

#[derive(Debug)]
struct Queue {
    spans: mpsc::Sender<SpanData>,
    dropped_full: IntCounter,
    scope: InstrumentationScope,
}

/// A request's span as the middleware saw it.
#[derive(Debug, Clone)]
pub struct RequestSpan<'a> {
    /// The request's own span.
    pub trace: TraceParent,
    /// The caller's span, when its `traceparent` was valid.
    pub caller: Option<TraceParent>,
    pub method: &'a str,
    /// The route pattern (`/v1/kv/{key}`), never the path: paths hold keys.
    pub route: &'a str,
    pub status: u16,
    pub started: SystemTime,
    /// When the answer's head was ready; a stream's body may go on after it.
    pub ended: SystemTime,
}

/// The export task, to be told to send what is queued when the service stops. Dropping it
/// stops the export too.
#[derive(Debug)]
pub struct Exporting {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("cannot register the span export's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot build the OTLP exporter (OTEL_EXPORTER_OTLP_ENDPOINT): {0}")]
    Exporter(String),
}

/// The export's counters, registered whether or not export is on, so `/metrics` names the same
/// series either way.
#[derive(Debug, Clone)]
struct ExportMetrics {
    exported: IntCounter,
    dropped: IntCounterVec,
}

impl ExportMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let exported = IntCounter::new(
            "kv_otlp_spans_exported_total",
            "Request spans the OTLP collector accepted",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "kv_otlp_spans_dropped_total",
                "Request spans not exported: the queue was full, or their export failed",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(exported.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        for reason in [QUEUE_FULL, EXPORT_FAILED] {
            dropped.with_label_values(&[reason]);
        }
        Ok(Self { exported, dropped })
    }
}

impl SpanExport {
    /// Records nothing.
    pub fn off() -> Self {
        Self::default()
    }

    /// Registers the metrics and, with `settings`, starts the export task on the current
    /// runtime. `service` is the spans' `service.name` unless OTEL_SERVICE_NAME says another.
    pub fn start(
        settings: Option<&OtlpSettings>,
        service: &'static str,
        registry: &Registry,
    ) -> Result<(Self, Option<Exporting>), OtlpError> {
        let metrics = ExportMetrics::register(registry)?;
        let Some(settings) = settings else {
            return Ok((Self::off(), None));
        };
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OtlpError::Exporter(e.to_string()))?;
        let headers: HashMap<String, String> = settings.headers.expose().iter().cloned().collect();
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(settings.traces_url.as_str())
            .with_timeout(settings.timeout)
            .with_headers(headers)
            .build()
            .map_err(|e| OtlpError::Exporter(e.to_string()))?;
        let name = settings.service_name.clone().unwrap_or(service.to_owned());
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(name)
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        let (spans, queued) = mpsc::channel(settings.max_queue);
        let (stop, stopped) = oneshot::channel();
        let batches = Batches {
            max: settings.max_batch,
            delay: settings.schedule_delay,
        };
        let task = tokio::spawn(export(exporter, queued, stopped, batches, metrics.clone()));
        tracing::info!(
            url = %without_credentials(&settings.traces_url),
            "exporting request spans over OTLP/HTTP"
        );
        let queue = Queue {
            spans,
            dropped_full: metrics.dropped.with_label_values(&[QUEUE_FULL]),
            scope: InstrumentationScope::builder(service)
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        };
        Ok((
            Self {
                queue: Some(Arc::new(queue)),
            },
            Some(Exporting { stop, task }),
        ))
    }

    pub fn is_on(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues `span` for export if its trace is sampled; drops and counts it if the queue is
    /// full. Never waits.
    pub fn record(&self, span: &RequestSpan<'_>) {
        let Some(queue) = &self.queue else {
            return;
        };
        if !span.trace.is_sampled() {
            return;
        }
        if queue.spans.try_send(span_data(span, &queue.scope)).is_err() {
            queue.dropped_full.inc();
        }
    }
}

impl Exporting {
    /// Exports what is queued and ends the task, waiting at most `within`: spans recorded after
    /// this are dropped.
    pub async fn finish(self, within: Duration) {
        let _ = self.stop.send(());
        if tokio::time::timeout(within, self.task).await.is_err() {
            tracing::warn!("the last request spans were not exported in time");
        }
    }
}

/// The collector's URL as a log line may show it: a user and password in it are left out.
fn without_credentials(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Err(_) => String::new(),
    }
}

fn span_data(span: &RequestSpan<'_>, scope: &InstrumentationScope) -> SpanData {
    let flags = TraceFlags::new(span.trace.flags);
    let attributes = vec![
        KeyValue::new("http.request.method", span.method.to_owned()),
        KeyValue::new("http.route", span.route.to_owned()),
        KeyValue::new("http.response.status_code", i64::from(span.status)),
    ];
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(span.trace.trace_id),
            SpanId::from_bytes(span.trace.parent_id),
            flags,
            false,
            TraceState::default(),
        ),
        parent_span_id: span.caller.map_or(SpanId::INVALID, |caller| {
            SpanId::from_bytes(caller.parent_id)
        }),
        parent_span_is_remote: span.caller.is_some(),
        span_kind: SpanKind::Server,
        name: Cow::Owned(format!("{} {}", span.method, span.route)),
        start_time: span.started,
        end_time: span.ended,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        // A server span is an error only for what the server did wrong.
        status: if span.status >= 500 {
            Status::error("")
        } else {
            Status::Unset
        },
        instrumentation_scope: scope.clone(),
    }
}

#[derive(Debug, Clone, Copy)]
struct Batches {
    max: usize,
    delay: Duration,
}

/// The export task: a batch goes when it is full or its first span waited `delay`; a failed
/// export's spans are dropped, not retried, so a collector that is down costs one timeout per
/// batch and no memory. Told to stop, it sends what is queued and ends.
async fn export(
    exporter: opentelemetry_otlp::SpanExporter,
    mut queued: mpsc::Receiver<SpanData>,
    stop: oneshot::Receiver<()>,
    batches: Batches,
    metrics: ExportMetrics,
) {
    let mut failing = false;
    let mut batch = Vec::with_capacity(batches.max);
    // Fused: once told, it stays told and is never polled to completion again.
    let mut stop = futures::FutureExt::fuse(stop);
    loop {
        let mut stopping = tokio::select! {
            _ = &mut stop => true,
            more = queued.recv_many(&mut batch, batches.max) => more == 0,
        };
        if !stopping {
            let deadline = tokio::time::sleep(batches.delay);
            tokio::pin!(deadline);
            while batch.len() < batches.max {
                let room = batches.max - batch.len();
                tokio::select! {
                    _ = &mut deadline => break,
                    _ = &mut stop => stopping = true,
                    more = queued.recv_many(&mut batch, room) => stopping = more == 0,
                }
                if stopping {
                    break;
                }
            }
        }
        if stopping {
            while let Ok(span) = queued.try_recv() {
                batch.push(span);
            }
        }
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(batches.max));
            let count = batch.len() as u64;
            match exporter.export(std::mem::replace(&mut batch, rest)).await {
                Ok(()) => {
                    metrics.exported.inc_by(count);
                    if std::mem::take(&mut failing) {
                        tracing::info!("the OTLP collector accepts spans again");
                    }
                }
                Err(error) => {
                    metrics
                        .dropped
                        .with_label_values(&[EXPORT_FAILED])
                        .inc_by(count);
                    // Once per outage, not once per batch.
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%error, "exporting request spans failed; dropping them until the collector answers");
                    }
                }
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn request_span(trace: TraceParent, caller: Option<TraceParent>) -> RequestSpan<'static> {
        RequestSpan {
            trace,
            caller,
            method: "GET",
            route: "/v1/kv/{key}",
            status: 503,
            started: SystemTime::UNIX_EPOCH,
            ended: SystemTime::UNIX_EPOCH + Duration::from_millis(3),
        }
    }

    #[test]
    fn the_collectors_url_is_logged_without_credentials() {
        assert_eq!(
            without_credentials("https://user:secret@otel.example:4318/v1/traces"),
            "https://otel.example:4318/v1/traces"
        );
    }

    #[test]
    fn a_request_span_is_exported_with_the_ids_it_answered_and_its_callers_span_as_parent() {
        let caller = TraceParent::parse(CALLER.as_bytes()).expect("valid");
        let trace = caller.child();
        let scope = InstrumentationScope::builder("kv-reader").build();
        let data = span_data(&request_span(trace, Some(caller)), &scope);
        assert_eq!(
            data.span_context.trace_id().to_bytes(),
            caller.trace_id,
            "the caller's trace"
        );
        assert_eq!(data.span_context.span_id().to_bytes(), trace.parent_id);
        assert!(data.span_context.is_sampled());
        assert_eq!(data.parent_span_id.to_bytes(), caller.parent_id);
        assert!(data.parent_span_is_remote);
        assert_eq!(data.span_kind, SpanKind::Server);
        assert_eq!(data.name, "GET /v1/kv/{key}");
        assert!(matches!(data.status, Status::Error { .. }), "a 503");
        let root = span_data(&request_span(TraceParent::start().sampled(), None), &scope);
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert!(!root.parent_span_is_remote);
    }

    #[tokio::test]
    async fn spans_that_find_the_queue_full_are_dropped_and_counted_and_recording_never_waits() {
        // A collector that takes connections into its backlog and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let settings = OtlpSettings {
            traces_url: format!("http://{}/v1/traces", silent.local_addr().expect("address")),
            headers: Secret::new(Vec::new()),
            service_name: None,
            timeout: Duration::from_secs(60),
            max_queue: 2,
            max_batch: 1,
            schedule_delay: Duration::from_millis(1),
        };
        let registry = Registry::new();
        let (spans, exporting) =
            SpanExport::start(Some(&settings), "kv-writer", &registry).expect("start");
        assert!(spans.is_on() && exporting.is_some());
        let started = std::time::Instant::now();
        spans.record(&request_span(TraceParent::start(), None));
        for _ in 0..10 {
            spans.record(&request_span(TraceParent::start().sampled(), None));
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        let dropped = registry
            .gather()
            .into_iter()
            .filter(|family| family.name() == "kv_otlp_spans_dropped_total")
            .flat_map(|family| family.get_metric().to_vec())
            .find(|metric| {
                metric
                    .get_label()
                    .iter()
                    .any(|label| label.name() == "reason" && label.value() == QUEUE_FULL)
            })
            .map(|metric| metric.get_counter().get_value());
        // Nothing ran the export task yet: the queue took two sampled spans, the unsampled one
        // was never queued.
        assert_eq!(dropped, Some(8.0));
        drop(exporting);
    }
}
