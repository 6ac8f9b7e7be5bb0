//! Each service's routes as one table: the app registers exactly what the table holds, and the
//! OpenAPI test reads the same table, so the served routes and the document cannot drift apart.

use actix_web::http::Method;
use actix_web::{web, HttpResponse, Resource, Route};

use crate::http::method_not_allowed;

/// One path and the handlers of its methods. Any other method on the path answers
/// `405 method_not_allowed` with an `Allow` header listing the path's methods.
pub struct Endpoint {
    pattern: &'static str,
    methods: Vec<Method>,
    resource: Resource,
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
    /// `pattern` is actix's (`/v1/kv/{key:.*}`).
    pub fn new(pattern: &'static str) -> Self {
        Self {
            pattern,
            methods: Vec::new(),
            resource: web::resource(pattern),
        }
    }

    /// Serves `method` with `route`'s handler.
    pub fn on(mut self, method: Method, route: Route) -> Self {
        self.methods.push(method.clone());
        self.resource = self.resource.route(route.method(method));
        self
    }

    /// Data (an extractor config) for this path only.
    pub fn app_data<U: 'static>(mut self, data: U) -> Self {
        self.resource = self.resource.app_data(data);
        self
    }

    pub fn pattern(&self) -> &'static str {
        self.pattern
    }

    pub fn methods(&self) -> &[Method] {
        &self.methods
    }

    /// The path as OpenAPI writes it: `/v1/kv/{key:.*}` becomes `/v1/kv/{key}`.
    pub fn openapi_path(&self) -> String {
        openapi_path(self.pattern)
    }

    /// The actix resource: the handlers, and `405` with `Allow` for any other method.
    pub fn into_resource(self) -> Resource {
        self.resource
            .default_service(method_not_allowed(&self.methods))
    }
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

/// Registers every endpoint on an app.
pub fn register(config: &mut web::ServiceConfig, endpoints: Vec<Endpoint>) {
    for endpoint in endpoints {
        config.service(endpoint.into_resource());
    }
}

/// Serves a service's OpenAPI document, embedded in the binary.
pub fn openapi_document(yaml: &'static str) -> Route {
    web::get().to(move || async move {
        HttpResponse::Ok()
            .content_type("application/yaml; charset=utf-8")
            .body(yaml)
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
}
