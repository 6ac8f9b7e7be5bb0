//! Drill 4 (docs/reliability.md): HTTP abuse against the OpenAPI documents.
//!
//! A broker, a real OpenID provider, a kv-writer and a kv-reader with auth on, as in production.
//! Then:
//!
//! - schemathesis (`KV_SCHEMATHESIS`, installed by `scripts/install-schemathesis.sh`) reads each
//!   service's served `/openapi.yaml` and sends it valid and invalid requests (`--mode all`:
//!   bodies, parameters, headers and content types that break the schema, unknown methods, no
//!   or bad tokens) with a valid token, a fixed seed and a bounded number of examples. Every
//!   check runs: no 5xx, every status, content type, header and body as documented, invalid
//!   data refused and valid data accepted, 405 with `Allow`, 401 without a token. The only 5xx
//!   allowed is the reader's documented `503 not_ready` for a well-formed consistency token that
//!   names writes this replica never saw; the drill checks every such answer itself. Likewise
//!   the only valid request refused is one whose well-formed token names a partition the topic
//!   does not have (`400 invalid_request`, docs/api.md), which no schema can rule out.
//! - Raw TCP sends every route that takes a body a `Content-Length` of 1 GiB with a few bytes
//!   of it: the answer must be `413 payload_too_large` at once, without the body. Then a chunked
//!   body that never ends: the answer must be `413` once the limit is crossed, with at most
//!   about the limit read (plus socket buffers), and the connection closed rather than the rest
//!   of the body read and thrown away.

use crate::{reader, WRITER};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use kv_testkit::{eventually, Broker, OidcProvider, Service};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Examples per operation and phase (`KV_SCHEMATHESIS_EXAMPLES` overrides it); with the
/// coverage phase's own cases this is about 1200 requests to the writer and 900 to the reader.
const EXAMPLES: u32 = 100;
/// The seed that makes the run repeatable (`KV_SCHEMATHESIS_SEED` overrides it).
const SEED: u64 = 42;

fn examples() -> u32 {
    std::env::var("KV_SCHEMATHESIS_EXAMPLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(EXAMPLES)
}

fn seed() -> u64 {
    std::env::var("KV_SCHEMATHESIS_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(SEED)
}

/// Statuses that count as refusing invalid data: schemathesis's list plus 413, the answer to a
/// body or list over its limit.
const REJECTION_STATUSES: &str = "[400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]";

fn writer_config() -> String {
    format!(
        "# Drill 4, the writer (crates/kv-writer/tests/drills/http_abuse.rs).\n\
         [checks.negative_data_rejection]\n\
         expected-statuses = {REJECTION_STATUSES}\n\
         \n\
         # `X-KV-TTL-Seconds` and `ttl_seconds` must agree when both are given, which OpenAPI 3.0\n\
         # cannot say of a header and a query parameter: a schema-valid put may rightly be refused.\n\
         # And a put's headers are the client's to add (a proxy's, its own): one the API does not\n\
         # know is no error, which the coverage phase's unknown header takes for one; bad TTLs are\n\
         # refused end to end (crates/kv-writer/tests/e2e/ttl.rs).\n\
         [[operations]]\n\
         include-path = \"/v1/kv/{{key}}\"\n\
         include-method = \"PUT\"\n\
         checks.positive_data_acceptance.enabled = false\n\
         checks.negative_data_rejection.enabled = false\n"
    )
}

fn reader_config() -> String {
    format!(
        "# Drill 4, the reader (crates/kv-writer/tests/drills/http_abuse.rs).\n\
         [checks.negative_data_rejection]\n\
         expected-statuses = {REJECTION_STATUSES}\n\
         \n\
         # 503 not_ready answers a well-formed consistency token naming writes this replica never\n\
         # saw, as documented; the drill checks each 5xx itself.\n\
         [checks.not_a_server_error]\n\
         expected-statuses = [\"2xx\", \"3xx\", \"4xx\", 503]\n\
         \n\
         # `prefix` and `prefix_b64` exclude each other, which OpenAPI 3.0 cannot say of two\n\
         # query parameters: a schema-valid listing may rightly be refused.\n\
         [[operations]]\n\
         include-path = \"/v1/kv\"\n\
         include-method = \"GET\"\n\
         checks.positive_data_acceptance.enabled = false\n\
         \n\
         # A watch answers a stream that does not end, which a request timeout cannot tell from\n\
         # a hang; its refusals are checked end to end (crates/kv-reader/tests/e2e/watch.rs).\n\
         [[operations]]\n\
         include-path = \"/v1/kv:watch\"\n\
         enabled = false\n"
    )
}

/// A deployment with auth on: broker, provider, one writer, one reader, both ready.
struct Deployment {
    _broker: Broker,
    idp: OidcProvider,
    writer: Service,
    reader: Service,
}

impl Deployment {
    async fn start() -> Deployment {
        let broker = Broker::start();
        let topic = broker.create_topic("http-abuse", 3).await;
        let idp = OidcProvider::start("http-abuse");
        let mut env = vec![
            ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
            ("KV_API_KAFKA_KEY_VALUE_TOPIC", topic.clone()),
            ("KAFKA_GROUP_ID", format!("{topic}-reader")),
            ("KV_API_AUTH_READ", "kv:read".to_owned()),
            ("KV_API_AUTH_WRITE", "kv:write".to_owned()),
            ("KV_API_AUTH_DELETE", "kv:delete".to_owned()),
            // Random tokens name offsets nobody wrote: answer them quickly.
            ("KV_API_READ_YOUR_WRITES_TIMEOUT_MS", "100".to_owned()),
        ];
        env.extend(idp.service_env());
        let reader = Service::start(reader(), &env);
        // Conditional writes on, as deployed: the writer asks this reader for their outcome.
        env.push(("KV_API_READERS", reader.base_url.clone()));
        let writer = Service::start(WRITER, &env);
        let http = reqwest::Client::new();
        for service in [&writer, &reader] {
            eventually("the service is ready", Duration::from_secs(60), || async {
                let answer = http.get(service.url("/healthz/ready")).send().await.ok()?;
                (answer.status() == 200).then_some(())
            })
            .await;
        }
        Deployment {
            _broker: broker,
            idp,
            writer,
            reader,
        }
    }

    /// Neither service crashed.
    fn assert_running(&mut self) {
        assert!(self.writer.is_running(), "{}", self.writer.output());
        assert!(self.reader.is_running(), "{}", self.reader.output());
    }

    async fn token(&self) -> String {
        self.idp
            .token("kv-full", "kv:read kv:write kv:delete")
            .await
    }
}

/// The schemathesis command: `KV_SCHEMATHESIS`, or what the install script reports (installing
/// it on first use).
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("KV_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-schemathesis.sh");
    let output = Command::new("bash")
        .arg(script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run scripts/install-schemathesis.sh");
    assert!(output.status.success(), "installing schemathesis failed");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// What one schemathesis run saw.
#[derive(Debug, Default)]
struct Fuzzed {
    version: String,
    requests: usize,
    /// Requests per answer status.
    statuses: std::collections::BTreeMap<u16, usize>,
    /// Every 5xx that is not the documented read-your-writes timeout, described.
    server_errors: Vec<String>,
    /// `503 not_ready` for a well-formed token naming writes this replica never saw.
    documented_503: usize,
    /// Valid requests refused with `400 invalid_request` because their token names a partition
    /// the topic does not have.
    documented_400: usize,
    checks: usize,
    failed_checks: Vec<String>,
    /// Requests that got no answer (connection refused or reset, timeout).
    errors: usize,
    exit_code: Option<i32>,
    output: String,
}

/// Runs schemathesis against `service`'s served document with `config`, and reads its reports.
async fn fuzz(service: &Service, config: String, token: String) -> Fuzzed {
    let base = service.base_url.clone();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().expect("report folder");
        let config_file = dir.path().join("schemathesis.toml");
        std::fs::write(&config_file, config).expect("write the config");
        let json_report = dir.path().join("report.json");
        let events = dir.path().join("events.ndjson");
        let output = Command::new(schemathesis())
            .current_dir(dir.path())
            .arg("--config-file")
            .arg(&config_file)
            .arg("run")
            .arg(format!("{base}/openapi.yaml"))
            .args(["--url", &base])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(["--mode", "all"])
            .args(["--max-examples", &examples().to_string()])
            .args(["--seed", &seed().to_string()])
            .args(["--generation-database", "none"])
            .args(["--request-timeout", "10"])
            .arg("--continue-on-failure")
            .args(["--report", "json,ndjson"])
            .arg("--report-json-path")
            .arg(&json_report)
            .arg("--report-ndjson-path")
            .arg(&events)
            .args(["--output-sanitize", "false", "--no-color"])
            .output()
            .expect("run schemathesis");
        let mut fuzzed = Fuzzed {
            exit_code: output.status.code(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
            ..Fuzzed::default()
        };
        let report: Value = std::fs::read_to_string(&json_report)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_else(|| panic!("no schemathesis report; its output:\n{}", fuzzed.output));
        fuzzed.version = report["schemathesis_version"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        fuzzed.errors = report["test_cases"]["errored"].as_u64().unwrap_or(0) as usize
            + report["errors"].as_array().map_or(0, Vec::len);
        let events = std::fs::read_to_string(&events).expect("the ndjson report");
        for line in events.lines() {
            let event: Value = serde_json::from_str(line).expect("an ndjson event");
            let recorder = &event["ScenarioFinished"]["recorder"];
            if let Some(interactions) = recorder["interactions"].as_object() {
                for interaction in interactions.values() {
                    fuzzed.record(interaction);
                }
            }
            if let Some(cases) = recorder["checks"].as_object() {
                for (case, checks) in cases {
                    for check in checks.as_array().into_iter().flatten() {
                        fuzzed.checks += 1;
                        let status = check["status"].as_str().unwrap_or_default();
                        if status != "success" && status != "skip" {
                            let name = check["name"].as_str().unwrap_or("?");
                            if name == "positive_data_acceptance"
                                && names_a_missing_partition(&recorder["interactions"][case])
                            {
                                fuzzed.documented_400 += 1;
                                continue;
                            }
                            let label = recorder["label"].as_str().unwrap_or("?");
                            fuzzed
                                .failed_checks
                                .push(format!("{name} ({status}) on {label}, case {case}"));
                        }
                    }
                }
            }
        }
        fuzzed
    })
    .await
    .expect("schemathesis thread")
}

/// Whether the reader refused the request because its consistency token names a partition the
/// topic does not have.
fn names_a_missing_partition(interaction: &Value) -> bool {
    let body = interaction["response"]["content"]["$base64"]
        .as_str()
        .and_then(|b64| STANDARD.decode(b64).ok())
        .and_then(|body| serde_json::from_slice::<Value>(&body).ok());
    interaction["response"]["status_code"] == 400
        && body.is_some_and(|body| {
            body["error"]["code"] == "invalid_request"
                && body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("cannot name a write of this topic"))
        })
}

impl Fuzzed {
    fn record(&mut self, interaction: &Value) {
        self.requests += 1;
        let request = &interaction["request"];
        let Some(status) = interaction["response"]["status_code"].as_u64() else {
            self.errors += 1;
            return;
        };
        let status = status as u16;
        *self.statuses.entry(status).or_default() += 1;
        if status < 500 {
            return;
        }
        let body = interaction["response"]["content"]["$base64"]
            .as_str()
            .and_then(|b64| STANDARD.decode(b64).ok())
            .unwrap_or_default();
        let code = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|body| body["error"]["code"].as_str().map(str::to_owned));
        let uri = request["uri"].as_str().unwrap_or_default();
        // A read given a position waits for it, and says `not_ready` when it was not applied in
        // time: a token, or the outcome of the record at a position (`/v1/outcomes/{p}/{o}`).
        let carries_token = uri.contains("consistency_token=")
            || uri.contains("/v1/outcomes/")
            || request["headers"].as_object().is_some_and(|h| {
                h.keys()
                    .any(|k| k.eq_ignore_ascii_case("x-consistency-token"))
            });
        if status == 503 && code.as_deref() == Some("not_ready") && carries_token {
            self.documented_503 += 1;
        } else {
            self.server_errors.push(format!(
                "{status} {} {} {uri}: {}",
                code.unwrap_or_default(),
                request["method"].as_str().unwrap_or_default(),
                String::from_utf8_lossy(&body)
            ));
        }
    }

    /// Fails the drill, with schemathesis's own account, on any 5xx, failed check or error.
    fn assert_clean(&self, service: &str) {
        let problems = self.server_errors.len() + self.failed_checks.len() + self.errors;
        // schemathesis exits 1 on the documented refusals too; they were counted apart.
        let exit_ok =
            self.exit_code == Some(0) || (self.exit_code == Some(1) && self.documented_400 > 0);
        assert!(
            problems == 0 && exit_ok && self.requests > 0,
            "schemathesis against the {service}: exit {:?}, {} requests, 5xx: {:#?}, failed \
             checks: {:#?}, {} errors\n{}",
            self.exit_code,
            self.requests,
            self.server_errors,
            self.failed_checks,
            self.errors,
            self.output
        );
    }
}

#[tokio::test]
#[ignore = "a drill: make drills runs it"]
async fn drill_schemathesis_gets_no_5xx_and_no_failed_check_from_either_service_with_auth_on() {
    let started = Instant::now();
    let mut deployment = Deployment::start().await;

    // A fresh token per run: the provider's tokens live five minutes.
    let writer = fuzz(
        &deployment.writer,
        writer_config(),
        deployment.token().await,
    )
    .await;
    println!(
        "writer: {} requests by status {:?}, {} checks, in {:.0?}",
        writer.requests,
        writer.statuses,
        writer.checks,
        started.elapsed()
    );
    writer.assert_clean("writer");
    let reader = fuzz(
        &deployment.reader,
        reader_config(),
        deployment.token().await,
    )
    .await;
    println!(
        "reader: {} requests by status {:?}, {} checks, in {:.0?}",
        reader.requests,
        reader.statuses,
        reader.checks,
        started.elapsed()
    );
    reader.assert_clean("reader");
    deployment.assert_running();

    println!(
        "drill HTTP abuse (schemathesis {}, --mode all, {} examples, seed {}, auth on): writer \
         {} requests, reader {} requests, 5xx = 0 (besides {} documented 503 not_ready for \
         tokens naming unwritten offsets), failed checks = 0 of {} (besides {} documented 400 \
         invalid_request for tokens naming a partition the topic lacks), in {:.0?}",
        writer.version,
        examples(),
        seed(),
        writer.requests,
        reader.requests,
        reader.documented_503,
        writer.checks + reader.checks,
        reader.documented_400,
        started.elapsed()
    );
}

/// A route that takes a body, and how its body starts.
struct BodyRoute {
    reader: bool,
    method: &'static str,
    path: &'static str,
    content_type: &'static str,
    opening: &'static [u8],
}

const BODY_ROUTES: [BodyRoute; 8] = [
    BodyRoute {
        reader: false,
        method: "PUT",
        path: "/v1/kv/oversized",
        content_type: "application/octet-stream",
        opening: b"raw bytes",
    },
    BodyRoute {
        reader: false,
        method: "POST",
        path: "/store",
        content_type: "application/json",
        opening: br#"{"key":"oversized","value":""#,
    },
    BodyRoute {
        reader: false,
        method: "POST",
        path: "/store/b64",
        content_type: "application/json",
        opening: br#"{"key":"AP8=","value":""#,
    },
    BodyRoute {
        reader: false,
        method: "POST",
        path: "/remove",
        content_type: "application/json",
        opening: br#"{"key":""#,
    },
    BodyRoute {
        reader: false,
        method: "POST",
        path: "/v1/kv:batch",
        content_type: "application/json",
        opening: br#"{"items":[{"key":"oversized","value":""#,
    },
    BodyRoute {
        reader: true,
        method: "POST",
        path: "/retrieve",
        content_type: "application/json",
        opening: br#"{"key":""#,
    },
    BodyRoute {
        reader: true,
        method: "POST",
        path: "/retrieve/b64",
        content_type: "application/json",
        opening: br#"{"key":""#,
    },
    BodyRoute {
        reader: true,
        method: "POST",
        path: "/v1/kv:batchGet",
        content_type: "application/json",
        opening: br#"{"keys":[""#,
    },
];

const GIB: u64 = 1 << 30;
/// "Promptly": far longer than a refusal takes, far shorter than reading 1 GiB.
const PROMPTLY: Duration = Duration::from_secs(10);
/// How long a refused connection may go on taking bytes before the server closes it (actix
/// lingers about a second so that the client reads the answer before the close).
const CLOSE_DEADLINE: Duration = Duration::from_secs(20);
/// What the sockets between the client and the server can hold besides what the server read:
/// on loopback Linux autotunes the receiver's buffer up to 6 MiB (`tcp_rmem`) and the
/// sender's up to 4 MiB (`tcp_wmem`).
const SOCKET_BUFFERS: u64 = 16 << 20;

impl BodyRoute {
    fn label(&self) -> String {
        let service = if self.reader { "reader" } else { "writer" };
        format!("{service} {} {}", self.method, self.path)
    }

    fn address<'a>(&self, deployment: &'a Deployment) -> &'a str {
        let service = if self.reader {
            &deployment.reader
        } else {
            &deployment.writer
        };
        service
            .base_url
            .strip_prefix("http://")
            .expect("an http URL")
    }

    fn head(&self, address: &str, token: &str, framing: &str) -> Vec<u8> {
        format!(
            "{} {} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: {}\r\n{framing}\r\n",
            self.method, self.path, self.content_type
        )
        .into_bytes()
    }
}

/// An HTTP answer as read off the socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    /// Parses a whole answer; `None` while the head or the body is incomplete.
    fn parse(bytes: &[u8]) -> Option<Answer> {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&bytes[..end]);
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(name, _)| name == "content-length")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(0);
        let body = bytes.get(end + 4..end + 4 + length)?.to_vec();
        Some(Answer {
            status,
            headers,
            body,
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Checks the refusal is the error contract's 413 and closes the connection; returns the
    /// limit the message names.
    fn assert_refused(&self, what: &str) -> u64 {
        let body: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        assert!(
            self.status == 413 && body["error"]["code"] == "payload_too_large",
            "{what}: {self:?} {body}"
        );
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{what}: {self:?}"
        );
        assert_eq!(self.header("connection"), Some("close"), "{what}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        message
            .split(|c: char| !c.is_ascii_digit())
            .rev()
            .find_map(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{what}: no limit in {message:?}"))
    }
}

/// Declares a 1 GiB body, sends a few bytes of it and reads the answer: it must come without
/// the rest. Returns how long it took and the limit the refusal names.
async fn declared_gibibyte(route: &BodyRoute, address: &str, token: &str) -> (Duration, u64) {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let started = Instant::now();
    let head = route.head(address, token, &format!("Content-Length: {GIB}\r\n"));
    stream.write_all(&head).await.expect("send the head");
    stream
        .write_all(route.opening)
        .await
        .expect("send a few bytes");
    let answer = tokio::time::timeout(PROMPTLY, async {
        let mut bytes = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            if let Some(answer) = Answer::parse(&bytes) {
                return answer;
            }
            let n = stream.read(&mut buffer).await.expect("read the answer");
            assert!(n > 0, "{}: closed without an answer", route.label());
            bytes.extend_from_slice(&buffer[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{}: no answer to a declared 1 GiB body within {PROMPTLY:?} of a few bytes",
            route.label()
        )
    });
    let elapsed = started.elapsed();
    (elapsed, answer.assert_refused(&route.label()))
}

/// What a chunked body that never ends got.
struct Chunked {
    /// Bytes the server had taken (read, or buffered in the sockets) when its answer came.
    sent_before_answer: u64,
    /// Bytes taken between the answer and the close.
    sent_after_answer: u64,
    answer: Answer,
}

/// Streams a chunked body in 64 KiB chunks until the server answers and then closes.
async fn endless_chunked_body(route: &BodyRoute, address: &str, token: &str) -> Chunked {
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut from_server, mut to_server) = stream.into_split();
    let sent = Arc::new(AtomicU64::new(0));
    let sent_at_answer = Arc::new(AtomicU64::new(u64::MAX));
    let answered = Arc::new(AtomicBool::new(false));
    let listener = tokio::spawn({
        let (sent, sent_at_answer, answered) =
            (sent.clone(), sent_at_answer.clone(), answered.clone());
        async move {
            let mut bytes = Vec::new();
            let mut buffer = [0u8; 4096];
            // Until the close; a reset after the answer ends it too.
            while let Ok(n @ 1..) = from_server.read(&mut buffer).await {
                if bytes.is_empty() {
                    sent_at_answer.store(sent.load(Ordering::SeqCst), Ordering::SeqCst);
                    answered.store(true, Ordering::SeqCst);
                }
                bytes.extend_from_slice(&buffer[..n]);
            }
            bytes
        }
    });
    let head = route.head(address, token, "Transfer-Encoding: chunked\r\n");
    to_server.write_all(&head).await.expect("send the head");
    let mut opening = format!("{:x}\r\n", route.opening.len()).into_bytes();
    opening.extend_from_slice(route.opening);
    opening.extend_from_slice(b"\r\n");
    to_server
        .write_all(&opening)
        .await
        .expect("send the opening");
    let mut chunk = b"10000\r\n".to_vec();
    chunk.extend(std::iter::repeat_n(b'a', 0x10000));
    chunk.extend_from_slice(b"\r\n");
    let mut answer_seen: Option<Instant> = None;
    let mut closed = false;
    loop {
        if answer_seen.is_none() && answered.load(Ordering::SeqCst) {
            answer_seen = Some(Instant::now());
        }
        match answer_seen {
            None if sent.load(Ordering::SeqCst) > GIB => break,
            Some(seen) if seen.elapsed() > CLOSE_DEADLINE => break,
            _ => {}
        }
        match tokio::time::timeout(PROMPTLY, to_server.write_all(&chunk)).await {
            Ok(Ok(())) => {
                sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            Ok(Err(_)) => {
                closed = true;
                break;
            }
            // The server stopped taking bytes without closing.
            Err(_) => break,
        }
    }
    drop(to_server);
    let bytes = tokio::time::timeout(CLOSE_DEADLINE, listener)
        .await
        .unwrap_or_else(|_| panic!("{}: the connection did not end", route.label()))
        .expect("listener");
    let label = route.label();
    let answer = Answer::parse(&bytes).unwrap_or_else(|| {
        panic!(
            "{label}: no answer after {} bytes of a chunked body: {:?}",
            sent.load(Ordering::SeqCst),
            String::from_utf8_lossy(&bytes)
        )
    });
    assert!(
        closed,
        "{label}: the server kept taking the refused body ({} bytes) instead of closing",
        sent.load(Ordering::SeqCst)
    );
    let sent_before_answer = sent_at_answer.load(Ordering::SeqCst);
    Chunked {
        sent_before_answer,
        sent_after_answer: sent.load(Ordering::SeqCst) - sent_before_answer,
        answer,
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a drill: make drills runs it"]
async fn drill_oversized_bodies_are_refused_with_413_before_or_as_the_limit_is_crossed_and_never_read_whole(
) {
    let started = Instant::now();
    let mut deployment = Deployment::start().await;
    let token = deployment.token().await;
    let mut slowest = Duration::ZERO;
    let mut headline = String::new();
    let mut worst_ratio = 0.0_f64;
    for route in &BODY_ROUTES {
        let label = route.label();
        let address = route.address(&deployment);
        let (elapsed, limit) = declared_gibibyte(route, address, &token).await;
        slowest = slowest.max(elapsed);

        let chunked = endless_chunked_body(route, address, &token).await;
        let chunked_limit = chunked.answer.assert_refused(&label);
        assert_eq!(chunked_limit, limit, "{label}: two limits");
        assert!(
            chunked.sent_before_answer <= 2 * limit + SOCKET_BUFFERS,
            "{label}: {} bytes of a chunked body taken before the 413, limit {limit}",
            chunked.sent_before_answer
        );
        let ratio = chunked.sent_before_answer as f64 / limit as f64;
        worst_ratio = worst_ratio.max(ratio);
        println!(
            "{label}: 1 GiB declared refused in {elapsed:.0?}; chunked refused after {} \
             (limit {}, {ratio:.1}x with socket buffers), {} more taken before the close",
            mib(chunked.sent_before_answer),
            mib(limit),
            mib(chunked.sent_after_answer)
        );
        if headline.is_empty() {
            headline = format!(
                "{} {} chunked refused after {} bytes (limit {limit})",
                route.method, route.path, chunked.sent_before_answer
            );
        }
    }
    deployment.assert_running();
    println!(
        "drill oversized bodies: 1 GiB declared refused with 413 before the body on {} routes \
         (slowest {slowest:.0?}); {headline}; every chunked refusal within {worst_ratio:.1}x its \
         limit including socket buffers, and its connection closed instead of drained, in {:.0?}",
        BODY_ROUTES.len(),
        started.elapsed()
    );
}
