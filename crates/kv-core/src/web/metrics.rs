//! Prometheus metrics both binaries expose at `/metrics`: HTTP requests, build info and the
//! process's own (`process_*`: CPU, resident memory, open file descriptors). Each binary
//! registers its own role's metrics on the same [`Metrics::registry`].

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::CONTENT_TYPE;
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse, ResponseError};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::web::error::ApiError;
use crate::web::routing::RoutePattern;

/// Latency buckets from 100 µs to 10 s: reads are sub-millisecond, acked writes milliseconds,
/// and outages hit the produce timeout.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl Metrics {
    /// A registry with the HTTP metrics and `kv_build_info{service,version}` = 1.
    pub fn new(service: &'static str) -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "kv_http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "kv_http_request_duration_seconds",
                "HTTP request latency by route and method",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let build_info = IntGaugeVec::new(
            Opts::new("kv_build_info", "Always 1; labels say what is running"),
            &["service", "version"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        build_info
            .with_label_values(&[service, env!("CARGO_PKG_VERSION")])
            .set(1);
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry
                .register(collector)
                .unwrap_or_else(|e| unreachable!("each metric is registered once: {e}"));
        }
        Self {
            registry,
            requests,
            latency,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn observe(&self, route: &str, method: &str, status: &str, started: Instant) {
        self.requests
            .with_label_values(&[route, method, status])
            .inc();
        self.latency
            .with_label_values(&[route, method])
            .observe(started.elapsed().as_secs_f64());
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut buffer = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(buffer)
    }
}

/// The method as a label: actix accepts any method token, and an anonymous caller sending made-up
/// methods must not grow the registry, so anything outside RFC 9110's methods is `other`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Counts and times every request under its route *pattern* (`/v1/kv/{key}`), never the raw
/// path, so labels stay low-cardinality whatever keys clients use.
pub async fn metrics_middleware(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let response = next.call(request).await?;
    // The route pattern is known only once routing ran, so it is read from the response side.
    let http_request = response.request();
    if let Some(metrics) = http_request.app_data::<web::Data<Metrics>>() {
        let route = RoutePattern::of(http_request);
        metrics.observe(
            route.as_str(),
            method_label(http_request.method()),
            response.status().as_str(),
            started,
        );
    }
    Ok(response)
}

/// `GET /metrics`.
pub async fn metrics_endpoint(metrics: web::Data<Metrics>) -> HttpResponse {
    // Role collectors read a store or the file system while gathering, so gathering runs on the
    // blocking pool, never on an HTTP worker.
    let encoded = web::block(move || metrics.encode()).await;
    match encoded {
        Ok(Ok(buffer)) => HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, prometheus::TEXT_FORMAT))
            .body(buffer),
        Ok(Err(error)) => {
            ApiError::internal(format!("cannot encode the metrics: {error}")).error_response()
        }
        Err(error) => {
            ApiError::internal(format!("cannot gather the metrics: {error}")).error_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::middleware::from_fn;
    use actix_web::{test, App};

    use super::*;

    #[actix_web::test]
    async fn requests_are_counted_by_route_pattern_not_by_raw_path() {
        let metrics = web::Data::new(Metrics::new("kv-test"));
        let app = test::init_service(
            App::new()
                .wrap(from_fn(metrics_middleware))
                .app_data(metrics.clone())
                .route("/v1/kv/{key:.*}", web::get().to(HttpResponse::Ok))
                .route("/metrics", web::get().to(metrics_endpoint)),
        )
        .await;
        for key in ["a", "b/c", "d"] {
            let uri = format!("/v1/kv/{key}");
            test::call_service(&app, test::TestRequest::get().uri(&uri).to_request()).await;
        }
        let response =
            test::call_service(&app, test::TestRequest::get().uri("/metrics").to_request()).await;
        let text = String::from_utf8(test::read_body(response).await.to_vec()).expect("utf-8");
        assert!(
            text.contains(
                r#"kv_http_requests_total{method="GET",route="/v1/kv/{key:.*}",status="200"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"kv_build_info{service="kv-test""#),
            "{text}"
        );
        assert!(!text.contains("b/c"), "raw paths must not become labels");
    }

    #[actix_web::test]
    async fn made_up_methods_share_one_label_set() {
        let metrics = web::Data::new(Metrics::new("kv-test"));
        let app = test::init_service(
            App::new()
                .wrap(from_fn(metrics_middleware))
                .app_data(metrics.clone())
                .route("/x", web::get().to(HttpResponse::Ok)),
        )
        .await;
        for i in 0..200 {
            let method = Method::from_bytes(format!("M{i}").as_bytes()).expect("a method token");
            let request = test::TestRequest::default()
                .method(method)
                .uri("/x")
                .to_request();
            test::call_service(&app, request).await;
        }
        let text = String::from_utf8(metrics.encode().expect("encode")).expect("utf-8");
        let series = text
            .lines()
            .filter(|l| l.starts_with("kv_http_requests_total{"))
            .count();
        assert_eq!(series, 1, "{text}");
        assert!(text.contains(r#"method="other""#), "{text}");
    }
}
