//! The Redis-protocol read port against a real client library other than the project's own:
//! redis-py (PyPI `redis`, installed with its pin by scripts/install-client-tools.sh, which
//! `make test` runs and which exports `KV_CLIENT_PYTHON`), in RESP2 and RESP3, running
//! `redis_py.py` beside this file.

use std::time::{SystemTime, UNIX_EPOCH};

use kv_testkit::{eventually, service_env, Broker, Service, DEADLINE};
use redis::AsyncCommands;

use crate::{writer, READER};

/// The Python of the virtual environment holding redis-py.
fn client_python() -> String {
    std::env::var("KV_CLIENT_PYTHON").unwrap_or_else(|_| {
        panic!(
            "KV_CLIENT_PYTHON is not set: run `eval \"$(scripts/install-client-tools.sh)\"` \
             (make test does) to install redis-py"
        )
    })
}

#[tokio::test]
async fn redis_py_reads_values_and_expiries_and_is_refused_writes_in_resp2_and_resp3() {
    let python = client_python();
    let broker = Broker::start();
    let topic = broker.create_topic("resp-redis-py", 3).await;
    let writer = Service::start(writer(), &service_env(&broker, &topic));
    let mut env = service_env(&broker, &topic);
    env.push(("KV_API_RESP_LISTEN", "127.0.0.1:0".to_owned()));
    let reader = Service::start(READER, &env);
    let address = reader
        .logged_address("redis")
        .unwrap_or_else(|| panic!("no Redis-protocol port in the log:\n{}", reader.output()));
    let http = reqwest::Client::new();
    let written_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        .to_string();
    for (key, value, ttl) in [
        ("plain", "v1", None),
        ("expiring", "short", Some("600")),
        ("users%2Fada", "Ada", None),
        ("users%2Fgrace", "Grace", None),
    ] {
        let mut put = http
            .put(writer.url(&format!("/v1/kv/{key}")))
            .body(value.to_owned());
        if let Some(ttl) = ttl {
            put = put.header("X-KV-TTL-Seconds", ttl);
        }
        let answer = put.send().await.expect("write");
        assert_eq!(answer.status(), 200, "{}", writer.output());
    }
    let client = redis::Client::open(format!("redis://{address}/")).expect("client");
    let connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    eventually("the four keys on the RESP port", DEADLINE, || {
        let mut connection = connection.clone();
        async move {
            let size: i64 = redis::cmd("DBSIZE")
                .query_async(&mut connection)
                .await
                .ok()?;
            let last: Option<String> = connection.get("users/grace").await.ok()?;
            (size == 4 && last.is_some()).then_some(())
        }
    })
    .await;

    let (host, port) = address.rsplit_once(':').expect("host:port");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/redis_py.py");
    // The reader is another process: blocking this test's thread holds nothing up.
    let output = std::process::Command::new(&python)
        .args([script, host, port, &written_ms])
        .output()
        .unwrap_or_else(|error| panic!("run {python}: {error}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "redis-py: {said}");
    assert!(
        said.contains("RESP2: ok") && said.contains("RESP3: ok"),
        "{said}"
    );
}
