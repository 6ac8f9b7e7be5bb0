//! The project's binaries as child processes: the environment they need to talk to a test broker,
//! where to find them, and a handle that reads their address back from their log.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::broker::Broker;

/// What a service needs to run against `broker` and `topic` with auth off; readers get the group
/// `<topic>-reader`. Tests append what they vary: a later entry for the same variable wins, as
/// with the process environment.
pub fn service_env(broker: &Broker, topic: &str) -> Vec<(&'static str, String)> {
    vec![
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
        ("KV_API_KAFKA_KEY_VALUE_TOPIC", topic.to_owned()),
        ("KV_API_DISABLE_API_AUTH", "true".to_owned()),
        ("KAFKA_GROUP_ID", format!("{topic}-reader")),
    ]
}

/// [`service_env`] plus `extra`.
pub fn service_env_with(
    broker: &Broker,
    topic: &str,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = service_env(broker, topic);
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

/// Writes `prefix{i}` (value `v`) for i = 0, 1, … through the writer at `writer_url` every
/// 50 ms until `until`, noting when each write was sent; the writes that were answered 200.
pub fn keep_writing(
    http: reqwest::Client,
    writer_url: String,
    prefix: &'static str,
    until: std::time::SystemTime,
) -> tokio::task::JoinHandle<Vec<(String, std::time::SystemTime)>> {
    tokio::spawn(async move {
        let mut sent = Vec::new();
        let mut pace = tokio::time::interval(Duration::from_millis(50));
        for i in 0.. {
            pace.tick().await;
            if std::time::SystemTime::now() > until {
                break;
            }
            let key = format!("{prefix}{i}");
            let at = std::time::SystemTime::now();
            let answer = http
                .put(format!("{writer_url}/v1/kv/{}", key.replace('/', "%2F")))
                .body("v")
                .send()
                .await
                .expect("put");
            assert_eq!(answer.status(), reqwest::StatusCode::OK, "put {key}");
            sent.push((key, at));
        }
        sent
    })
}

/// A reader's environment with its own consumer group.
pub fn reader_env(broker: &Broker, topic: &str, group: &str) -> Vec<(&'static str, String)> {
    let mut env = service_env(broker, topic);
    env.push(("KAFKA_GROUP_ID", group.to_owned()));
    env
}

/// An owner candidate's environment (`KV_API_OWNER=true`) with its own consumer group.
pub fn candidate_env(broker: &Broker, topic: &str, group: &str) -> Vec<(&'static str, String)> {
    let mut env = reader_env(broker, topic, group);
    env.push(("KV_API_OWNER", "true".to_owned()));
    env
}

/// The path of another package's binary of this workspace, in the target directory the running
/// test was built in. A test's own package's binary comes from `env!("CARGO_BIN_EXE_<name>")`
/// instead; this is for the peer (a reader test's writer). `cargo test --workspace` builds it
/// beside the test, and it is used as it is when it is newer than every source it is built from;
/// otherwise (`cargo test -p kv-reader` after the writer changed, or on a clean clone) it is
/// built first, once per test process.
pub fn workspace_binary(name: &str) -> &'static str {
    static BUILT: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .expect("binary lock");
    if let Some(path) = built.get(name) {
        return path;
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf();
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = profile_dir.join(name);
    let sources = [
        workspace.join("crates").join(name),
        workspace.join("crates/kv-core"),
        workspace.join("crates/kv-wire"),
        workspace.join("Cargo.lock"),
        workspace.join("Cargo.toml"),
    ];
    let built_at = modified(&path);
    let fresh = built_at.is_some_and(|at| sources.iter().all(|s| newest(s) <= Some(at)));
    if !fresh {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut command = Command::new(cargo);
        command
            .arg("build")
            .arg("--manifest-path")
            .arg(workspace.join("Cargo.toml"))
            .args(["-p", name, "--bin", name]);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            command.arg("--release");
        }
        // Into the directory this test came from, whatever CARGO_TARGET_DIR said.
        if let Some(target) = profile_dir.parent() {
            command.env("CARGO_TARGET_DIR", target);
        }
        let status = command
            .stdin(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo to build {name}: {e}"));
        assert!(status.success(), "building {name} failed: {status}");
    }
    assert!(path.exists(), "{} was not built", path.display());
    let path: &'static str = Box::leak(path.to_string_lossy().into_owned().into_boxed_str());
    built.insert(name.to_owned(), path);
    path
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time of a file, or of any file below a folder (build output and
/// hidden folders aside).
fn newest(path: &Path) -> Option<std::time::SystemTime> {
    let metadata = std::fs::metadata(path).ok()?;
    if !metadata.is_dir() {
        return metadata.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            !name.starts_with('.') && name != "target"
        })
        .filter_map(|entry| newest(&entry.path()))
        .max()
}

fn program_name(program: &str) -> String {
    Path::new(program)
        .file_name()
        .map_or_else(|| program.to_owned(), |n| n.to_string_lossy().into_owned())
}

/// One of the project's binaries running as a child process, killed on drop.
#[derive(Debug)]
pub struct Service {
    child: Child,
    pub base_url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Service {
    /// Starts the binary at `program` with exactly `env` (plus PATH) and waits until it listens.
    pub fn start(program: &str, env: &[(&str, String)]) -> Service {
        let name = program_name(program);
        let mut command = Command::new(program);
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

    /// The address a second listener logged as `listening on SCHEME://ADDRESS` (the reader's
    /// Redis-protocol port: `redis`), once it did; it logs it before the HTTP one.
    pub fn logged_address(&self, scheme: &str) -> Option<String> {
        let marker = format!("listening on {scheme}://");
        let log = self.log.lock().expect("log lock");
        log.iter().find_map(|line| {
            let rest = line.split(&marker).nth(1)?;
            rest.split(|c: char| c.is_whitespace() || c == '"')
                .next()
                .map(str::to_owned)
        })
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// The process's id, for sampling it from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now and at its peak (`VmRSS`, `VmHWM`), in bytes.
    pub fn rss_bytes(&self) -> (u64, u64) {
        crate::procfs::rss_bytes(self.pid())
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

    /// Sends SIGSTOP: the process stops where it is, holding its connections, as a process
    /// paused by its host (a long GC, a frozen VM) would; [`Service::resume`] lets it go on.
    pub fn pause(&mut self) {
        self.signal("-STOP");
    }

    /// Sends SIGCONT to a paused process.
    pub fn resume(&mut self) {
        self.signal("-CONT");
    }

    fn signal_quietly(&self, signal: &str) {
        Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status()
            .ok();
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed: {status}");
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
        // A paused process is killed all the same, but continued first so nothing lingers.
        self.signal_quietly("-CONT");
        self.kill();
    }
}

/// Runs a command to completion and returns its exit status and combined output, for tests
/// that expect a binary to refuse to start.
pub fn run_to_exit(
    program: &str,
    env: &[(&str, String)],
    timeout: Duration,
) -> (Option<i32>, String) {
    run_command_to_exit(program, &[], env, timeout)
}

/// As [`run_to_exit`], with command-line arguments.
pub fn run_command_to_exit(
    program: &str,
    args: &[&str],
    env: &[(&str, String)],
    timeout: Duration,
) -> (Option<i32>, String) {
    let mut command = Command::new(program);
    command
        .args(args)
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

/// Sharded readers on loopback: `count` processes of `program`, shard `i` listening on its own
/// port and knowing every other's, each holding its partitions `replicas` times over.
#[derive(Debug)]
pub struct Shards {
    program: String,
    envs: Vec<Vec<(&'static str, String)>>,
    shards: Vec<Option<Service>>,
}

impl Shards {
    /// Starts every shard with `env` plus its shard variables; each gets its own group.
    pub fn start(
        program: &str,
        env: &[(&'static str, String)],
        count: usize,
        replicas: usize,
    ) -> Shards {
        Self::start_each(program, env, count, replicas, |_| Vec::new())
    }

    /// As [`Shards::start`], shard `i` also getting `own(i)`.
    pub fn start_each(
        program: &str,
        env: &[(&'static str, String)],
        count: usize,
        replicas: usize,
        own: impl Fn(usize) -> Vec<(&'static str, String)>,
    ) -> Shards {
        let ports: Vec<u16> = (0..count).map(|_| crate::free_port()).collect();
        let peers = ports
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let envs: Vec<Vec<(&'static str, String)>> = (0..count)
            .map(|i| {
                let mut shard_env = env.to_vec();
                let group = env
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == "KAFKA_GROUP_ID")
                    .map_or_else(|| "shards".to_owned(), |(_, v)| v.clone());
                shard_env.extend([
                    ("KAFKA_GROUP_ID", format!("{group}-shard-{i}")),
                    ("KV_API_SHARD", format!("{i}/{count}")),
                    ("KV_API_SHARD_REPLICAS", replicas.to_string()),
                    ("KV_API_SHARD_PEERS", peers.clone()),
                    ("KV_API_LISTEN", format!("127.0.0.1:{}", ports[i])),
                ]);
                shard_env.extend(own(i));
                shard_env
            })
            .collect();
        let shards = envs
            .iter()
            .map(|env| Some(Service::start(program, env)))
            .collect();
        Shards {
            program: program.to_owned(),
            envs,
            shards,
        }
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Shard `i`; panics when it was killed and not restarted.
    pub fn get(&self, i: usize) -> &Service {
        self.shards[i].as_ref().expect("a running shard")
    }

    pub fn get_mut(&mut self, i: usize) -> &mut Service {
        self.shards[i].as_mut().expect("a running shard")
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.shards[i].is_some()
    }

    /// SIGKILLs shard `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut shard) = self.shards[i].take() {
            shard.kill();
        }
    }

    /// Starts shard `i` again on its port, with `extra` variables added.
    pub fn restart(&mut self, i: usize, extra: &[(&'static str, String)]) {
        self.kill(i);
        let mut env = self.envs[i].clone();
        env.extend(extra.iter().cloned());
        self.shards[i] = Some(Service::start(&self.program, &env));
    }

    /// The running shards.
    pub fn running(&self) -> impl Iterator<Item = (usize, &Service)> {
        self.shards
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }
}

/// The checks of the command line both binaries share: `--help` lists every variable of the
/// role (from the settings catalogue, the table the settings code is checked against),
/// `--version` the package's, and `check-config` against a broker that is down exits non-zero
/// naming it.
pub fn check_command_line(program: &str, role: kv_core::settings::catalogue::Role) {
    use kv_core::settings::catalogue::VARS;
    let name = program_name(program);
    let (code, help) = run_command_to_exit(program, &["--help"], &[], Duration::from_secs(10));
    assert_eq!(code, Some(0), "{name} --help: {help}");
    for var in VARS.iter().filter(|var| var.group.read_by(role)) {
        assert!(
            help.contains(var.name),
            "{name} --help does not list {}:\n{help}",
            var.name
        );
    }
    let (code, version) =
        run_command_to_exit(program, &["--version"], &[], Duration::from_secs(10));
    assert_eq!(code, Some(0), "{name} --version: {version}");
    assert!(version.starts_with(&format!("{name} ")), "{version}");
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")) && version.contains("(git "),
        "--version names the package version and the git revision: {version}"
    );
    assert!(version.contains("librdkafka 2."), "{version}");
    // The original's KV_API_DISABLE_READ / KV_API_DISABLE_WRITE: the flag contradicting the
    // role stops the binary naming the other one; the one agreeing with it is accepted (and
    // check-config goes on to the broker).
    let (contradicting, other, agreeing) = match role {
        kv_core::settings::catalogue::Role::Reader => {
            ("KV_API_DISABLE_READ", "kv-writer", "KV_API_DISABLE_WRITE")
        }
        kv_core::settings::catalogue::Role::Writer => {
            ("KV_API_DISABLE_WRITE", "kv-reader", "KV_API_DISABLE_READ")
        }
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let down = closed.local_addr().expect("address").to_string();
    drop(closed);
    let env = [
        ("KAFKA_BOOTSTRAP_SERVERS", down.clone()),
        ("KV_API_KAFKA_KEY_VALUE_TOPIC", "check-config".to_owned()),
        ("KAFKA_GROUP_ID", "check-config".to_owned()),
        ("KV_API_DISABLE_API_AUTH", "true".to_owned()),
    ];
    let refused = [env.to_vec(), vec![(contradicting, "true".to_owned())]].concat();
    let (code, said) = run_command_to_exit(
        program,
        &["check-config"],
        &refused,
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(2), "{name} with {contradicting}=true: {said}");
    assert!(
        said.contains(contradicting) && said.contains(other),
        "{said}"
    );
    let env = [env.to_vec(), vec![(agreeing, "true".to_owned())]].concat();
    let (code, report) =
        run_command_to_exit(program, &["check-config"], &env, Duration::from_secs(60));
    assert_eq!(code, Some(1), "{name} check-config: {report}");
    assert!(
        report.contains(&format!("FAIL  broker: {down}")),
        "{report}"
    );
    assert!(report.contains("check-config failed: broker"), "{report}");
    let (code, unknown) =
        run_command_to_exit(program, &["frobnicate"], &[], Duration::from_secs(10));
    assert_eq!(code, Some(2), "{name} frobnicate: {unknown}");
}

/// `check-config` against a real broker with the topic: the broker, the topic's partitions and
/// an exit 0.
pub async fn check_config_finds_the_topic(program: &str) {
    let broker = Broker::start();
    let topic = crate::topic::random_topic("check-config");
    crate::topic::create_topic(&broker.bootstrap_servers(), &topic, 3, &[]).await;
    let env = service_env(&broker, &topic);
    let (code, report) =
        run_command_to_exit(program, &["check-config"], &env, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("ok    broker: "), "{report}");
    assert!(
        report.contains(&format!("ok    topic: {topic}: 3 partition(s)")),
        "{report}"
    );
    assert!(report.contains("configuration OK"), "{report}");
}

/// `healthcheck` against a running `program` (`--live` exits 0, and plain exits 0 once it is
/// ready) and against a port nothing listens on (exit 1).
pub async fn check_healthcheck(program: &str) {
    let broker = Broker::start();
    let topic = crate::topic::random_topic("healthcheck");
    crate::topic::create_topic(&broker.bootstrap_servers(), &topic, 1, &[]).await;
    let service = Service::start(program, &service_env(&broker, &topic));
    let address = service.base_url.trim_start_matches("http://").to_owned();
    let (code, output) = run_command_to_exit(
        program,
        &["healthcheck", "--live"],
        &[("KV_API_LISTEN", address.clone())],
        Duration::from_secs(10),
    );
    assert_eq!(
        code,
        Some(0),
        "healthcheck --live of a running service: {output}"
    );
    crate::eventually(
        "healthcheck exits 0 for the ready service",
        crate::DEADLINE,
        || {
            let env = [("KV_API_LISTEN", address.clone())];
            async move {
                let (code, _) =
                    run_command_to_exit(program, &["healthcheck"], &env, Duration::from_secs(10));
                (code == Some(0)).then_some(())
            }
        },
    )
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let down = closed.local_addr().expect("address").to_string();
    drop(closed);
    let (code, output) = run_command_to_exit(
        program,
        &["healthcheck"],
        &[("KV_API_LISTEN", down)],
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(1), "healthcheck of nothing: {output}");
}
