//! The Redis-protocol read port end to end: the real reader binary with `KV_API_RESP_LISTEN`,
//! written through the real kv-writer on the real broker, read with the `redis` client crate,
//! with `redis-cli` (Debian's redis-tools), and with raw bytes for what no client sends.

use crate::{writer, READER};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kv_testkit::resp::{resp_address, resp_env_with_auth};
use kv_testkit::{eventually, service_env, Broker, OidcProvider, Service, DEADLINE};
use proptest::prelude::*;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;

/// A reader's environment with the port on a free port.
fn resp_env(broker: &Broker, topic: &str) -> Vec<(&'static str, String)> {
    let mut env = service_env(broker, topic);
    env.push(("KV_API_RESP_LISTEN", "127.0.0.1:0".to_owned()));
    env
}

async fn connect(address: &str, query: &str) -> MultiplexedConnection {
    connect_to(&format!("redis://{address}/{query}"))
        .await
        .expect("connect to the Redis-protocol port")
}

/// A connection as the client crate makes it, with room for `KV.WAIT`'s waits (it gives up
/// on an answer after 500 ms unless told otherwise).
async fn connect_to(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    let mut connection = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    connection.set_response_timeout(Duration::from_secs(30));
    Ok(connection)
}

/// Writes through kv-writer; its consistency token.
async fn put(http: &reqwest::Client, writer: &Service, key: &str, value: &[u8]) -> String {
    let written = http
        .put(writer.url(&format!("/v1/kv/{key}")))
        .body(value.to_vec())
        .send()
        .await
        .expect("write");
    assert_eq!(written.status(), 200, "{}", writer.output());
    written.headers()["x-consistency-token"]
        .to_str()
        .expect("token")
        .to_owned()
}

/// Waits until the key reads as `value` on `connection`.
async fn read_back(connection: &MultiplexedConnection, key: &str, value: &[u8]) {
    eventually("the value on the RESP port", DEADLINE, || {
        let mut connection = connection.clone();
        async move {
            let got: Option<Vec<u8>> = connection.get(key).await.ok()?;
            (got.as_deref() == Some(value)).then_some(())
        }
    })
    .await;
}

/// `redis-cli` (Debian's redis-tools, which the test scripts install) against the port.
fn redis_cli(address: &str, args: &[&str]) -> std::process::Output {
    let (host, port) = address.rsplit_once(':').expect("host:port");
    let output = std::process::Command::new("redis-cli")
        .args(["-h", host, "-p", port])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run redis-cli (Debian's redis-tools)");
    assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
    output
}

/// Sends `bytes` on a fresh connection and reads what comes back until the server closes it
/// or `wait` passes.
fn exchange(address: &str, bytes: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let _ = stream.write_all(bytes);
    let deadline = Instant::now() + wait;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => return (answer, true),
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (answer, true),
            Err(_) => {}
        }
    }
    (answer, false)
}

fn error_code(error: &redis::RedisError) -> String {
    error.code().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_value_written_through_the_writer_reads_back_byte_exact_over_resp() {
    let broker = Broker::start();
    let topic = broker.create_topic("resp-get", 3).await;
    let writer = Service::start(writer(), &service_env(&broker, &topic));
    let reader = Service::start(READER, &resp_env(&broker, &topic));
    let address = resp_address(&reader);
    let http = reqwest::Client::new();
    let binary: Vec<u8> = (0..=255u8).chain(b"\r\n$-1\r\n".iter().copied()).collect();
    put(&http, &writer, "users%2Fada", &binary).await;
    put(&http, &writer, "empty", b"").await;
    put(&http, &writer, "text", "hëllo wörld".as_bytes()).await;

    let resp2 = connect(&address, "").await;
    read_back(&resp2, "users/ada", &binary).await;
    read_back(&resp2, "text", "hëllo wörld".as_bytes()).await;
    read_back(&resp2, "empty", b"").await;
    let mut resp3 = connect(&address, "?protocol=resp3").await;
    let got: Option<Vec<u8>> = resp3.get("users/ada").await.expect("get over RESP3");
    assert_eq!(got.as_deref(), Some(binary.as_slice()));
    let missing: Option<Vec<u8>> = resp3.get("no-such-key").await.expect("get");
    assert_eq!(missing, None);

    let mut connection = resp2.clone();
    let values: Vec<Option<Vec<u8>>> = connection
        .mget(&["text", "no-such-key", "users/ada", "empty", "text"])
        .await
        .expect("mget");
    assert_eq!(
        values,
        vec![
            Some("hëllo wörld".as_bytes().to_vec()),
            None,
            Some(binary.clone()),
            Some(Vec::new()),
            Some("hëllo wörld".as_bytes().to_vec()),
        ],
        "MGET answers in the order asked"
    );
    let exists: i64 = connection
        .exists(&["text", "no-such-key", "text"])
        .await
        .expect("exists");
    assert_eq!(exists, 2);
    let len: i64 = connection.strlen("users/ada").await.expect("strlen");
    assert_eq!(len, binary.len() as i64);
    let kind: String = redis::cmd("TYPE")
        .arg("text")
        .query_async(&mut connection)
        .await
        .expect("type");
    assert_eq!(kind, "string");
    let size: i64 = redis::cmd("DBSIZE")
        .query_async(&mut connection)
        .await
        .expect("dbsize");
    assert_eq!(size, 3);

    // The same bytes as the HTTP GET returns, through redis-cli too.
    let http_value = http
        .get(reader.url("/v1/kv/users%2Fada"))
        .send()
        .await
        .expect("http get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(http_value.as_ref(), binary.as_slice());
    let printed = redis_cli(&address, &["--raw", "GET", "users/ada"]).stdout;
    assert_eq!(printed, [binary.as_slice(), b"\n"].concat());
    let printed = redis_cli(&address, &["--raw", "MGET", "text", "nope"]).stdout;
    assert_eq!(printed, "hëllo wörld\n\n".as_bytes());

    // A key that expires is hidden from its expiry on, as on HTTP.
    let expiring = http
        .put(writer.url("/v1/kv/short-lived"))
        .header("x-kv-ttl-seconds", "1")
        .body("soon gone")
        .send()
        .await
        .expect("write with a TTL");
    assert_eq!(expiring.status(), 200);
    read_back(&resp2, "short-lived", b"soon gone").await;
    eventually("the expired key to be hidden", DEADLINE, || {
        let mut connection = resp2.clone();
        async move {
            let got: Option<Vec<u8>> = connection.get("short-lived").await.ok()?;
            got.is_none().then_some(())
        }
    })
    .await;
    let status = http
        .get(reader.url("/v1/kv/short-lived"))
        .send()
        .await
        .expect("http get")
        .status();
    assert_eq!(status, 404, "both ports hide it alike");

    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut connection)
        .await
        .expect("info");
    assert!(info.contains("role:slave"), "{info}");
    assert!(info.contains("kv_replica_applied:"), "{info}");
    assert!(info.contains("kv_partition_0:applied="), "{info}");
    let count: i64 = redis::cmd("COMMAND")
        .arg("COUNT")
        .query_async(&mut connection)
        .await
        .expect("command count");
    assert!(count >= 10);
    let pong = redis_cli(&address, &["PING"]).stdout;
    assert_eq!(pong, b"PONG\n");
    let metrics = reader.metrics(&http).await;
    assert!(
        metrics.contains(r#"kv_reader_resp_commands_total{command="get"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn scan_pages_through_a_prefix_exactly_and_writes_are_refused_as_on_a_replica() {
    let broker = Broker::start();
    let topic = broker.create_topic("resp-scan", 3).await;
    let writer = Service::start(writer(), &service_env(&broker, &topic));
    let reader = Service::start(READER, &resp_env(&broker, &topic));
    let address = resp_address(&reader);
    let http = reqwest::Client::new();
    let mut items: Vec<serde_json::Value> = (0..57)
        .map(|i| serde_json::json!({"key": format!("p/{i:03}"), "value": "x"}))
        .collect();
    items.extend((0..9).map(|i| serde_json::json!({"key": format!("q/{i}"), "value": "y"})));
    items.push(serde_json::json!({"key": "p", "value": "not under p/"}));
    let written = http
        .post(writer.url("/v1/kv:batch"))
        .json(&serde_json::json!({ "items": items }))
        .send()
        .await
        .expect("batch");
    assert_eq!(written.status(), 200, "{}", writer.output());
    let connection = connect(&address, "").await;
    eventually("every key on the reader", DEADLINE, || {
        let mut connection = connection.clone();
        async move {
            let size: i64 = redis::cmd("DBSIZE")
                .query_async(&mut connection)
                .await
                .ok()?;
            (size == 67).then_some(())
        }
    })
    .await;
    let expected: Vec<String> = (0..57).map(|i| format!("p/{i:03}")).collect();

    // Page by page by hand: each key once, in byte order, then cursor 0.
    let mut connection = connection.clone();
    let (mut cursor, mut seen, mut pages) = (0u64, Vec::<String>::new(), 0);
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("p/*")
            .arg("COUNT")
            .arg(10)
            .query_async(&mut connection)
            .await
            .expect("scan");
        assert!(keys.len() <= 10);
        seen.extend(keys);
        pages += 1;
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen, expected);
    assert_eq!(pages, 6);
    // The client crate's own iterator, and redis-cli's --scan.
    let mut iterated: Vec<String> = connection
        .scan_match::<_, String>("p/*")
        .await
        .expect("scan_match")
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every page");
    iterated.sort();
    assert_eq!(iterated, expected);
    let listed = redis_cli(&address, &["--scan", "--pattern", "p/*"]).stdout;
    let mut listed: Vec<String> = String::from_utf8(listed)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect();
    listed.sort();
    assert_eq!(listed, expected);
    let all: Vec<String> = connection
        .scan::<String>()
        .await
        .expect("scan")
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every page");
    assert_eq!(all.len(), 67);

    let refused = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg("p/?1")
        .query_async::<redis::Value>(&mut connection)
        .await
        .expect_err("a glob pattern");
    assert!(refused.to_string().contains("prefix pattern"), "{refused}");
    let refused = redis::cmd("SCAN")
        .arg(123)
        .query_async::<redis::Value>(&mut connection)
        .await
        .expect_err("a cursor never handed out");
    assert!(refused.to_string().contains("invalid cursor"), "{refused}");

    for write in [
        redis::cmd("SET").arg("p/000").arg("new").clone(),
        redis::cmd("DEL").arg("p/000").clone(),
        redis::cmd("flushall").clone(),
    ] {
        let refused = write
            .query_async::<redis::Value>(&mut connection)
            .await
            .expect_err("a write");
        assert_eq!(error_code(&refused), "READONLY", "{refused}");
        assert!(
            refused
                .to_string()
                .contains("You can't write against a read only replica."),
            "{refused}"
        );
    }
    let (unknown, closed) = exchange(&address, b"NOSUCH a b\r\n", Duration::from_millis(300));
    assert_eq!(
        unknown,
        b"-ERR unknown command 'NOSUCH', with args beginning with: 'a' 'b' \r\n",
        "{}",
        String::from_utf8_lossy(&unknown)
    );
    assert!(!closed, "an unknown command keeps the connection");
    let value: Option<String> = connection.get("p/000").await.expect("get");
    assert_eq!(value.as_deref(), Some("x"));
}

#[tokio::test]
async fn kv_wait_returns_once_the_replica_applied_the_writers_token() {
    let broker = Broker::start();
    let topic = broker.create_topic("resp-wait", 3).await;
    let writer = Service::start(writer(), &service_env(&broker, &topic));
    let reader = Service::start(READER, &resp_env(&broker, &topic));
    let address = resp_address(&reader);
    let http = reqwest::Client::new();
    let mut connection = connect(&address, "").await;
    for i in 0..5 {
        let value = format!("version {i}");
        let token = put(&http, &writer, "counter", value.as_bytes()).await;
        let waited: String = redis::cmd("KV.WAIT")
            .arg(&token)
            .arg(10_000)
            .query_async(&mut connection)
            .await
            .expect("kv.wait");
        assert_eq!(waited, "OK");
        let read: Option<String> = connection.get("counter").await.expect("get");
        assert_eq!(read.as_deref(), Some(value.as_str()), "read after its wait");
    }
    let started = Instant::now();
    let never = redis::cmd("KV.WAIT")
        .arg("0:999999")
        .arg(60_000)
        .query_async::<String>(&mut connection)
        .await
        .expect_err("an offset no write reached");
    assert_eq!(error_code(&never), "TRYAGAIN", "{never}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by KV_API_READ_YOUR_WRITES_TIMEOUT_MS"
    );
    let bad = redis::cmd("KV.WAIT")
        .arg("not-a-token")
        .arg(10)
        .query_async::<String>(&mut connection)
        .await
        .expect_err("a malformed token");
    assert!(bad.to_string().contains("consistency token"), "{bad}");
    let unknown = redis::cmd("KV.WAIT")
        .arg("99:0")
        .arg(10)
        .query_async::<String>(&mut connection)
        .await
        .expect_err("a partition the topic does not have");
    assert!(unknown.to_string().contains("no partition 99"), "{unknown}");
}

#[tokio::test]
async fn auth_on_the_resp_port_takes_the_providers_token_as_http_does_and_ends_with_it() {
    let broker = Broker::start();
    let topic = broker.create_topic("resp-auth", 1).await;
    let idp = OidcProvider::start("key-a");
    let mut env = resp_env_with_auth(&broker, &topic, &idp);
    env.push(("KV_API_AUTH_LEEWAY_SECONDS", "0".to_owned()));
    let writer = Service::start(writer(), &env);
    let reader = Service::start(READER, &env);
    let address = resp_address(&reader);
    let http = reqwest::Client::new();
    let full = idp.token("kv-full", "kv:read kv:write").await;
    let read_only = idp.token("kv-reader", "kv:read").await;
    let write_only = idp.token("kv-full", "kv:write").await;
    let written = http
        .put(writer.url("/v1/kv/secret"))
        .bearer_auth(&full)
        .body("only for readers")
        .send()
        .await
        .expect("write");
    assert_eq!(written.status(), 200, "{}", writer.output());

    let (answer, closed) = exchange(
        &address,
        b"PING\r\nGET secret\r\nAUTH not.a.token\r\nAUTH someone\r\n",
        Duration::from_millis(500),
    );
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let lines: Vec<&str> = answer.split("\r\n").collect();
    assert_eq!(lines[0], "+PONG", "{answer}");
    assert_eq!(lines[1], "-NOAUTH Authentication required.", "{answer}");
    assert!(lines[2].starts_with("-WRONGPASS invalid token"), "{answer}");
    assert!(lines[3].starts_with("-WRONGPASS"), "{answer}");
    assert!(!closed);

    let (answer, _) = exchange(
        &address,
        format!("AUTH {write_only}\r\nGET secret\r\n").as_bytes(),
        Duration::from_millis(500),
    );
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        answer.starts_with("-NOPERM the token lacks a required scope or role (one of: kv:read)"),
        "{answer}"
    );
    assert!(
        answer.ends_with("-NOAUTH Authentication required.\r\n"),
        "{answer}"
    );
    connect_to(&format!("redis://reader:{write_only}@{address}/"))
        .await
        .expect_err("a client with a token without the read scope cannot connect");

    let mut connection = connect_to(&format!("redis://reader:{read_only}@{address}/"))
        .await
        .expect("AUTH with a token of the read scope");
    read_back(&connection, "secret", b"only for readers").await;
    let mut resp3 = connect_to(&format!(
        "redis://reader:{read_only}@{address}/?protocol=resp3"
    ))
    .await
    .expect("HELLO 3 AUTH");
    let value: Option<String> = resp3.get("secret").await.expect("get over RESP3");
    assert_eq!(value.as_deref(), Some("only for readers"));
    let printed = redis_cli(
        &address,
        &[
            "--no-auth-warning",
            "--user",
            "reader",
            "--pass",
            &read_only,
            "GET",
            "secret",
        ],
    )
    .stdout;
    assert_eq!(printed, b"only for readers\n");
    let printed = redis_cli(&address, &["GET", "secret"]).stdout;
    assert!(
        String::from_utf8_lossy(&printed).contains("NOAUTH"),
        "{printed:?}"
    );

    // A token's rights end with it: the provider's kv-short tokens live 2 s.
    let short = idp.token("kv-short", "kv:read").await;
    let mut short_lived = connect_to(&format!("redis://{address}/"))
        .await
        .expect("connect");
    let accepted: String = redis::cmd("AUTH")
        .arg(&short)
        .query_async(&mut short_lived)
        .await
        .expect("AUTH with a short-lived token");
    assert_eq!(accepted, "OK");
    let ended = eventually("the short token to expire", DEADLINE, || {
        let mut connection = short_lived.clone();
        async move { connection.get::<_, Option<String>>("secret").await.err() }
    })
    .await;
    assert_eq!(error_code(&ended), "NOAUTH", "{ended}");
    assert!(ended.to_string().contains("expired"), "{ended}");
    let value: Option<String> = connection.get("secret").await.expect("the other session");
    assert_eq!(value.as_deref(), Some("only for readers"));
}

#[tokio::test]
async fn bad_input_closes_only_its_own_connection_and_never_brings_the_reader_down() {
    let broker = Broker::start();
    let topic = broker.create_topic("resp-fuzz", 1).await;
    let mut env = resp_env(&broker, &topic);
    env.push(("KV_API_RESP_MAX_CONNECTIONS", "8".to_owned()));
    let mut reader = Service::start(READER, &env);
    let address = resp_address(&reader);
    let mut healthy = connect(&address, "").await;

    let bad_requests: [(&[u8], &str); 5] = [
        (
            b"*1\r\n$99999999999\r\n",
            "Protocol error: a bulk string is longer",
        ),
        (b"*x\r\n", "Protocol error: invalid multibulk length"),
        (
            b"*2\r\n$3\r\nGET\r\n:1\r\n",
            "Protocol error: expected '$', got ':'",
        ),
        (b"*2000\r\n", "Protocol error: too many arguments"),
        (
            b"*1\r\n$3\r\nGETX\r\n",
            "Protocol error: a bulk string does not end with CRLF",
        ),
    ];
    for (bad, error) in bad_requests {
        let (answer, closed) = exchange(&address, bad, Duration::from_secs(5));
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("-ERR ") && answer.contains(error),
            "{answer}"
        );
        assert!(closed, "the connection is closed after {answer}");
    }
    let mut huge = b"*1\r\n$524288\r\n".to_vec();
    huge.resize(huge.len() + 524_288, b'a');
    huge.extend_from_slice(b"no CRLF");
    let (answer, closed) = exchange(&address, &huge, Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&answer).contains("CRLF"));
    assert!(closed);
    // A pipeline of many requests in one write, and a request split across writes.
    let pipeline = b"PING\r\n".repeat(2000);
    let (answer, _) = exchange(&address, &pipeline, Duration::from_millis(500));
    assert_eq!(answer, b"+PONG\r\n".repeat(2000));

    // The connection cap: the ninth connection is told so and closed.
    let held: Vec<TcpStream> = (0..7)
        .map(|_| TcpStream::connect(&address).expect("connect"))
        .collect();
    eventually("the connections to be counted", DEADLINE, || {
        let mut healthy = healthy.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("clients")
                .query_async(&mut healthy)
                .await
                .ok()?;
            info.contains("connected_clients:8").then_some(())
        }
    })
    .await;
    let (answer, closed) = exchange(&address, b"PING\r\n", Duration::from_secs(5));
    assert_eq!(answer, b"-ERR max number of clients reached\r\n");
    assert!(closed);
    drop(held);

    // Arbitrary bytes, each case on a connection of its own: an answer or a close, never a
    // crash, and the reader serves the next connection.
    let fuzz_address = address.clone();
    let cases = tokio::task::spawn_blocking(move || {
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 200,
            ..ProptestConfig::default()
        });
        let bytes = prop_oneof![
            proptest::collection::vec(any::<u8>(), 1..256),
            proptest::collection::vec(
                prop_oneof![
                    Just(b"*".to_vec()),
                    Just(b"$".to_vec()),
                    Just(b"\r\n".to_vec()),
                    Just(b"-1".to_vec()),
                    Just(b"3".to_vec()),
                    Just(b"999999999999".to_vec()),
                    Just(b"GET".to_vec()),
                    Just(b"HELLO".to_vec()),
                    Just(b"SCAN".to_vec()),
                    Just(b" ".to_vec()),
                    proptest::collection::vec(any::<u8>(), 1..8),
                ],
                1..40
            )
            .prop_map(|parts| parts.concat()),
        ];
        let cases = std::sync::atomic::AtomicUsize::new(0);
        runner
            .run(&bytes, |bytes| {
                cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = exchange(&fuzz_address, &bytes, Duration::from_millis(50));
                Ok(())
            })
            .expect("fuzz");
        cases.into_inner()
    })
    .await
    .expect("fuzz task");
    assert!(cases >= 200);
    let pong: String = redis::cmd("PING")
        .query_async(&mut healthy)
        .await
        .expect("the first connection still answers");
    assert_eq!(pong, "PONG");
    let mut fresh = connect(&address, "").await;
    let nothing: Option<String> = fresh.get("nothing-here").await.expect("a new connection");
    assert_eq!(nothing, None);
    assert!(reader.is_running(), "{}", reader.output());
    assert!(!reader.output().contains("panicked"), "{}", reader.output());
}
