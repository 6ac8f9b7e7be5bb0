//! A stub kv-reader for the writer's conditional-write tests: a small HTTP/1.1 server on
//! loopback that answers `GET /v1/outcomes/{partition}/{offset}` with scripted replies and
//! records every request it got (method, path, headers, records asked), so a test can check
//! what the writer asked and forwarded. Replies are scripted per record position, in order (the
//! last one repeats), with a fallback for positions not scripted (`404 outcome_unknown` unless
//! told).
//!
//! `POST /v1/outcomes:batchGet` is answered item by item from the same scripts: a `200` reply
//! becomes the item's outcome, another its error (`outcome_not_found`, `partition_not_held`,
//! `not_ready`, or the scripted code); a `401`/`403` scripted for any record refuses the whole
//! request, as a reader checks credentials once per request. The batch waits for the longest
//! delay of its records' replies. [`StubReader::start_without_batches`] is a reader older than
//! that route: it answers it `404 not_found`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

/// One reply of the stub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
    /// How long the stub waits before answering.
    pub delay: Duration,
}

impl Reply {
    /// `200` with an outcome as the reader's contract has it.
    pub fn outcome(
        partition: i32,
        offset: i64,
        applied: bool,
        version: Option<(i32, i64)>,
        first: Option<i64>,
    ) -> Reply {
        let version = version.map(|(p, o)| json!({"partition": p, "offset": o}));
        Reply::json(
            200,
            json!({"partition": partition, "offset": offset, "applied": applied,
                   "version": version, "first": first}),
        )
    }

    /// `200`: the record at (partition, offset) took effect and is the key's version.
    pub fn applied(partition: i32, offset: i64) -> Reply {
        Reply::outcome(partition, offset, true, Some((partition, offset)), None)
    }

    /// `200`: the record did not take effect; the key's version is `version` (`None`: absent).
    pub fn failed(partition: i32, offset: i64, version: Option<(i32, i64)>) -> Reply {
        Reply::outcome(partition, offset, false, version, None)
    }

    /// `404 outcome_unknown`: this reader has no decision for the record.
    pub fn unknown() -> Reply {
        Reply::error(404, "outcome_unknown")
    }

    /// `421 partition_not_held`: this reader does not hold the partition.
    pub fn not_held() -> Reply {
        Reply::error(421, "partition_not_held")
    }

    /// `503` with `Retry-After: 1`: not applied yet.
    pub fn not_yet() -> Reply {
        let mut reply = Reply::error(503, "not_ready");
        reply.headers.push(("Retry-After".into(), "1".into()));
        reply
    }

    /// The error contract's body with `code`.
    pub fn error(status: u16, code: &str) -> Reply {
        Reply::json(
            status,
            json!({"error": {"code": code, "message": format!("stub reader: {code}")}}),
        )
    }

    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: body.to_string(),
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// This reply, answered after `delay`.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// A request the stub got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The records an outcome request asked about, in order: one for the single route, the
    /// batch's for `POST /v1/outcomes:batchGet`.
    pub records: Vec<(i32, i64)>,
    /// The status the stub answered.
    pub status: u16,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The (partition, offset) of a single outcome request (`GET /v1/outcomes/{p}/{o}`).
    pub fn position(&self) -> Option<(i32, i64)> {
        single_position(&self.path)
    }

    /// Whether this is a `POST /v1/outcomes:batchGet`.
    pub fn is_batch(&self) -> bool {
        self.method == "POST" && route(&self.path) == BATCH_ROUTE
    }
}

const BATCH_ROUTE: &str = "/v1/outcomes:batchGet";

/// The path without its query.
fn route(path: &str) -> &str {
    path.split_once('?').map_or(path, |(route, _)| route)
}

fn single_position(path: &str) -> Option<(i32, i64)> {
    let rest = route(path).strip_prefix("/v1/outcomes/")?;
    let (p, o) = rest.split_once('/')?;
    Some((p.parse().ok()?, o.parse().ok()?))
}

type Fallback = Box<dyn Fn(i32, i64) -> Reply + Send + Sync>;

struct Shared {
    scripts: Mutex<HashMap<(i32, i64), Vec<Reply>>>,
    fallback: Mutex<Fallback>,
    seen: Mutex<Vec<Seen>>,
    stopped: AtomicBool,
    /// Whether `POST /v1/outcomes:batchGet` is served.
    batches: bool,
}

impl Shared {
    /// The reply to a request, and the records it asked about.
    fn reply_for(&self, method: &str, path: &str, body: &[u8]) -> (Reply, Vec<(i32, i64)>) {
        if method == "POST" && route(path) == BATCH_ROUTE {
            let Some(records) = batch_records(body) else {
                return (Reply::error(400, "invalid_request"), Vec::new());
            };
            if !self.batches {
                return (Reply::error(404, "not_found"), records);
            }
            let replies: Vec<Reply> = records
                .iter()
                .map(|&(partition, offset)| self.reply_at(partition, offset))
                .collect();
            return (batch_reply(&records, replies), records);
        }
        match single_position(path) {
            Some((partition, offset)) => {
                (self.reply_at(partition, offset), vec![(partition, offset)])
            }
            None => (Reply::error(404, "not_found"), Vec::new()),
        }
    }

    /// The next scripted reply for the record at (partition, offset).
    fn reply_at(&self, partition: i32, offset: i64) -> Reply {
        let mut scripts = self.scripts.lock().expect("scripts");
        if let Some(replies) = scripts.get_mut(&(partition, offset)) {
            if replies.len() > 1 {
                return replies.remove(0);
            }
            if let Some(last) = replies.first() {
                return last.clone();
            }
        }
        drop(scripts);
        (self.fallback.lock().expect("fallback"))(partition, offset)
    }
}

/// The records of a batch request's body, `None` when it is not the documented JSON.
fn batch_records(body: &[u8]) -> Option<Vec<(i32, i64)>> {
    let body: Value = serde_json::from_slice(body).ok()?;
    body["records"]
        .as_array()?
        .iter()
        .map(|record| {
            let partition = i32::try_from(record["partition"].as_i64()?).ok()?;
            Some((partition, record["offset"].as_i64()?))
        })
        .collect()
}

/// The batch answer made of each record's scripted reply, in order.
fn batch_reply(records: &[(i32, i64)], replies: Vec<Reply>) -> Reply {
    let delay = replies.iter().map(|r| r.delay).max().unwrap_or_default();
    if let Some(refusal) = replies.iter().find(|r| matches!(r.status, 401 | 403)) {
        return refusal.clone().after(delay);
    }
    let items: Vec<Value> = records
        .iter()
        .zip(replies)
        .map(|(&(partition, offset), reply)| {
            let body: Value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
            if reply.status == 200 {
                return json!({"partition": partition, "offset": offset, "outcome": body});
            }
            let code = match reply.status {
                404 => "outcome_not_found".to_owned(),
                421 => "partition_not_held".to_owned(),
                503 => "not_ready".to_owned(),
                _ => body["error"]["code"]
                    .as_str()
                    .unwrap_or("internal")
                    .to_owned(),
            };
            json!({"partition": partition, "offset": offset,
                   "error": {"code": code, "message": format!("stub reader: {code}")}})
        })
        .collect();
    Reply::json(200, json!({ "outcomes": items })).after(delay)
}

/// The stub reader, stopped on drop.
pub struct StubReader {
    base_url: String,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StubReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StubReader")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl StubReader {
    /// Starts listening on a free loopback port; every position answers `404 outcome_unknown`
    /// until scripted. Questions are answered alone and in batches.
    pub fn start() -> StubReader {
        StubReader::started(true)
    }

    /// A reader older than `POST /v1/outcomes:batchGet`: it answers that route `404 not_found`
    /// and every question only alone.
    pub fn start_without_batches() -> StubReader {
        StubReader::started(false)
    }

    fn started(batches: bool) -> StubReader {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the stub reader");
        let address = listener.local_addr().expect("its address");
        let shared = Arc::new(Shared {
            scripts: Mutex::new(HashMap::new()),
            fallback: Mutex::new(Box::new(|_, _| Reply::unknown())),
            seen: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            batches,
        });
        let accepting = shared.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let shared = accepting.clone();
                thread::spawn(move || serve(stream, &shared));
            }
        });
        StubReader {
            base_url: format!("http://{address}"),
            shared,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The replies for the record at (partition, offset), in order; the last one repeats.
    pub fn script(&self, partition: i32, offset: i64, replies: Vec<Reply>) {
        self.shared
            .scripts
            .lock()
            .expect("scripts")
            .insert((partition, offset), replies);
    }

    /// The reply for every position not scripted.
    pub fn answer_others(&self, reply: impl Fn(i32, i64) -> Reply + Send + Sync + 'static) {
        *self.shared.fallback.lock().expect("fallback") = Box::new(reply);
    }

    /// Every request so far, in the order received.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("seen").clone()
    }

    /// The records asked about so far, alone or in batches, in order: one per question
    /// answered (a batch a stub without the route refused answered none).
    pub fn asked(&self) -> Vec<(i32, i64)> {
        self.requests()
            .into_iter()
            .filter(|seen| !(seen.is_batch() && seen.status == 404))
            .flat_map(|seen| seen.records)
            .collect()
    }

    /// The records of each `POST /v1/outcomes:batchGet` so far (also those a stub without the
    /// route refused), in order.
    pub fn batches(&self) -> Vec<Vec<(i32, i64)>> {
        self.requests()
            .into_iter()
            .filter(Seen::is_batch)
            .map(|seen| seen.records)
            .collect()
    }
}

impl Drop for StubReader {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        // Wakes the accepting thread so it sees the flag.
        let _ = TcpStream::connect(self.base_url.trim_start_matches("http://"));
    }
}

/// Serves one connection, keep-alive, until the client closes it.
fn serve(stream: TcpStream, shared: &Shared) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, path) = (method.to_owned(), path.to_owned());
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
                if name == "content-length" {
                    length = value.parse().unwrap_or(0);
                }
                headers.push((name, value));
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if shared.stopped.load(Ordering::Relaxed) {
            return;
        }
        let (reply, records) = shared.reply_for(&method, &path, &body);
        shared.seen.lock().expect("seen").push(Seen {
            method,
            path,
            headers,
            records,
            status: reply.status,
        });
        thread::sleep(reply.delay);
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            reply.status,
            reason(reply.status),
            reply.body.len()
        );
        for (name, value) in &reply.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        if writer.write_all(head.as_bytes()).is_err()
            || writer.write_all(reply.body.as_bytes()).is_err()
        {
            return;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        421 => "Misdirected Request",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
