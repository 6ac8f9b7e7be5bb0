//! The command line both binaries share: `serve` (the default), `check-config` and
//! `healthcheck`, with `--help` listing every variable from [`crate::settings::catalogue`], plus
//! the one-shot commands of one role ([`run_main_with`]: kv-writer's `migrate-seed-topic`).
//! Configuration stays in the environment; the command line only picks what to do with it.

use std::fmt::Write as _;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::kafka::{client_config, topic_config, topic_config_problems, ClientRole};
use crate::settings::catalogue::{self, Role};
use crate::settings::{check_role_flags, listen_address, CoreSettings, Env, SettingsError};
use crate::web::auth::AuthGate;

#[derive(Debug, Parser)]
#[command(disable_help_subcommand = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
}

/// What the binary was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Serve (the default): read the environment, connect, answer HTTP.
    Serve,
    /// Validate the environment and reach the broker, the topic, the OpenID provider (and, for
    /// kv-reader, the schema registry); print what was found; exit 1 naming what failed.
    CheckConfig,
    /// GET the readiness endpoint of the service on KV_API_LISTEN; exit 0 when ready, 1
    /// otherwise. For container health checks that have no curl.
    Healthcheck {
        /// Probe liveness (/healthz/live) instead of readiness.
        #[arg(long)]
        live: bool,
    },
}

/// What `--version` prints after the binary's name: the package version, the git revision it
/// was built from (`revision`, embedded by the binary's build script) and librdkafka's version.
pub fn version_line(version: &str, revision: &str) -> String {
    let (_, librdkafka) = rdkafka::util::get_rdkafka_version();
    format!("{version} (git {revision}, librdkafka {librdkafka})")
}

/// What the binary was asked to do: one of the shared commands, or one of its role's own
/// (`X`, a clap [`Subcommand`] enum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation<X> {
    Shared(Command),
    Own(X),
}

/// A role without commands of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoOwnCommand {}

impl FromArgMatches for NoOwnCommand {
    fn from_arg_matches(_: &ArgMatches) -> Result<Self, clap::Error> {
        Err(clap::Error::new(clap::error::ErrorKind::InvalidSubcommand))
    }

    fn update_from_arg_matches(&mut self, _: &ArgMatches) -> Result<(), clap::Error> {
        Ok(())
    }
}

impl Subcommand for NoOwnCommand {
    fn augment_subcommands(command: clap::Command) -> clap::Command {
        command
    }

    fn augment_subcommands_for_update(command: clap::Command) -> clap::Command {
        command
    }

    fn has_subcommand(_: &str) -> bool {
        false
    }
}

/// Parses the command line; `--help`, `--version` and a bad argument print and exit here.
fn parse<X: Subcommand>(
    role: Role,
    name: &'static str,
    (version, revision): (&'static str, &'static str),
    about: &'static str,
) -> Invocation<X> {
    // Built once per process, for clap, which keeps a `&'static str`.
    let version: &'static str = Box::leak(version_line(version, revision).into_boxed_str());
    let command = X::augment_subcommands(Args::command())
        .name(name)
        .bin_name(name)
        .version(version)
        .about(about)
        .after_help(catalogue::help(role));
    let matches = command.get_matches();
    if matches
        .subcommand_name()
        .is_some_and(|sub| X::has_subcommand(sub))
    {
        return match X::from_arg_matches(&matches) {
            Ok(own) => Invocation::Own(own),
            Err(error) => error.exit(),
        };
    }
    match Args::from_arg_matches(&matches) {
        Ok(args) => Invocation::Shared(args.command.unwrap_or(Command::Serve)),
        Err(error) => error.exit(),
    }
}

/// A service binary as `main` runs it: built from its settings, served until a signal, or its
/// configuration checked. Both binaries' `main` are this one sequence ([`run_main`]), so their
/// exit codes and start-up logging cannot drift apart.
pub trait Service: Sized {
    /// The role whose variables `--help` lists and whose `KV_API_DISABLE_*` flag must agree.
    const ROLE: Role;
    /// The binary's name, on the command line and in the log.
    const NAME: &'static str;
    type Settings;
    type StartupError: std::fmt::Display;

    fn core(settings: &Self::Settings) -> &CoreSettings;
    fn build(settings: Self::Settings) -> impl Future<Output = Result<Self, Self::StartupError>>;
    /// `check-config`.
    fn check(settings: &Self::Settings) -> impl Future<Output = ExitCode>;
    fn run_until_stopped(self) -> impl Future<Output = std::io::Result<()>>;
}

/// The whole of a service binary's `main`: parses the command line, reads the settings with
/// `load` (exit 2 naming the variable), then serves, checks the configuration or probes the
/// running service. `version` is the package version and the git revision the binary was built
/// from.
pub fn run_main<A: Service>(
    version: (&'static str, &'static str),
    about: &'static str,
    load: impl FnOnce(&Env) -> Result<A::Settings, SettingsError>,
) -> ExitCode {
    run_main_with::<A, NoOwnCommand, std::convert::Infallible, _>(
        version,
        about,
        load,
        |never, _| match *never {},
        |never| async move { match never {} },
    )
}

/// As [`run_main`], for a binary with commands of its own (`X`): `load_own` reads only the
/// settings that command needs, and `run_own` runs it.
pub fn run_main_with<A: Service, X: Subcommand, O, F>(
    version: (&'static str, &'static str),
    about: &'static str,
    load: impl FnOnce(&Env) -> Result<A::Settings, SettingsError>,
    load_own: impl FnOnce(&X, &Env) -> Result<O, SettingsError>,
    run_own: impl FnOnce(O) -> F,
) -> ExitCode
where
    F: Future<Output = ExitCode>,
{
    enum Loaded<S, O> {
        Service(Command, S),
        Own(O),
    }
    let load_asked = |invocation: &Invocation<X>, env: &Env| match invocation {
        Invocation::Shared(command) => load(env).map(|s| Loaded::Service(*command, s)),
        Invocation::Own(own) => load_own(own, env).map(Loaded::Own),
    };
    let prepared = prepare_with::<X, _>(A::ROLE, A::NAME, version, about, load_asked);
    let loaded = match prepared {
        Ok((_, loaded)) => loaded,
        Err(code) => return code,
    };
    actix_web::rt::System::new().block_on(async move {
        match loaded {
            Loaded::Own(own) => run_own(own).await,
            Loaded::Service(Command::CheckConfig, settings) => A::check(&settings).await,
            Loaded::Service(Command::Serve | Command::Healthcheck { .. }, settings) => {
                serve::<A>(settings).await
            }
        }
    })
}

/// Builds the app and serves until a signal. Logging is installed first, so that a start-up
/// failure reaches the log in its configured format like every other line.
async fn serve<A: Service>(settings: A::Settings) -> ExitCode {
    crate::telemetry::init(&A::core(&settings).log);
    let app = match A::build(settings).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!("{} cannot start: {error}", A::NAME);
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{} stopped with an error: {error}", A::NAME);
            ExitCode::FAILURE
        }
    }
}

/// What `main` does before it serves or checks: parses the command line, reads the environment,
/// runs `healthcheck` (which needs only the listen address) and loads the role's settings with
/// `load`, which is told what was asked, so a one-shot command of the role's own (`X`) can read
/// only the settings it needs. `Err` is the exit code of a run that ended here: 2 for a bad
/// variable, named (a `KV_API_DISABLE_READ` / `KV_API_DISABLE_WRITE` contradicting `role`
/// included). `version` is the package version and the git revision the binary was built from.
fn prepare_with<X: Subcommand, S>(
    role: Role,
    name: &'static str,
    version: (&'static str, &'static str),
    about: &'static str,
    load: impl FnOnce(&Invocation<X>, &Env) -> Result<S, SettingsError>,
) -> Result<(Invocation<X>, S), ExitCode> {
    let invocation = parse::<X>(role, name, version, about);
    let invalid = |error: SettingsError| {
        eprintln!("{name}: invalid configuration: {error}");
        ExitCode::from(2)
    };
    let env = Env::from_process().map_err(invalid)?;
    if let Invocation::Shared(Command::Healthcheck { live }) = invocation {
        return Err(match listen_address(&env) {
            Ok(listen) => healthcheck(&listen, live),
            Err(error) => invalid(env.locate(error)),
        });
    }
    check_role_flags(&env, role).map_err(|error| invalid(env.locate(error)))?;
    let settings = load(&invocation, &env).map_err(|error| invalid(env.locate(error)))?;
    Ok((invocation, settings))
}

/// What `check-config` found: one line per check, printed as they complete.
#[derive(Debug, Default)]
pub struct Report {
    failed: Vec<&'static str>,
}

impl Report {
    pub fn ok(&mut self, what: &'static str, found: impl std::fmt::Display) {
        println!("ok    {what}: {found}");
    }

    pub fn warn(&mut self, what: &'static str, found: impl std::fmt::Display) {
        println!("WARN  {what}: {found}");
    }

    pub fn fail(&mut self, what: &'static str, error: impl std::fmt::Display) {
        println!("FAIL  {what}: {error}");
        self.failed.push(what);
    }

    pub fn skip(&mut self, what: &'static str, why: impl std::fmt::Display) {
        println!("skip  {what}: {why}");
    }

    pub fn exit_code(&self) -> ExitCode {
        if self.failed.is_empty() {
            println!("configuration OK");
            ExitCode::SUCCESS
        } else {
            let mut failed = String::new();
            for (i, what) in self.failed.iter().enumerate() {
                let _ = write!(failed, "{}{what}", if i == 0 { "" } else { ", " });
            }
            eprintln!("check-config failed: {failed}");
            ExitCode::FAILURE
        }
    }
}

/// How long `check-config` waits for the broker's answers.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// The checks both roles make: the brokers and the topic (its partitions, then its
/// configuration), then the OpenID provider. `service` names the binary in the provider's log.
pub async fn check_shared(core: &CoreSettings, service: &str, report: &mut Report) {
    if core.state_rules.is_empty() {
        report.skip("state rules", "KV_API_STATE_RULES is not set");
    } else {
        let rules = &core.state_rules;
        report.ok(
            "state rules",
            format!("{} rule(s):{}", rules.rules().len(), rules.describe()),
        );
    }
    let servers = core.kafka.bootstrap_servers().to_owned();
    let (properties, topic) = (core.kafka.clone(), core.topic.clone());
    let metadata = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer =
            client_config(&[], &properties, ClientRole::Consumer).create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), BROKER_TIMEOUT)?;
        let brokers = metadata.brokers().len();
        let partitions = metadata
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().len());
        Ok::<_, rdkafka::error::KafkaError>((brokers, partitions))
    })
    .await;
    match metadata {
        Ok(Ok((brokers, partitions))) => {
            report.ok(
                "broker",
                format!("{servers}: {brokers} broker(s) in the cluster"),
            );
            match partitions {
                Some(n) if n > 0 => report.ok("topic", format!("{}: {n} partition(s)", core.topic)),
                _ => report.fail(
                    "topic",
                    format!("{} does not exist on {servers}", core.topic),
                ),
            }
        }
        Ok(Err(error)) => report.fail("broker", format!("{servers}: {error}")),
        Err(error) => report.fail("broker", format!("{servers}: {error}")),
    }
    match topic_config(&core.kafka, &core.topic, BROKER_TIMEOUT).await {
        Ok(config) => {
            let problems = topic_config_problems(&config);
            let found = format!(
                "cleanup.policy={} retention.ms={}",
                config.get("cleanup.policy").map_or("?", String::as_str),
                config.get("retention.ms").map_or("?", String::as_str)
            );
            match (problems.is_empty(), core.require_compacted_topic) {
                (true, _) => report.ok("topic configuration", found),
                (false, true) => report.fail("topic configuration", problems.join("; ")),
                (false, false) => report.warn("topic configuration", problems.join("; ")),
            }
        }
        Err(error) if core.require_compacted_topic => {
            report.fail("topic configuration", format!("cannot be read: {error}"));
        }
        Err(error) => report.warn("topic configuration", format!("cannot be read: {error}")),
    }
    if core.auth.disabled {
        report.skip("OpenID provider", "KV_API_DISABLE_API_AUTH=true");
    } else {
        let issuer = core
            .auth
            .oidc
            .idp_address_for_server
            .clone()
            .unwrap_or_default();
        match AuthGate::from_settings(&core.auth, service).await {
            Ok(_) => report.ok(
                "OpenID provider",
                format!("{issuer}: discovered, keys fetched"),
            ),
            Err(error) => report.fail("OpenID provider", format!("{issuer}: {error}")),
        }
    }
}

/// How long `healthcheck` waits for the service; container health checks have their own timeout.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// `healthcheck`: GETs the readiness (or liveness) endpoint on the address the service listens
/// on, every interface meaning loopback. Plain HTTP/1.1 by hand: the check must not need more
/// than the binary itself. Both binaries answer the same endpoints, so either one checks
/// either service (the image's HEALTHCHECK relies on it).
pub fn healthcheck(listen: &str, live: bool) -> ExitCode {
    let path = if live {
        "/healthz/live"
    } else {
        "/healthz/ready"
    };
    match probe(listen, path) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("healthcheck: {path} answered {status}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("healthcheck: {listen}: {error}");
            ExitCode::FAILURE
        }
    }
}

fn probe(listen: &str, path: &str) -> std::io::Result<u16> {
    let address = own_address(listen)?;
    let mut stream = TcpStream::connect_timeout(&address, HEALTHCHECK_TIMEOUT)?;
    stream.set_read_timeout(Some(HEALTHCHECK_TIMEOUT))?;
    stream.set_write_timeout(Some(HEALTHCHECK_TIMEOUT))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    // The status line is all that is needed; a readiness body is small anyway.
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..])? {
            0 => break,
            n => read += n,
        }
    }
    let line = String::from_utf8_lossy(&head[..read]);
    line.split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))
}

fn own_address(listen: &str) -> std::io::Result<SocketAddr> {
    let mut address = listen
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    if address.ip().is_unspecified() {
        address.set_ip(if address.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_interface_is_probed_on_loopback() {
        assert_eq!(
            own_address("0.0.0.0:8080").expect("address").to_string(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            own_address("[::]:9").expect("address").to_string(),
            "[::1]:9"
        );
    }

    #[test]
    fn a_closed_port_is_an_unhealthy_service() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        drop(listener);
        assert!(probe(&address.to_string(), "/healthz/ready").is_err());
    }

    #[test]
    fn the_status_of_the_answer_decides() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            let mut chunk = [0u8; 256];
            while !request.ends_with(b"\r\n\r\n") {
                match stream.read(&mut chunk).expect("read") {
                    0 => break,
                    n => request.extend_from_slice(&chunk[..n]),
                }
            }
            stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .expect("answer");
        });
        assert_eq!(
            probe(&address.to_string(), "/healthz/ready").expect("probe"),
            503
        );
        server.join().expect("server");
    }
}
