//! HTTP pieces both APIs share: correlation ids and the extractor configs that turn every
//! malformed request into the JSON error contract instead of actix's plain-text defaults.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::{PathError, PayloadError, QueryPayloadError};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use tracing::field::{display, FieldSet, Value};
use tracing::span::Record;
use tracing::Instrument;

use crate::otlp::{RequestSpan, SpanExport};
use crate::telemetry::{self, DeferredRecord};
use crate::trace_context::{TraceParent, TRACEPARENT};
use crate::web::error::{ApiError, ErrorCode};
use crate::web::routing::RoutePattern;

/// Binds the listen address; port 0 picks a free port, which the returned address tells.
pub fn bind(listen: &str) -> Result<(std::net::TcpListener, std::net::SocketAddr), ListenError> {
    let error = |source| ListenError {
        address: listen.to_owned(),
        source,
    };
    let listener = std::net::TcpListener::bind(listen).map_err(error)?;
    let address = listener.local_addr().map_err(error)?;
    Ok((listener, address))
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}: {source}")]
pub struct ListenError {
    pub address: String,
    pub source: std::io::Error,
}

pub const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
/// The header carrying a consistency token: the writer's answer, a reader's request.
pub const CONSISTENCY_TOKEN: HeaderName =
    HeaderName::from_static(kv_wire::headers::CONSISTENCY_TOKEN);
/// A read answer's header for a key that expires: the record's [`crate::record::EXPIRES_AT_HEADER`],
/// milliseconds since the Unix epoch.
pub const EXPIRES_AT: HeaderName = HeaderName::from_static("x-kv-expires-at");
/// A read answer's header naming the span of the write that stored the value (its record's
/// `traceparent`); the answer's own `traceparent` is the read's.
pub const WRITE_TRACEPARENT: HeaderName = HeaderName::from_static("x-kv-write-traceparent");

const MAX_CORRELATION_ID_LEN: usize = 128;

/// The request's correlation id: taken from `X-Correlation-Id` or generated, stored in the
/// request's extensions by [`correlation_id_middleware`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationId(pub String);

impl CorrelationId {
    pub fn of(request: &HttpRequest) -> CorrelationId {
        request
            .extensions()
            .get::<CorrelationId>()
            .cloned()
            .unwrap_or_else(|| CorrelationId(uuid::Uuid::new_v4().to_string()))
    }
}

fn correlation_id_from(request: &ServiceRequest) -> Result<CorrelationId, ApiError> {
    let Some(raw) = request.headers().get(&CORRELATION_ID) else {
        return Ok(CorrelationId(uuid::Uuid::new_v4().to_string()));
    };
    let valid = raw
        .to_str()
        .ok()
        .filter(|id| !id.is_empty() && id.len() <= MAX_CORRELATION_ID_LEN)
        .filter(|id| id.bytes().all(|b| b.is_ascii_graphic()));
    match valid {
        Some(id) => Ok(CorrelationId(id.to_owned())),
        None => Err(ApiError::invalid_request(format!(
            "header X-Correlation-Id must be 1 to {MAX_CORRELATION_ID_LEN} visible ASCII characters"
        ))),
    }
}

/// The request's span in its W3C trace: the child of its `traceparent` header, or a new trace
/// without a valid one; stored in the request's extensions by [`correlation_id_middleware`] and
/// answered as `traceparent` unless the handler sets that header itself. A malformed header is
/// ignored, as the W3C recommendation says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTrace(pub TraceParent);

impl RequestTrace {
    pub fn of(request: &HttpRequest) -> TraceParent {
        request
            .extensions()
            .get::<RequestTrace>()
            .map_or_else(TraceParent::start, |trace| trace.0)
    }
}

/// The `traceparent` header name.
pub const TRACEPARENT_HEADER: HeaderName = HeaderName::from_static(TRACEPARENT);

/// The target of the access log: one line per request at info (`RUST_LOG=info,kv_access=off`
/// turns it off).
pub const ACCESS_LOG_TARGET: &str = "kv_access";

/// Gives every request a correlation id and echoes it on every response, errors included, and
/// its span in a W3C trace ([`RequestTrace`], answered as `traceparent`). The rest of the request
/// runs in a `request` span carrying the id and the trace id, so every log line of a request can
/// be found by either; the access log line (method, route pattern, status, duration and the id,
/// never the path, which holds the key) is written when the answer's head is ready.
pub async fn correlation_id_middleware(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = match correlation_id_from(&request) {
        Ok(id) => id,
        Err(error) => {
            let response = error.error_response().map_into_right_body();
            return Ok(request.into_response(response));
        }
    };
    let header = HeaderValue::from_str(&id.0).ok();
    let spans = request
        .app_data::<SpanExport>()
        .filter(|spans| spans.is_on())
        .cloned();
    let caller = request
        .headers()
        .get(&TRACEPARENT_HEADER)
        .and_then(|value| TraceParent::parse(value.as_bytes()));
    let trace = match caller {
        Some(caller) => caller.child(),
        // Exporting, a trace started here is recorded, or no span of it would ever be.
        None if spans.is_some() => TraceParent::start().sampled(),
        None => TraceParent::start(),
    };
    // At error level so that the span, and with it the correlation id, is kept on every line
    // that passes the filter, even with RUST_LOG=warn. The route *pattern*, never the raw path:
    // paths hold keys, which must not reach the logs. The fields are formatted only when a line
    // is written in the span: most requests write none.
    let route = RoutePattern::of(request.request());
    let span_route = spans.as_ref().map(|_| route.clone());
    let span = tracing::error_span!(
        "request",
        correlation_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        method = tracing::field::Empty,
        route = tracing::field::Empty,
    );
    telemetry::defer(
        &span,
        RequestFields {
            correlation_id: id.clone(),
            trace_id: trace.trace_id,
            method: request.method().clone(),
            route: route.clone(),
        },
    );
    {
        let mut extensions = request.extensions_mut();
        extensions.insert(id);
        extensions.insert(RequestTrace(trace));
        // Matching a path against the route table runs actix's pattern regexes; the metrics
        // middleware reuses this match instead of making its own.
        extensions.insert(route);
    }
    let started = std::time::Instant::now();
    let started_at = std::time::SystemTime::now();
    let method = crate::web::metrics::method_label(request.method());
    let mut response = next
        .call(request)
        .instrument(span.clone())
        .await?
        .map_into_left_body();
    span.in_scope(|| {
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            status = response.status().as_u16(),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "answered"
        );
    });
    if let (Some(spans), Some(route)) = (spans, span_route) {
        spans.record(&RequestSpan {
            trace,
            caller,
            method,
            route: route.as_str(),
            status: response.status().as_u16(),
            started: started_at,
            ended: std::time::SystemTime::now(),
        });
    }
    // A handler may answer with the correlation id of what it serves (a reader returns the
    // stored record's); otherwise the request's id is echoed.
    if let Some(header) = header {
        if !response.headers().contains_key(&CORRELATION_ID) {
            response.headers_mut().insert(CORRELATION_ID, header);
        }
    }
    if !response.headers().contains_key(&TRACEPARENT_HEADER) {
        if let Ok(value) = HeaderValue::from_str(&trace.to_string()) {
            response.headers_mut().insert(TRACEPARENT_HEADER, value);
        }
    }
    Ok(response)
}

/// The fields of a request's span, recorded when a line is written in it.
struct RequestFields {
    correlation_id: CorrelationId,
    trace_id: [u8; 16],
    method: actix_web::http::Method,
    route: RoutePattern,
}

impl DeferredRecord for RequestFields {
    fn record(&self, fields: &FieldSet, sink: &mut dyn FnMut(&Record<'_>)) {
        let (Some(id), Some(trace), Some(method), Some(route)) = (
            fields.field("correlation_id"),
            fields.field("trace_id"),
            fields.field("method"),
            fields.field("route"),
        ) else {
            return;
        };
        let trace_id = hex::encode(self.trace_id);
        let values = [
            (&id, Some(&display(&self.correlation_id.0) as &dyn Value)),
            (&trace, Some(&trace_id.as_str() as &dyn Value)),
            (&method, Some(&display(&self.method) as &dyn Value)),
            (&route, Some(&self.route.as_str() as &dyn Value)),
        ];
        sink(&Record::new(&fields.value_set(&values)));
    }
}

/// Closes the connection after answering a request whose body was not read to its end, instead
/// of letting actix drain the rest of it to keep the connection alive.
///
/// actix reads and discards the unread rest of a chunked body after the answer, however long it
/// is, so a client refused with `413` (or `401`) could go on streaming into the server for as
/// long as it likes. A body that is not read to its end is held until the answer is written,
/// which makes actix answer with `Connection: close` and close instead of draining (after its
/// lingering close: about a second, `client_disconnect_timeout`, of discarding what still
/// arrives so that the client reads the answer). A body with a `Content-Length` is already
/// handled so by actix; this adds chunked ones.
pub async fn close_when_body_unread(
    mut request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody, HoldBody>>, actix_web::Error> {
    let payload = request.take_payload();
    if matches!(payload, Payload::None) {
        request.set_payload(payload);
        return Ok(next.call(request).await?.map_into_left_body());
    }
    let body = Rc::new(RefCell::new(TrackedBody {
        payload,
        finished: false,
    }));
    request.set_payload(Payload::Stream {
        payload: Box::pin(SharedBody(body.clone())),
    });
    let response = next.call(request).await?;
    if body.borrow().finished {
        return Ok(response.map_into_left_body());
    }
    Ok(response.map_body(|_, answer| {
        EitherBody::right(HoldBody {
            answer: answer.boxed(),
            _unread: body,
        })
    }))
}

/// A request body and whether it was read to its end (or failed).
struct TrackedBody {
    payload: Payload,
    finished: bool,
}

/// What the handler reads in place of the request body: the same bytes, noting the end.
struct SharedBody(Rc<RefCell<TrackedBody>>);

impl futures::Stream for SharedBody {
    type Item = Result<web::Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut body = self.0.borrow_mut();
        let polled = Pin::new(&mut body.payload).poll_next(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            body.finished = true;
        }
        polled
    }
}

/// An answer that holds the unread request body until it is written (see
/// [`close_when_body_unread`]).
pub struct HoldBody {
    answer: BoxBody,
    _unread: Rc<RefCell<TrackedBody>>,
}

impl std::fmt::Debug for HoldBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoldBody").finish_non_exhaustive()
    }
}

impl MessageBody for HoldBody {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.answer.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<web::Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().answer).poll_next(cx)
    }
}

/// The most bytes a [`JsonBody`] may take on the routes this is registered for (app or resource
/// `app_data`); [`DEFAULT_JSON_LIMIT`] where none is.
#[derive(Debug, Clone, Copy)]
pub struct JsonLimit(pub usize);

/// actix's own default for JSON bodies.
pub const DEFAULT_JSON_LIMIT: usize = 2 * 1024 * 1024;

/// A JSON request body, read only when the handler calls [`JsonBody::read`]: after every other
/// extractor, the auth check above all, has passed. actix's `web::Json` reads the body beside
/// the other extractors, so a request with a bad token and a malformed body could get `400`
/// instead of `401` while the token check waits (on a key refresh), and an unauthenticated
/// client could make the server buffer bodies up to the limit.
pub struct JsonBody<T> {
    payload: Payload,
    request: HttpRequest,
    _into: std::marker::PhantomData<T>,
}

impl<T> std::fmt::Debug for JsonBody<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonBody").finish_non_exhaustive()
    }
}

impl<T> actix_web::FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        std::future::ready(Ok(Self {
            payload: payload.take(),
            request: request.clone(),
            _into: std::marker::PhantomData,
        }))
    }
}

impl<T> JsonBody<T> {
    /// The most bytes this body may have: the route's [`JsonLimit`].
    pub fn limit(&self) -> usize {
        self.request
            .app_data::<JsonLimit>()
            .map_or(DEFAULT_JSON_LIMIT, |limit| limit.0)
    }

    /// Reads the body's bytes with [`JsonBody::read`]'s checks, for a handler that parses them
    /// itself (see [`parse_json`]): `415` unless it is declared JSON, `413` past the route's
    /// [`JsonLimit`] (refused without buffering it whole, see [`read_body`]).
    pub async fn read_bytes(self) -> Result<web::BytesMut, ApiError> {
        let declared_json = matches!(
            self.request.mime_type(),
            Ok(Some(mime)) if mime.subtype() == actix_web::mime::JSON || mime.suffix() == Some(actix_web::mime::JSON)
        );
        if !declared_json {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "the body must be JSON with Content-Type: application/json",
            ));
        }
        let limit = self.limit();
        read_body(self.payload, &self.request, limit).await
    }
}

impl<T: serde::de::DeserializeOwned> JsonBody<T> {
    /// Reads and parses the body: [`JsonBody::read_bytes`], then `400` when it is not the JSON
    /// expected.
    pub async fn read(self) -> Result<T, ApiError> {
        parse_json(&self.read_bytes().await?)
    }
}

/// Parses a JSON body, with the contract's `400` when it is not the JSON expected.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("the JSON body is invalid: {e}")))
}

/// Maps the raw-body error actix raises (including its overflow) to the contract.
pub fn payload_error(error: &PayloadError) -> ApiError {
    match error {
        PayloadError::Overflow => ApiError::new(
            ErrorCode::PayloadTooLarge,
            "the body is larger than allowed",
        ),
        other => ApiError::invalid_request(format!("the body could not be read: {other}")),
    }
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|error: PathError, _| {
        ApiError::invalid_request(format!("invalid path: {error}")).into()
    })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|error: QueryPayloadError, _| query_error(&error).into())
}

/// A query string that does not parse; handlers that parse their query themselves (after the
/// token check) answer with this too.
pub fn query_error(error: &QueryPayloadError) -> ApiError {
    ApiError::invalid_request(format!("invalid query string: {error}"))
}

/// Parses the request's query string as `T`, with the contract's error.
pub fn parse_query<T: serde::de::DeserializeOwned>(request: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(request.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| query_error(&e))
}

/// `/healthz`: the process started and serves HTTP.
pub async fn started() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "started"}))
}

/// The key in a native route such as `/v1/kv/{key}`: everything after `prefix` in the raw path,
/// percent-decoded to bytes, so keys may hold `/`, unicode or arbitrary binary.
pub fn key_from_path(request: &HttpRequest, prefix: &str) -> Result<Vec<u8>, ApiError> {
    let raw = request
        .uri()
        .path()
        .strip_prefix(prefix)
        .unwrap_or_default();
    let key: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    if key.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidKey,
            "the key in the path is empty",
        ));
    }
    Ok(key)
}

/// Reads a raw body of at most `limit` bytes. A declared Content-Length over the limit is refused
/// before reading anything, and a body that grows past it is refused as soon as it does, so an
/// oversized body is never buffered whole.
pub async fn read_body(
    mut payload: impl futures::Stream<Item = Result<web::Bytes, PayloadError>> + Unpin,
    request: &HttpRequest,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    use futures::StreamExt;

    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| payload_error(&e))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use actix_web::middleware::from_fn;
    use actix_web::{test, web, App, HttpResponse};

    use super::*;
    use crate::telemetry::tests::Captured;
    use crate::web::routing::route_not_found;

    #[actix_web::test]
    async fn the_expiry_answer_header_is_the_records_expiry_header() {
        assert!(EXPIRES_AT
            .as_str()
            .eq_ignore_ascii_case(crate::record::EXPIRES_AT_HEADER));
    }

    async fn echo_correlation(request: HttpRequest) -> HttpResponse {
        HttpResponse::Ok().body(CorrelationId::of(&request).0)
    }

    async fn body_length(
        request: HttpRequest,
        body: web::Payload,
    ) -> Result<HttpResponse, ApiError> {
        let body = read_body(body, &request, 8).await?;
        Ok(HttpResponse::Ok().body(body.len().to_string()))
    }

    macro_rules! app {
        () => {
            test::init_service(
                App::new()
                    .wrap(from_fn(correlation_id_middleware))
                    .route("/echo", web::get().to(echo_correlation))
                    .route("/body", web::post().to(body_length))
                    .route(
                        "/kv/{key:.*}",
                        web::get().to(|r: HttpRequest| async move {
                            key_from_path(&r, "/kv/").map(|k| HttpResponse::Ok().body(k))
                        }),
                    )
                    .default_service(web::to(route_not_found)),
            )
            .await
        };
    }

    #[actix_web::test]
    async fn a_given_correlation_id_is_used_and_echoed() {
        let app = app!();
        let response = test::call_service(
            &app,
            test::TestRequest::get()
                .uri("/echo")
                .insert_header(("X-Correlation-Id", "abc-123"))
                .to_request(),
        )
        .await;
        assert_eq!(
            response
                .headers()
                .get(&CORRELATION_ID)
                .expect("correlation id"),
            "abc-123"
        );
        assert_eq!(test::read_body(response).await, "abc-123");
    }

    /// The services' JSON log lines at `filter`, captured on this thread until the guard drops.
    /// The test runtime is single-threaded, so a thread-local subscriber sees the handler.
    fn json_lines(filter: &str) -> (Captured, tracing::subscriber::DefaultGuard) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = crate::telemetry::subscriber(
            crate::settings::LogFormat::Json,
            tracing_subscriber::EnvFilter::new(filter),
            false,
            move || writer.clone(),
        );
        (captured, tracing::subscriber::set_default(subscriber))
    }

    #[actix_web::test]
    async fn log_lines_of_a_request_carry_its_correlation_id_method_and_route_but_not_its_key() {
        // A production-like filter: warnings only.
        let (captured, _subscriber) = json_lines("warn");
        let app = test::init_service(App::new().wrap(from_fn(correlation_id_middleware)).route(
            "/kv/{key:.*}",
            web::get().to(|| async {
                tracing::warn!("inside the handler");
                HttpResponse::Ok().finish()
            }),
        ))
        .await;
        test::call_service(
            &app,
            test::TestRequest::get()
                .uri("/kv/secret-key")
                .insert_header(("X-Correlation-Id", "span-test-1"))
                .to_request(),
        )
        .await;

        let logs = captured.text();
        let line = logs
            .lines()
            .find(|line| line.contains("inside the handler"))
            .unwrap_or_else(|| panic!("the handler's line is missing: {logs}"));
        let line: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert_eq!(line["span"]["correlation_id"], "span-test-1", "{line}");
        assert_eq!(line["span"]["method"], "GET", "{line}");
        assert_eq!(line["span"]["route"], "/kv/{key:.*}", "{line}");
        assert!(
            !logs.contains("secret-key"),
            "keys must not reach the logs: {logs}"
        );
    }

    #[actix_web::test]
    async fn every_request_gets_one_access_log_line_with_its_status_and_duration_but_not_its_key() {
        let (captured, _subscriber) = json_lines("info");
        let app = test::init_service(App::new().wrap(from_fn(correlation_id_middleware)).route(
            "/kv/{key:.*}",
            web::get().to(|| async { HttpResponse::NotFound().finish() }),
        ))
        .await;
        test::call_service(
            &app,
            test::TestRequest::get()
                .uri("/kv/secret-key")
                .insert_header(("X-Correlation-Id", "access-1"))
                .to_request(),
        )
        .await;

        let logs = captured.text();
        let lines: Vec<serde_json::Value> = logs
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON log line"))
            .filter(|line: &serde_json::Value| line["target"] == ACCESS_LOG_TARGET)
            .collect();
        assert_eq!(lines.len(), 1, "{logs}");
        let line = &lines[0];
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["status"], 404, "{line}");
        assert!(
            line["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{line}"
        );
        assert_eq!(line["span"]["correlation_id"], "access-1", "{line}");
        assert_eq!(line["span"]["method"], "GET", "{line}");
        assert_eq!(line["span"]["route"], "/kv/{key:.*}", "{line}");
        assert!(
            !logs.contains("secret-key"),
            "keys must not reach the logs: {logs}"
        );
    }

    #[actix_web::test]
    async fn a_missing_correlation_id_is_generated_and_echoed_even_on_errors() {
        let app = app!();
        let response =
            test::call_service(&app, test::TestRequest::get().uri("/nowhere").to_request()).await;
        assert_eq!(response.status(), 404);
        let id = response
            .headers()
            .get(&CORRELATION_ID)
            .expect("correlation id")
            .to_str()
            .expect("ascii");
        assert_eq!(id.len(), 36, "a uuid, got {id}");
    }

    #[actix_web::test]
    async fn an_oversized_correlation_id_is_refused_naming_the_header() {
        let app = app!();
        let response = test::call_service(
            &app,
            test::TestRequest::get()
                .uri("/echo")
                .insert_header(("X-Correlation-Id", "x".repeat(200)))
                .to_request(),
        )
        .await;
        assert_eq!(response.status(), 400);
        let body: serde_json::Value = test::read_body_json(response).await;
        assert_eq!(body["error"]["code"], "invalid_request");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("X-Correlation-Id")));
    }

    #[actix_web::test]
    async fn a_body_over_the_limit_is_refused_with_413() {
        let app = app!();
        let response = test::call_service(
            &app,
            test::TestRequest::post()
                .uri("/body")
                .set_payload("123456789")
                .to_request(),
        )
        .await;
        assert_eq!(response.status(), 413);
        let body: serde_json::Value = test::read_body_json(response).await;
        assert_eq!(body["error"]["code"], "payload_too_large");
        let ok = test::call_service(
            &app,
            test::TestRequest::post()
                .uri("/body")
                .set_payload("12345678")
                .to_request(),
        )
        .await;
        assert_eq!(test::read_body(ok).await, "8");
    }

    /// With actix alone, the rest of a chunked body refused early is read and discarded for as
    /// long as the client sends it; the connection must be closed instead.
    #[actix_web::test]
    async fn a_chunked_body_refused_before_its_end_closes_the_connection_instead_of_being_drained()
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let server = actix_web::HttpServer::new(|| {
            App::new()
                .wrap(from_fn(close_when_body_unread))
                .route("/body", web::post().to(body_length))
        })
        .workers(1)
        .listen(listener)
        .expect("listen")
        .run();
        let server_handle = server.handle();
        actix_web::rt::spawn(server);

        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let (mut from_server, mut to_server) = stream.into_split();
        let answer = tokio::spawn(async move {
            let mut answer = Vec::new();
            // The server may end with a reset once it stops reading: keep what came before.
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = from_server.read(&mut buffer).await {
                answer.extend_from_slice(&buffer[..n]);
            }
            answer
        });
        to_server
            .write_all(b"POST /body HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .expect("head");
        let mut chunk = b"10000\r\n".to_vec();
        chunk.extend(std::iter::repeat_n(b'a', 0x10000));
        chunk.extend_from_slice(b"\r\n");
        // Sends until the server stops taking the body; draining would take it all. A write
        // that stalls is no close either.
        let wait = std::time::Duration::from_secs(20);
        let deadline = std::time::Instant::now() + wait;
        let mut closed = false;
        while std::time::Instant::now() < deadline {
            match tokio::time::timeout(wait, to_server.write_all(&chunk)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        drop(to_server);
        let answer = tokio::time::timeout(wait, answer)
            .await
            .expect("the connection ends")
            .expect("reader");
        let answer = String::from_utf8_lossy(&answer).into_owned();
        server_handle.stop(false).await;
        assert!(closed, "the server kept reading the refused body");
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        assert!(answer.contains("payload_too_large"), "{answer}");
    }

    #[actix_web::test]
    async fn path_keys_are_percent_decoded_to_bytes_and_may_hold_slashes() {
        let app = app!();
        let response = test::call_service(
            &app,
            test::TestRequest::get()
                .uri("/kv/users%2Fada/%C3%A9%FF")
                .to_request(),
        )
        .await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            test::read_body(response).await.as_ref(),
            b"users/ada/\xc3\xa9\xff"
        );
    }

    #[actix_web::test]
    async fn an_empty_path_key_is_refused() {
        let app = app!();
        let response =
            test::call_service(&app, test::TestRequest::get().uri("/kv/").to_request()).await;
        assert_eq!(response.status(), 400);
        let body: serde_json::Value = test::read_body_json(response).await;
        assert_eq!(body["error"]["code"], "invalid_key");
    }
}
