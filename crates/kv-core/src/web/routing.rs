//! Each service's routes as one table: the app registers exactly what the table holds, and the
//! OpenAPI test reads the same table, so the served routes and the document cannot drift apart.

use std::borrow::Cow;
use std::rc::Rc;

use actix_web::dev::{fn_factory, fn_service, Service, ServiceFactory, ServiceRequest};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::{
    web, HttpMessage, HttpRequest, HttpResponse, Resource, ResponseError, Route, Scope,
};

use crate::web::error::{ApiError, ErrorCode};

/// The route pattern a request matched (`/v1/kv/{key}`), or `unmatched`: what logs and metrics
/// name a request by, never its raw path (paths hold keys).
#[derive(Debug, Clone)]
pub struct RoutePattern(Option<Cow<'static, str>>);

impl RoutePattern {
    pub fn named(pattern: &'static str) -> RoutePattern {
        RoutePattern(Some(Cow::Borrowed(pattern)))
    }

    /// The pattern the correlation middleware already matched, else a fresh match.
    pub fn of(request: &HttpRequest) -> RoutePattern {
        if let Some(known) = request.extensions().get::<RoutePattern>() {
            return known.clone();
        }
        match request.match_pattern() {
            Some(pattern) => RoutePattern(Some(Cow::Owned(pattern))),
            None => RoutePattern(key_tail_pattern(request).map(Cow::Borrowed)),
        }
    }

    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or("unmatched")
    }
}

/// Fallback for unknown routes, so a typo in a URL gets the same JSON contract.
pub async fn route_not_found(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        ErrorCode::NotFound,
        format!("no route for {} {}", request.method(), request.path()),
    ))
}

/// Fallback for a known route called with another method than `allowed`: `405
/// method_not_allowed` with the `Allow` header RFC 9110 requires on a 405, listing `allowed`.
pub fn method_not_allowed(allowed: &[Method]) -> actix_web::Route {
    let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let allow = HeaderValue::from_str(&names.join(", ")).ok();
    web::to(move |request: HttpRequest| {
        let allow = allow.clone();
        async move {
            let mut response = ApiError::new(
                ErrorCode::MethodNotAllowed,
                format!("{} is not allowed on {}", request.method(), request.path()),
            )
            .error_response();
            if let Some(allow) = allow {
                response.headers_mut().insert(header::ALLOW, allow);
            }
            response
        }
    })
}

/// One path and the handlers of its methods. Any other method on the path answers
/// `405 method_not_allowed` with an `Allow` header listing the path's methods.
pub struct Endpoint {
    pattern: &'static str,
    methods: Vec<Method>,
    shape: Shape,
}

enum Shape {
    /// Matched by actix's pattern matching.
    Pattern(Resource),
    /// `{prefix}/{key}`, the key being all the rest of the path. Matched as a plain prefix:
    /// actix matches any pattern with a dynamic segment by regex, which a profile of the reader
    /// showed at about 8 % of its CPU on the hottest route.
    KeyTail {
        prefix: &'static str,
        scope: Scope,
        routes: Vec<(Method, Route)>,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("pattern", &self.pattern)
            .field("methods", &self.methods)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// `pattern` is actix's (`/v1/kv:batch`, `/a/{x}`).
    pub fn new(pattern: &'static str) -> Self {
        Self {
            pattern,
            methods: Vec::new(),
            shape: Shape::Pattern(web::resource(pattern)),
        }
    }

    /// `pattern` is `{prefix}/{key}`: every path below `prefix`, the key being the rest of it
    /// (slashes included). Registered after every other endpoint, so that it only gets what no
    /// other route of the table matches.
    pub fn key_tail(pattern: &'static str) -> Self {
        let prefix = pattern
            .strip_suffix("/{key}")
            .expect("a key-tail pattern ends with /{key}");
        Self {
            pattern,
            methods: Vec::new(),
            shape: Shape::KeyTail {
                prefix,
                scope: web::scope(prefix),
                routes: Vec::new(),
            },
        }
    }

    /// Serves `method` with `route`'s handler.
    pub fn on(mut self, method: Method, route: Route) -> Self {
        self.methods.push(method.clone());
        self.shape = match self.shape {
            Shape::Pattern(resource) => Shape::Pattern(resource.route(route.method(method))),
            Shape::KeyTail {
                prefix,
                scope,
                mut routes,
            } => {
                routes.push((method, route));
                Shape::KeyTail {
                    prefix,
                    scope,
                    routes,
                }
            }
        };
        self
    }

    /// Data (an extractor config) for this path only.
    pub fn app_data<U: 'static>(mut self, data: U) -> Self {
        self.shape = match self.shape {
            Shape::Pattern(resource) => Shape::Pattern(resource.app_data(data)),
            Shape::KeyTail {
                prefix,
                scope,
                routes,
            } => Shape::KeyTail {
                prefix,
                scope: scope.app_data(data),
                routes,
            },
        };
        self
    }

    pub fn methods(&self) -> &[Method] {
        &self.methods
    }

    /// The path as OpenAPI writes it: `/v1/kv/{key:.*}` becomes `/v1/kv/{key}`.
    pub fn openapi_path(&self) -> String {
        openapi_path(self.pattern)
    }

    fn register(self, config: &mut web::ServiceConfig) {
        let not_allowed = method_not_allowed(&self.methods);
        match self.shape {
            Shape::Pattern(resource) => {
                config.service(resource.default_service(not_allowed));
            }
            Shape::KeyTail { scope, routes, .. } => {
                let pattern = RoutePattern::named(self.pattern);
                config.service(scope.default_service(by_method(routes, not_allowed, pattern)));
            }
        }
    }
}

/// The key-tail routes of an app, so that requests matched by prefix are named by their
/// pattern in logs and metrics (actix's own route lookup knows only patterns).
#[derive(Debug, Clone, Default)]
pub struct KeyTailRoutes(Vec<(&'static str, &'static str)>);

impl KeyTailRoutes {
    /// The pattern of the key-tail route `path` falls under, if any.
    pub fn pattern_of(&self, path: &str) -> Option<&'static str> {
        self.0.iter().find_map(|(prefix, pattern)| {
            path.strip_prefix(prefix)
                .filter(|rest| rest.starts_with('/'))
                .map(|_| *pattern)
        })
    }
}

/// The handler of the request's method among `routes`, else `other`; the request is named by
/// `pattern` for the middlewares that log and count it.
fn by_method(
    routes: Vec<(Method, Route)>,
    other: Route,
    pattern: RoutePattern,
) -> impl ServiceFactory<
    ServiceRequest,
    Config = (),
    Response = actix_web::dev::ServiceResponse,
    Error = actix_web::Error,
    InitError = (),
> {
    let routes = Rc::new(routes);
    let other = Rc::new(other);
    fn_factory(move || {
        let (routes, other, pattern) = (routes.clone(), other.clone(), pattern.clone());
        async move {
            let mut services = Vec::with_capacity(routes.len());
            for (method, route) in routes.iter() {
                services.push((method.clone(), route.new_service(()).await?));
            }
            let other = other.new_service(()).await?;
            let not_found = web::to(route_not_found).new_service(()).await?;
            let services = Rc::new((services, other, not_found));
            Ok(fn_service(move |request: ServiceRequest| {
                let (routes, other, not_found) = &*services;
                // The scope also takes its bare prefix, which names no key.
                if request.match_info().unprocessed().is_empty() {
                    return not_found.call(request);
                }
                request.extensions_mut().insert(pattern.clone());
                let service = routes
                    .iter()
                    .find(|(method, _)| method == request.method())
                    .map_or(other, |(_, service)| service);
                service.call(request)
            }))
        }
    })
}

/// Drops actix's regex part of each `{name:regex}` segment.
pub fn openapi_path(pattern: &str) -> String {
    let mut path = String::with_capacity(pattern.len());
    let mut in_regex = false;
    for c in pattern.chars() {
        match c {
            ':' if path.rfind('{') > path.rfind('}') => in_regex = true,
            '}' => {
                in_regex = false;
                path.push(c);
            }
            _ if in_regex => {}
            _ => path.push(c),
        }
    }
    path
}

/// Registers every endpoint on an app: key-tail endpoints last, since they take every path
/// below their prefix.
pub fn register(config: &mut web::ServiceConfig, endpoints: Vec<Endpoint>) {
    let (tails, patterns): (Vec<Endpoint>, Vec<Endpoint>) = endpoints
        .into_iter()
        .partition(|endpoint| matches!(endpoint.shape, Shape::KeyTail { .. }));
    let names = KeyTailRoutes(
        tails
            .iter()
            .filter_map(|endpoint| match endpoint.shape {
                Shape::KeyTail { prefix, .. } => Some((prefix, endpoint.pattern)),
                Shape::Pattern(_) => None,
            })
            .collect(),
    );
    config.app_data(names);
    for endpoint in patterns.into_iter().chain(tails) {
        endpoint.register(config);
    }
}

/// The key-tail route pattern `request` falls under, if any.
pub fn key_tail_pattern(request: &HttpRequest) -> Option<&'static str> {
    request
        .app_data::<KeyTailRoutes>()?
        .pattern_of(request.path())
}

/// Serves a service's OpenAPI document, embedded in the binary.
pub fn openapi_document(yaml: &'static str) -> Route {
    web::get().to(move || async move {
        HttpResponse::Ok()
            .content_type("application/yaml; charset=utf-8")
            .body(yaml)
    })
}

/// The same document as JSON (`GET /openapi.json`), for tools that read no YAML; converted once
/// when the routes are built, from the one YAML source.
pub fn openapi_json_document(yaml: &'static str) -> Route {
    let json = web::Bytes::from(
        serde_yaml_ng::from_str::<serde_json::Value>(yaml)
            .map(|document| serde_json::to_vec(&document).unwrap_or_default())
            .unwrap_or_else(|e| unreachable!("the embedded OpenAPI document is YAML: {e}")),
    );
    web::get().to(move || {
        let json = json.clone();
        async move {
            HttpResponse::Ok()
                .content_type("application/json")
                .body(json)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_paths_lose_the_regex_but_keep_literal_colons() {
        assert_eq!(openapi_path("/v1/kv/{key:.*}"), "/v1/kv/{key}");
        assert_eq!(openapi_path("/v1/kv:batchGet"), "/v1/kv:batchGet");
        assert_eq!(openapi_path("/a/{x}/b:c/{y:[0-9]+}"), "/a/{x}/b:c/{y}");
    }

    #[actix_web::test]
    async fn another_method_is_405_with_an_allow_header_listing_the_paths_methods() {
        let endpoint = Endpoint::new("/kv/{key:.*}")
            .on(Method::PUT, web::to(HttpResponse::Ok))
            .on(Method::DELETE, web::to(HttpResponse::Ok));
        let app = actix_web::test::init_service(
            actix_web::App::new().configure(|config| register(config, vec![endpoint])),
        )
        .await;
        for method in [Method::GET, Method::POST, Method::TRACE] {
            let response = actix_web::test::call_service(
                &app,
                actix_web::test::TestRequest::default()
                    .method(method.clone())
                    .uri("/kv/k")
                    .to_request(),
            )
            .await;
            assert_eq!(response.status(), 405, "{method}");
            assert_eq!(
                response.headers().get(actix_web::http::header::ALLOW),
                Some(&actix_web::http::header::HeaderValue::from_static(
                    "PUT, DELETE"
                )),
                "{method}"
            );
            let body: serde_json::Value = actix_web::test::read_body_json(response).await;
            assert_eq!(body["error"]["code"], "method_not_allowed");
        }
    }

    #[actix_web::test]
    async fn a_key_tail_takes_every_path_below_its_prefix_that_no_other_route_matches() {
        async fn key(request: HttpRequest) -> HttpResponse {
            let name = RoutePattern::of(&request);
            HttpResponse::Ok().body(format!("{} {}", name.as_str(), request.path()))
        }
        let endpoints = vec![
            Endpoint::key_tail("/kv/{key}")
                .on(Method::GET, web::to(key))
                .on(Method::DELETE, web::to(key)),
            Endpoint::new("/kv").on(Method::GET, web::to(|| async { "list" })),
            Endpoint::new("/kv:batch").on(Method::POST, web::to(|| async { "batch" })),
        ];
        let app = actix_web::test::init_service(
            actix_web::App::new()
                .configure(|config| register(config, endpoints))
                .default_service(web::to(HttpResponse::NotFound)),
        )
        .await;
        let call = |method: Method, uri: &'static str| {
            actix_web::test::TestRequest::default()
                .method(method)
                .uri(uri)
                .to_request()
        };
        let body = |response| async move {
            String::from_utf8(actix_web::test::read_body(response).await.to_vec()).expect("utf-8")
        };

        let response = actix_web::test::call_service(&app, call(Method::GET, "/kv/a/b%2Fc")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(body(response).await, "/kv/{key} /kv/a/b%2Fc");
        let response = actix_web::test::call_service(&app, call(Method::GET, "/kv")).await;
        assert_eq!(body(response).await, "list");
        let response = actix_web::test::call_service(&app, call(Method::POST, "/kv:batch")).await;
        assert_eq!(body(response).await, "batch");
        for unknown in ["/kvx/a", "/k"] {
            let response = actix_web::test::call_service(&app, call(Method::GET, unknown)).await;
            assert_eq!(response.status(), 404, "{unknown}");
        }
        let response = actix_web::test::call_service(&app, call(Method::PUT, "/kv/a")).await;
        assert_eq!(response.status(), 405);
        assert_eq!(
            response.headers().get(actix_web::http::header::ALLOW),
            Some(&actix_web::http::header::HeaderValue::from_static(
                "GET, DELETE"
            ))
        );
    }

    #[actix_web::test]
    async fn a_key_tails_bare_prefix_is_no_route() {
        let endpoints =
            vec![Endpoint::key_tail("/kv/{key}").on(Method::PUT, web::to(HttpResponse::Ok))];
        let app = actix_web::test::init_service(
            actix_web::App::new().configure(|config| register(config, endpoints)),
        )
        .await;
        for method in [Method::GET, Method::PUT] {
            let request = actix_web::test::TestRequest::default()
                .method(method.clone())
                .uri("/kv")
                .to_request();
            let response = actix_web::test::call_service(&app, request).await;
            assert_eq!(response.status(), 404, "{method}");
        }
    }
}
