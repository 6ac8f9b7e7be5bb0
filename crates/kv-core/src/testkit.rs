//! Test support shared by both binaries' suites (feature `testkit`, dev-only): a real broker
//! process per test, random topics, the real binaries as child processes, and polling with a
//! deadline instead of sleeps.
//!
//! The broker is Tansu (a Kafka-compatible broker) installed by `scripts/install-broker.sh`;
//! `TANSU_BIN` points at it, with the script's cache location as the fallback.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::kafka::create_topic;
use crate::settings::{CoreSettings, Env, KafkaProperties};

/// The Tansu version the scripts install; keep in step with `scripts/lib.sh`.
const TANSU_VERSION: &str = "0.6.0";

fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache
        .join("kafka-kv")
        .join(format!("tansu-{TANSU_VERSION}"))
        .join("bin")
        .join("tansu")
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// A topic name no other test uses.
pub fn random_topic(prefix: &str) -> String {
    let suffix: u64 = rand::rng().random();
    format!("{prefix}-{suffix:016x}")
}

/// Polls `check` until it returns `Some`, failing the test with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A Kafka-compatible broker process with its own data, killed on drop.
#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Where the running process's part of the log starts.
    log_start: u64,
}

impl Broker {
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().expect("broker data dir");
        let mut broker = Broker {
            child: None,
            port: free_port(),
            dir,
            log_start: 0,
        };
        broker.launch();
        broker
    }

    fn launch(&mut self) {
        let binary = tansu_binary();
        assert!(
            binary.exists(),
            "no broker at {}: run scripts/install-broker.sh (make test does)",
            binary.display()
        );
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // Appended across restarts, so a drill's failure can show what the broker said.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("broker log file");
        self.log_start = log.metadata().map_or(0, |m| m.len());
        let child = Command::new(&binary)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            // A relative sqlite URL is resolved against the working directory.
            .args(["--storage-engine", "sqlite://broker.db"])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("broker log file"))
            .stderr(log)
            .spawn()
            .expect("start the broker");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the broker did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// The last `lines` lines the broker logged (warnings and errors), for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Restarts the broker on the same data if its storage stopped serving, and says whether it
    /// did. Tansu 0.6.0's storage task ends for good on the first request it fails to complete
    /// (its loop returns on any error, including a response it cannot hand back to a client
    /// that went away); from then on the broker answers every request with
    /// `Storage(UnableToSend)`. Apache Kafka has no such failure, so a drill that loads the
    /// broker and breaks client connections heals it as an operator would, and reports that it
    /// did. The broker's first errors go to stderr, for whoever reads the test output.
    pub fn restart_if_storage_failed(&mut self) -> bool {
        let log = std::fs::read(self.log_path()).unwrap_or_default();
        let since_launch = log.get(self.log_start as usize..).unwrap_or_default();
        let since_launch = String::from_utf8_lossy(since_launch);
        let failed = since_launch.contains("Storage(UnableToSend)");
        if failed {
            let first_errors: Vec<&str> = since_launch
                .lines()
                .filter(|line| line.contains("ERROR"))
                .take(5)
                .collect();
            eprintln!(
                "broker storage failed, restarting it; its first errors:\n{}",
                first_errors.join("\n")
            );
            self.restart();
        }
        failed
    }

    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker process, as an outage would; its data stays for [`Broker::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Starts the broker again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The shared settings a service would load to talk to this broker about `topic`.
    pub fn core_settings(&self, topic: &str) -> CoreSettings {
        let env = Env::from_pairs([
            ("KAFKA_BOOTSTRAP_SERVERS", self.bootstrap_servers()),
            ("KV_API_KAFKA_KEY_VALUE_TOPIC", topic.to_owned()),
            ("KV_API_DISABLE_API_AUTH", "true".to_owned()),
        ])
        .expect("environment");
        CoreSettings::from_env(&env).expect("settings")
    }

    /// What a service needs to run against this broker and `topic` with auth off; readers get
    /// the group `<topic>-reader`. Tests append what they vary: a later entry for the same
    /// variable wins, as with the process environment.
    pub fn service_env(&self, topic: &str) -> Vec<(&'static str, String)> {
        vec![
            ("KAFKA_BOOTSTRAP_SERVERS", self.bootstrap_servers()),
            ("KV_API_KAFKA_KEY_VALUE_TOPIC", topic.to_owned()),
            ("KV_API_DISABLE_API_AUTH", "true".to_owned()),
            ("KAFKA_GROUP_ID", format!("{topic}-reader")),
        ]
    }

    /// Creates a topic with a random name and `partitions` partitions.
    pub async fn create_topic(&self, prefix: &str, partitions: i32) -> String {
        let topic = random_topic(prefix);
        let settings = self.core_settings(&topic);
        create_topic(
            &settings.kafka,
            &topic,
            partitions,
            &[],
            Duration::from_secs(10),
        )
        .await
        .expect("create the topic");
        topic
    }

    /// A plain rdkafka producer, for tests that put records on a topic without kv-writer.
    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .set("partitioner", "murmur2_random")
            .set("message.timeout.ms", "10000")
            .create()
            .expect("producer")
    }

    /// Produces one record and waits for the acknowledgement; `value: None` is a tombstone.
    pub async fn produce(
        &self,
        producer: &FutureProducer,
        topic: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> (i32, i64) {
        let mut record = FutureRecord::to(topic).key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        let delivery = producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
        (delivery.partition, delivery.offset)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The broker a benchmark measures against: the one at `KV_BENCH_BOOTSTRAP` when set (such as
/// the `mock_cluster` example, or Apache Kafka), else a fresh test broker of its own.
#[derive(Debug)]
pub struct BrokerUnderTest {
    _own: Option<Broker>,
    bootstrap: String,
}

impl BrokerUnderTest {
    pub fn start() -> BrokerUnderTest {
        match std::env::var("KV_BENCH_BOOTSTRAP") {
            Ok(bootstrap) if !bootstrap.is_empty() => BrokerUnderTest {
                _own: None,
                bootstrap,
            },
            _ => {
                let broker = Broker::start();
                let bootstrap = broker.bootstrap_servers();
                BrokerUnderTest {
                    _own: Some(broker),
                    bootstrap,
                }
            }
        }
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic with a random name; on librdkafka's MockCluster, which has no
    /// CreateTopics, the topic gets the mock's own partition count (see [`Self::partitions`]).
    pub async fn create_topic(&self, prefix: &str, partitions: i32) -> String {
        let topic = random_topic(prefix);
        let env = Env::from_pairs([("KAFKA_BOOTSTRAP_SERVERS", self.bootstrap.clone())])
            .expect("environment");
        let properties = KafkaProperties::from_env(&env).expect("Kafka properties");
        let create = create_topic(&properties, &topic, partitions, &[], Duration::from_secs(5));
        if !matches!(
            tokio::time::timeout(Duration::from_secs(5), create).await,
            Ok(Ok(()))
        ) {
            // Asking for the topic's metadata creates it where CreateTopics is missing.
            let client: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &self.bootstrap)
                .set("allow.auto.create.topics", "true")
                .create()
                .expect("client");
            client
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .expect("auto-create the topic");
        }
        topic
    }

    /// How many partitions `topic` has.
    pub fn partitions(&self, topic: &str) -> i32 {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("client");
        let metadata = client
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        i32::try_from(metadata.topics()[0].partitions().len()).expect("partition count")
    }
}

/// One of the project's binaries running as a child process, killed on drop.
#[derive(Debug)]
pub struct Service {
    child: Child,
    pub base_url: String,
    log: Arc<Mutex<Vec<String>>>,
}

/// Path of a workspace binary built next to the running test (`make test` builds them first).
pub fn binary_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

impl Service {
    /// Starts binary `name` with exactly `env` (plus PATH) and waits until it listens.
    pub fn start(name: &str, env: &[(&str, String)]) -> Service {
        let mut command = Command::new(binary_path(name));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KV_API_LISTEN", "127.0.0.1:0")
            .env("KV_API_LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start the service");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            let address_tx = address_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        // The address ends at a space (text logs) or a quote (JSON logs).
                        let address = rest
                            .split(|c: char| c.is_whitespace() || c == '"')
                            .next()
                            .unwrap_or_default();
                        address_tx.send(address.to_owned()).ok();
                    }
                    log.lock().expect("log lock").push(line);
                }
            });
        }
        let address = match address_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(address) => address,
            Err(_) => {
                child.kill().ok();
                let status = child.wait().ok();
                panic!(
                    "{name} did not start listening (exit: {status:?}); its output:\n{}",
                    log.lock().expect("log lock").join("\n")
                );
            }
        };
        Service {
            child,
            base_url: format!("http://{address}"),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The service's `/metrics` page, for [`metric`].
    pub async fn metrics(&self, http: &reqwest::Client) -> String {
        http.get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Sends SIGKILL: no shutdown hooks run, as in a crash.
    pub fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM, as an orchestrator stopping the service would.
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits up to `timeout` for the process to exit; its exit code, or `None` if it is still
    /// running (or was killed by a signal).
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = &mut self.child;
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if start.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command to completion and returns its exit status and combined output, for tests
/// that expect a binary to refuse to start.
pub fn run_to_exit(name: &str, env: &[(&str, String)], timeout: Duration) -> (Option<i32>, String) {
    let mut command = Command::new(binary_path(name));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start the binary");
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("collect output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

/// A real OpenID provider process (the `oidc-provider` npm package, see `scripts/oidc`), issuing
/// JWT access tokens through the client-credentials grant. Killed on drop.
#[derive(Debug)]
pub struct OidcProvider {
    child: Option<Child>,
    port: u16,
    script: PathBuf,
    /// Further variables for the script (see `scripts/oidc/provider.mjs`), kept across rotations.
    env: Vec<(String, String)>,
}

/// The audience the test provider puts in access tokens.
pub const OIDC_AUDIENCE: &str = "urn:kv-api";

impl OidcProvider {
    /// Starts the provider with one fresh signing key named `kid`.
    pub fn start(kid: &str) -> OidcProvider {
        OidcProvider::start_with(kid, &[])
    }

    /// Starts the provider with further variables for its script, such as `EXPORT_KEY_FILE` or
    /// `IMPORT_KEY_FILE` (see `scripts/oidc/provider.mjs`); they are kept across rotations.
    pub fn start_with(kid: &str, env: &[(&str, &str)]) -> OidcProvider {
        let mut provider = OidcProvider {
            child: None,
            port: free_port(),
            script: oidc_provider_script(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        provider.launch(kid, None);
        provider
    }

    fn launch(&mut self, kid: &str, keep: Option<&str>) {
        let mut command = Command::new("node");
        command
            .arg(&self.script)
            .env("PORT", self.port.to_string())
            .env("KEY_ID", kid)
            .env("AUDIENCE", OIDC_AUDIENCE)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(keep) = keep {
            command.env("KEEP_KEY", keep);
        }
        let mut child = command.spawn().expect("start the OpenID provider (node)");
        let stdout = child.stdout.take().expect("provider stdout");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    ready_tx.send(()).ok();
                }
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            child.kill().ok();
            panic!("the OpenID provider did not start");
        }
        self.child = Some(child);
    }

    /// The issuer URL, which is also where discovery starts.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Restarts the provider on the same address with a new signing key `kid`, optionally still
    /// publishing a key named `keep` (a fresh one: tokens signed before the restart no longer verify).
    pub fn rotate(&mut self, kid: &str, keep: Option<&str>) {
        self.stop();
        self.launch(kid, keep);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// An access token for `client` (`kv-full` or `kv-reader`) with the given scopes.
    pub async fn token(&self, client: &str, scope: &str) -> String {
        let response = reqwest::Client::new()
            .post(format!("{}/token", self.issuer()))
            .basic_auth(client, Some(format!("{client}-secret")))
            .form(&[("grant_type", "client_credentials"), ("scope", scope)])
            .send()
            .await
            .expect("token request");
        let status = response.status();
        let body: serde_json::Value = response.json().await.expect("token response");
        assert!(
            status.is_success(),
            "token request refused: {status} {body}"
        );
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// The variables a service needs to trust this provider.
    pub fn service_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OIDC_IDP_ADDRESS_FOR_SERVER", self.issuer()),
            ("OIDC_AUDIENCE", OIDC_AUDIENCE.to_owned()),
            ("OIDC_REQUIRE_HTTPS_METADATA", "false".to_owned()),
        ]
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The installed provider script: `KV_OIDC_PROVIDER`, or what the install script reports
/// (installing it on first use).
fn oidc_provider_script() -> PathBuf {
    if let Some(path) = std::env::var_os("KV_OIDC_PROVIDER") {
        return PathBuf::from(path);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new("bash")
        .arg(root.join("scripts/install-oidc-provider.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/install-oidc-provider.sh");
    assert!(
        output.status.success(),
        "installing the OpenID provider failed"
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// The value of the first sample of metric `name` (Prometheus text format) whose labels include
/// every one of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .find(|line| {
            labels
                .iter()
                .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// Checks that a service's OpenAPI document and the routes it serves agree.
pub mod openapi {
    use std::collections::{BTreeMap, BTreeSet};

    use reqwest::Method;
    use serde_json::Value;

    use super::Service;

    /// Methods an OpenAPI path item may hold that the services could serve.
    const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

    /// A parsed OpenAPI document.
    #[derive(Debug)]
    pub struct Document(Value);

    impl Document {
        pub fn parse(yaml: &str) -> Document {
            Document(serde_yaml::from_str(yaml).expect("the OpenAPI document is YAML"))
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
            !self.0["paths"][path][method.to_lowercase()]["requestBody"]["content"]
                ["application/json"]
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
    }
}
