//! Checks that a service's OpenAPI document and the routes it serves agree.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use serde_json::Value;

use crate::services::Service;

/// Methods an OpenAPI path item may hold that the services could serve.
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// A parsed OpenAPI document.
#[derive(Debug)]
pub struct Document(Value);

impl Document {
    pub fn parse(yaml: &str) -> Document {
        Document(serde_yaml_ng::from_str(yaml).expect("the OpenAPI document is YAML"))
    }

    /// Every operation as (METHOD, path), with whether it is anonymous (`security: []`;
    /// operations without `security` take the document's).
    pub fn operations(&self) -> BTreeMap<(String, String), bool> {
        let global_anonymous = self.0["security"]
            .as_array()
            .is_none_or(|requirements| requirements.is_empty());
        let mut operations = BTreeMap::new();
        for (path, item) in self.0["paths"].as_object().expect("`paths`") {
            for method in METHODS {
                if let Some(operation) = item.get(method) {
                    let anonymous = match operation.get("security") {
                        Some(security) => security.as_array().is_some_and(|s| s.is_empty()),
                        None => global_anonymous,
                    };
                    operations.insert((method.to_uppercase(), path.clone()), anonymous);
                }
            }
        }
        operations
    }

    pub fn paths(&self) -> BTreeSet<String> {
        self.operations()
            .into_keys()
            .map(|(_, path)| path)
            .collect()
    }

    /// Whether the operation declares a JSON request body.
    pub fn takes_json(&self, method: &str, path: &str) -> bool {
        !self.0["paths"][path][method.to_lowercase()]["requestBody"]["content"]["application/json"]
            .is_null()
    }

    pub fn get(&self) -> &Value {
        &self.0
    }

    /// Every `$ref` that does not point at something in the document.
    pub fn unresolved_references(&self) -> Vec<String> {
        fn walk(value: &Value, root: &Value, unresolved: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        let found = target
                            .strip_prefix('#')
                            .and_then(|pointer| root.pointer(pointer));
                        if found.is_none() {
                            unresolved.push(target.clone());
                        }
                    }
                    map.values().for_each(|v| walk(v, root, unresolved));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, root, unresolved)),
                _ => {}
            }
        }
        let mut unresolved = Vec::new();
        walk(&self.0, &self.0, &mut unresolved);
        unresolved
    }
}

/// What a service answered: status and, for JSON errors, the error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub code: Option<String>,
}

impl Answer {
    /// Whether the router found nothing to serve: an unknown route or a wrong method.
    pub fn is_unrouted(&self) -> bool {
        (self.status == 404 && self.code.as_deref() == Some("not_found")) || self.status == 405
    }
}

/// Calls `method path` (with `{key}`-like segments filled in) on the service, with an empty
/// JSON object as body when the document says the operation takes JSON.
pub async fn call(
    http: &reqwest::Client,
    service: &Service,
    document: &Document,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Answer {
    let url = service.url(&fill_parameters(path));
    let mut request = http.request(Method::from_bytes(method.as_bytes()).expect("method"), url);
    if document.takes_json(method, path) {
        request = request.json(&serde_json::json!({}));
    } else if method == "PUT" || method == "POST" || method == "PATCH" {
        request = request.body("probe");
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the service answers");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        code: body["error"]["code"].as_str().map(str::to_owned),
    }
}

/// `/v1/kv/{key}` becomes `/v1/kv/probe-key`.
pub fn fill_parameters(path: &str) -> String {
    let mut filled = String::with_capacity(path.len());
    let mut in_parameter = false;
    for c in path.chars() {
        match c {
            '{' => in_parameter = true,
            '}' => {
                in_parameter = false;
                filled.push_str("probe-key");
            }
            _ if in_parameter => {}
            _ => filled.push(c),
        }
    }
    filled
}

/// Checks that `http_file` (`docs/usage.http`) sends `{{base}}` a request for every operation
/// of the document `yaml`, and nothing the document does not list.
pub fn assert_usage_matches_document(http_file: &str, base: &str, yaml: &str) {
    let requests = usage_requests(http_file, base);
    let operations: Vec<(String, String)> =
        Document::parse(yaml).operations().into_keys().collect();
    for (method, template) in &operations {
        assert!(
            requests
                .iter()
                .any(|(m, path)| m == method && instance_of(path, template)),
            "docs/usage.http has no {method} {template} for the {base}"
        );
    }
    for (method, path) in &requests {
        assert!(
            operations
                .iter()
                .any(|(m, template)| m == method && instance_of(path, template)),
            "docs/usage.http sends {method} {path} to the {base}, which the document does not list"
        );
    }
}

/// The requests of a REST Client file (`docs/usage.http`) sent to `{{base}}`, as
/// (METHOD, path without the query).
pub fn usage_requests(http_file: &str, base: &str) -> Vec<(String, String)> {
    let prefix = format!("{{{{{base}}}}}");
    http_file
        .lines()
        .filter_map(|line| {
            let (method, target) = line.split_once(' ')?;
            if !METHODS.contains(&method.to_lowercase().as_str()) {
                return None;
            }
            let path = target.trim().strip_prefix(&prefix)?;
            let path = path.split('?').next().unwrap_or_default();
            Some((method.to_owned(), path.to_owned()))
        })
        .collect()
}

/// Whether a concrete path is an instance of a document's path template.
pub fn instance_of(path: &str, template: &str) -> bool {
    let mut concrete = path.split('/');
    let mut pattern = template.split('/');
    loop {
        match (concrete.next(), pattern.next()) {
            (None, None) => return true,
            (Some(segment), Some(expected)) if expected.starts_with('{') => {
                if segment.is_empty() {
                    return false;
                }
            }
            (Some(segment), Some(expected)) if segment == expected => {}
            _ => return false,
        }
    }
}

/// Methods a document's path does not list, for checking that they are refused.
pub fn other_methods(operations: &BTreeMap<(String, String), bool>, path: &str) -> Vec<String> {
    METHODS
        .iter()
        .map(|m| m.to_uppercase())
        .filter(|m| !operations.contains_key(&(m.clone(), path.to_owned())))
        .collect()
}

/// Calls every operation of the document on the running `service`: documented-anonymous
/// ones must answer without a token, the rest must refuse without one (401) and be routed
/// with `token`; every other method on a documented path must get 405; the served document
/// (`/openapi.yaml`) must be `yaml` itself.
pub async fn assert_served_as_documented(service: &Service, yaml: &str, token: &str) {
    let http = reqwest::Client::new();
    let document = Document::parse(yaml);
    let operations = document.operations();
    for ((method, path), anonymous) in &operations {
        let anonymous_answer = call(&http, service, &document, method, path, None).await;
        if *anonymous {
            assert!(
                !anonymous_answer.is_unrouted() && anonymous_answer.status != 401,
                "{method} {path} is documented as anonymous: {anonymous_answer:?}"
            );
        } else {
            assert_eq!(
                anonymous_answer.status, 401,
                "{method} {path} is documented as needing a token"
            );
            let answer = call(&http, service, &document, method, path, Some(token)).await;
            assert!(
                !answer.is_unrouted() && answer.status != 401 && answer.status != 403,
                "{method} {path} is documented: {answer:?}\n{}",
                service.output()
            );
        }
    }
    for path in document.paths() {
        for method in other_methods(&operations, &path) {
            let answer = call(&http, service, &document, &method, &path, Some(token)).await;
            assert_eq!(
                (answer.status, answer.code.as_deref()),
                (405, Some("method_not_allowed")),
                "{method} {path} is not documented"
            );
        }
    }
    let served = http
        .get(service.url("/openapi.yaml"))
        .send()
        .await
        .expect("the document");
    assert_eq!(served.status(), 200);
    assert!(served
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|t| t.to_str().ok())
        .is_some_and(|t| t.starts_with("application/yaml")));
    assert_eq!(served.text().await.expect("text"), yaml);
    let served = http
        .get(service.url("/openapi.json"))
        .send()
        .await
        .expect("the JSON document");
    assert_eq!(served.status(), 200);
    assert!(served
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|t| t.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json")));
    let json: serde_json::Value = served.json().await.expect("JSON");
    let from_yaml: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("YAML");
    assert_eq!(json, from_yaml, "/openapi.json is /openapi.yaml as JSON");
}
