//! A kv-reader seen from outside: key paths, readiness, and its whole state read back through
//! its listing and batchGet routes; and a schema-registry stub for it to ask.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

use crate::poll::{eventually, DEADLINE};
use crate::services::Service;

/// The native route's URL path of a key of any bytes.
pub fn key_path(key: &[u8]) -> String {
    let encoded: String = key
        .iter()
        .map(|b| format!("%{b:02X}"))
        .collect::<Vec<_>>()
        .join("");
    format!("/v1/kv/{encoded}")
}

pub fn query_value(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

pub async fn ready_report(http: &reqwest::Client, reader: &Service) -> (u16, Value) {
    let response = http
        .get(reader.url("/healthz/ready"))
        .send()
        .await
        .expect("readiness");
    let status = response.status().as_u16();
    (status, response.json().await.expect("readiness json"))
}

/// Waits until the reader reports ready, and returns its report.
pub async fn wait_ready(http: &reqwest::Client, reader: &Service) -> Value {
    eventually("the reader to be ready", DEADLINE, || async {
        let (status, body) = ready_report(http, reader).await;
        (status == 200).then_some(body)
    })
    .await
}

/// `/healthz/cluster` of `asker` once it sees shard `shard` ready: shards poll their peers once
/// a second, so a shard's view of another trails that shard's own readiness.
pub async fn wait_seen_ready(http: &reqwest::Client, asker: &Service, shard: usize) -> Value {
    eventually("a shard to see its peer ready", DEADLINE, || async {
        let view: Value = http
            .get(asker.url("/healthz/cluster"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (view["cluster"][shard]["status"] == "ready").then_some(view)
    })
    .await
}

fn bytes_of(item: &Value, field: &str) -> Option<Vec<u8>> {
    if let Some(text) = item[field].as_str() {
        return Some(text.as_bytes().to_vec());
    }
    item[format!("{field}_b64")]
        .as_str()
        .map(|b64| STANDARD.decode(b64).expect("base64"))
}

/// Every key the reader lists, page by page.
pub async fn all_keys(http: &reqwest::Client, reader: &Service) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = reader.url("/v1/kv?limit=1000");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = http
            .get(url)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("list json");
        for item in page["keys"].as_array().expect("keys") {
            keys.push(bytes_of(item, "key").expect("a key"));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return keys,
        }
    }
}

/// The reader's whole state, read through its listing and batchGet routes.
pub async fn dump(http: &reqwest::Client, reader: &Service) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let keys = all_keys(http, reader).await;
    let mut state = BTreeMap::new();
    for chunk in keys.chunks(1000) {
        let keys_b64: Vec<String> = chunk.iter().map(|k| STANDARD.encode(k)).collect();
        let response: Value = http
            .post(reader.url("/v1/kv:batchGet"))
            .json(&serde_json::json!({ "keys_b64": keys_b64 }))
            .send()
            .await
            .expect("batchGet")
            .json()
            .await
            .expect("batchGet json");
        for (key, item) in chunk
            .iter()
            .zip(response["results"].as_array().expect("results"))
        {
            if item["found"] == true {
                state.insert(key.clone(), bytes_of(item, "value").expect("a value"));
            }
        }
    }
    state
}

/// The values `reader` holds for text `keys` (`None`: not found), through `POST /v1/kv:batchGet`
/// in chunks of 1000; a chunk that fails leaves its keys out of the answer.
pub async fn read_back(
    http: &reqwest::Client,
    reader: &Service,
    keys: &[&String],
) -> HashMap<String, Option<String>> {
    let mut found = HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(1000) {
        let Ok(response) = http
            .post(reader.url("/v1/kv:batchGet"))
            .json(&serde_json::json!({ "keys": chunk }))
            .send()
            .await
        else {
            continue;
        };
        let Ok(body) = response.json::<Value>().await else {
            continue;
        };
        for item in body["results"].as_array().into_iter().flatten() {
            let key = item["key"].as_str().unwrap_or_default().to_owned();
            let value = item["value"].as_str().map(str::to_owned);
            found.insert(key, value);
        }
    }
    found
}

/// A schema registry that knows only `subjects`, each with its schema ids (one version each),
/// answering `/subjects`, `/subjects/{s}/versions`, `/subjects/{s}/versions/{v}` and
/// `/schemas/ids/{id}/versions`.
pub fn registry_stub(subjects: Vec<(String, Vec<u32>)>) -> String {
    registry_stub_shared(subjects).0
}

/// What a [`registry_stub_shared`] knows: each subject with its schema ids, version by version.
pub type RegistrySubjects = Arc<Mutex<Vec<(String, Vec<u32>)>>>;

/// [`registry_stub`] with a handle on what it knows, to register a schema while it runs.
pub fn registry_stub_shared(subjects: Vec<(String, Vec<u32>)>) -> (String, RegistrySubjects) {
    let subjects = Arc::new(Mutex::new(subjects));
    let known = subjects.clone();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            reader.read_line(&mut request_line).ok();
            let mut line = String::new();
            // Read the rest of the request head; requests have no body.
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let path = request_line.split(' ').nth(1).unwrap_or_default();
            let body = registry_answer(&known.lock().expect("registry"), path);
            let (status, body) = match body {
                Some(body) => ("200 OK", body),
                None => ("404 Not Found", r#"{"error_code":40401}"#.to_owned()),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, subjects)
}

fn registry_answer(subjects: &[(String, Vec<u32>)], path: &str) -> Option<String> {
    let path = percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned();
    if let Some(id) = path
        .strip_prefix("/schemas/ids/")
        .and_then(|rest| rest.strip_suffix("/versions"))
    {
        let id: u32 = id.parse().ok()?;
        let held: Vec<serde_json::Value> = subjects
            .iter()
            .filter_map(|(name, ids)| {
                let at = ids.iter().position(|known| *known == id)?;
                Some(serde_json::json!({"subject": name, "version": at + 1}))
            })
            .collect();
        return (!held.is_empty()).then(|| serde_json::Value::from(held).to_string());
    }
    if path == "/subjects" {
        let names: Vec<&String> = subjects.iter().map(|(name, _)| name).collect();
        return serde_json::to_string(&names).ok();
    }
    let rest = path.strip_prefix("/subjects/")?;
    let (subject, versions) = rest.split_once("/versions")?;
    let (_, ids) = subjects.iter().find(|(name, _)| name == subject)?;
    match versions.strip_prefix('/') {
        None => serde_json::to_string(&(1..=ids.len()).collect::<Vec<_>>()).ok(),
        Some(version) => {
            let id = ids.get(version.parse::<usize>().ok()?.checked_sub(1)?)?;
            Some(serde_json::json!({"subject": subject, "version": version, "id": id}).to_string())
        }
    }
}

/// An HTTP answer read off the wire by [`raw_get`].
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// `GET path` sent byte for byte as given: HTTP clients normalise `..` and `%2e%2e` out of a
/// path before sending it, and a traversal test must send exactly what an attacker would.
pub async fn raw_get(service: &Service, path: &str) -> RawAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let address = service
        .base_url
        .strip_prefix("http://")
        .expect("an http:// service");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .expect("an answer within the deadline")
        .expect("read the answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an answer with a head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        body = unchunked(&body);
    }
    RawAnswer {
        status,
        headers,
        body,
    }
}

fn unchunked(mut chunked: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(end) = chunked.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&chunked[..end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("a chunk size");
        if size == 0 {
            break;
        }
        let start = end + 2;
        body.extend_from_slice(&chunked[start..start + size]);
        chunked = &chunked[start + size + 2..];
    }
    body
}
