//! A Kafka-compatible broker process per test (Tansu, installed by `scripts/install-broker.sh`;
//! `TANSU_BIN` points at it, with the script's cache location as the fallback), and the broker a
//! benchmark measures against.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;

use crate::free_port;
use crate::topic::{create_topic, create_topic_within, random_topic};

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
/// Where a broker listens, what it tells clients to connect to (Kafka clients reconnect to the
/// advertised address, so a proxy in front of the broker must be advertised), and the network
/// namespace it runs in, if any.
#[derive(Debug, Clone)]
pub struct Placement {
    pub listen: (String, u16),
    pub advertised: (String, u16),
    pub netns: Option<String>,
}

impl Placement {
    fn loopback() -> Placement {
        let port = free_port();
        Placement {
            listen: ("127.0.0.1".to_owned(), port),
            advertised: ("127.0.0.1".to_owned(), port),
            netns: None,
        }
    }
}

#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    placement: Placement,
    dir: tempfile::TempDir,
    /// Where the running process's part of the log starts.
    log_start: u64,
    /// `--cluster-id`, when not Tansu's default.
    cluster_id: Option<String>,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_at(Placement::loopback())
    }

    pub fn start_at(placement: Placement) -> Broker {
        Broker::launched(placement, None)
    }

    /// A broker of another Kafka cluster than [`Broker::start`]'s (`tansu_cluster`): its
    /// metadata names `cluster_id`.
    pub fn start_in_cluster(cluster_id: &str) -> Broker {
        Broker::launched(Placement::loopback(), Some(cluster_id.to_owned()))
    }

    fn launched(placement: Placement, cluster_id: Option<String>) -> Broker {
        let dir = tempfile::tempdir().expect("broker data dir");
        let mut broker = Broker {
            child: None,
            placement,
            dir,
            log_start: 0,
            cluster_id,
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
        let (host, port) = &self.placement.listen;
        let listen = format!("tcp://{host}:{port}");
        let (host, port) = &self.placement.advertised;
        let advertised = format!("tcp://{host}:{port}");
        // Appended across restarts, so a drill's failure can show what the broker said.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("broker log file");
        self.log_start = log.metadata().map_or(0, |m| m.len());
        let mut command = match &self.placement.netns {
            // `ip netns exec` execs the broker, so the child is the broker itself.
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        let child = command
            .arg("broker")
            .args([
                "--listener-url",
                &listen,
                "--advertised-listener-url",
                &advertised,
            ])
            // A relative sqlite URL is resolved against the working directory.
            .args(["--storage-engine", "sqlite://broker.db"])
            .args(
                self.cluster_id
                    .as_deref()
                    .map(|id| ["--cluster-id", id])
                    .iter()
                    .flatten(),
            )
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("broker log file"))
            .stderr(log)
            .spawn()
            .expect("start the broker");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let (host, port) = &self.placement.listen;
        while std::net::TcpStream::connect((host.as_str(), *port)).is_err() {
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

    /// [`Broker::restart_if_storage_failed`], and a restart of a broker process that exited,
    /// with what it last logged on stderr; says whether it restarted it.
    pub fn restart_if_failed(&mut self) -> bool {
        if self.restart_if_storage_failed() {
            return true;
        }
        let exited = self
            .child
            .as_mut()
            .is_some_and(|child| child.try_wait().ok().flatten().is_some());
        if exited {
            eprintln!(
                "the broker process exited, restarting it; it last logged:\n{}",
                self.log_tail(10)
            );
            self.restart();
        }
        exited
    }

    /// The advertised address: clients go where the broker tells them anyway.
    pub fn bootstrap_servers(&self) -> String {
        let (host, port) = &self.placement.advertised;
        format!("{host}:{port}")
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

    /// Creates a topic with a random name and `partitions` partitions.
    pub async fn create_topic(&self, prefix: &str, partitions: i32) -> String {
        let topic = random_topic(prefix);
        create_topic(&self.bootstrap_servers(), &topic, partitions, &[]).await;
        topic
    }

    /// A plain rdkafka producer, for tests that put records on a topic without kv-writer.
    pub fn producer(&self) -> FutureProducer {
        crate::topic::producer(&self.bootstrap_servers())
    }

    /// Produces one record and waits for the acknowledgement; `value: None` is a tombstone.
    pub async fn produce(
        &self,
        producer: &FutureProducer,
        topic: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> (i32, i64) {
        crate::topic::produce_one(producer, topic, key, value).await
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
        let create = create_topic_within(&self.bootstrap, &topic, partitions);
        if !matches!(
            tokio::time::timeout(Duration::from_secs(5), create).await,
            Ok(true)
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
