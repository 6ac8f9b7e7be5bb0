use std::process::ExitCode;

use kv_writer::migrate::{self, MigrateSettings, WriterCommand};
use kv_writer::{App, Settings};

const ABOUT: &str = "Takes key-value writes over HTTP and produces them to the Kafka topic. Configured by the environment (below).";

fn main() -> ExitCode {
    // KV_GIT_REVISION: set by build.rs.
    let version = (env!("CARGO_PKG_VERSION"), env!("KV_GIT_REVISION"));
    kv_core::cli::run_main_with::<App, WriterCommand, _, _>(
        version,
        ABOUT,
        Settings::from_env,
        // A migration reads the writer's settings without auth, and the source topic's key.
        |WriterCommand::MigrateSeedTopic(args), env| {
            MigrateSettings::from_env(env).map(|settings| (settings, args.clone()))
        },
        |(settings, args)| async move {
            kv_core::telemetry::init(&settings.writer.core.log);
            migrate::run(settings, args).await
        },
    )
}
