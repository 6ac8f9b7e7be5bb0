//! A stand-in for an OpenTelemetry collector: it takes OTLP/HTTP exports in protobuf at
//! `POST /v1/traces`, decodes them with OpenTelemetry's own message types, and keeps the spans
//! for a test to find by trace id.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use prost::Message;

use crate::poll::{eventually, DEADLINE};

/// A span as the collector received it; ids in lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// The exporting service's `service.name`.
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a span without a parent.
    pub parent_span_id: String,
    pub name: String,
    /// String and integer attributes, as text.
    pub attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub struct OtlpReceiver {
    /// What a service's OTEL_EXPORTER_OTLP_ENDPOINT is set to.
    pub endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl OtlpReceiver {
    /// Listens on a free local port until the test process ends.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let answer = match read_export(&mut stream) {
                    Some(export) => {
                        kept.lock().expect("spans").extend(received(export));
                        "200 OK"
                    }
                    None => "400 Bad Request",
                };
                // One export per connection: the exporter opens another for the next one.
                let _ = write!(
                    stream,
                    "HTTP/1.1 {answer}\r\nContent-Type: application/x-protobuf\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Self { endpoint, spans }
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("spans").clone()
    }

    /// The first span of `service` in the trace `trace_id` (32 hex digits), waiting for it.
    pub async fn span_in(&self, service: &str, trace_id: &str) -> ReceivedSpan {
        eventually("a span of the trace at the collector", DEADLINE, || async {
            self.spans()
                .into_iter()
                .find(|span| span.service == service && span.trace_id == trace_id)
        })
        .await
    }
}

/// The export a `POST /v1/traces` carries; `None` for anything else.
fn read_export(stream: &mut std::net::TcpStream) -> Option<ExportTraceServiceRequest> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    if !request_line.starts_with("POST /v1/traces ") {
        return None;
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    ExportTraceServiceRequest::decode(body.as_slice()).ok()
}

fn received(export: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for resource_spans in export.resource_spans {
        let resource = resource_spans.resource.unwrap_or_default();
        let service = text(&resource.attributes, "service.name").unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    attributes: span
                        .attributes
                        .iter()
                        .filter_map(|kv| Some((kv.key.clone(), value_text(kv.value.as_ref())?)))
                        .collect(),
                });
            }
        }
    }
    spans
}

/// The attribute `key` of `attributes` as text, when it is a string or an integer.
fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    value_text(attributes.iter().find(|kv| kv.key == key)?.value.as_ref())
}

fn value_text(value: Option<&AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        Value::StringValue(text) => Some(text.clone()),
        Value::IntValue(number) => Some(number.to_string()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
