use std::process::ExitCode;

use kv_core::cli::{self, Command, Invocation};
use kv_core::settings::catalogue::Role;
use kv_writer::migrate::{self, MigrateArgs, MigrateSettings, WriterCommand};
use kv_writer::{App, Settings};

/// The settings of what was asked: serving (and its checks) reads the writer's; a migration
/// reads them without auth, and the source topic's key.
enum Loaded {
    Writer(Command, Settings),
    Migrate(MigrateSettings, MigrateArgs),
}

const ABOUT: &str = "Takes key-value writes over HTTP and produces them to the Kafka topic. Configured by the environment (below).";

fn main() -> ExitCode {
    // KV_GIT_REVISION: set by build.rs.
    let version = (env!("CARGO_PKG_VERSION"), env!("KV_GIT_REVISION"));
    let (_, loaded) = match cli::prepare_with::<WriterCommand, _>(
        Role::Writer,
        "kv-writer",
        version,
        ABOUT,
        |invocation, env| match invocation {
            Invocation::Own(WriterCommand::MigrateSeedTopic(args)) => {
                MigrateSettings::from_env(env).map(|s| Loaded::Migrate(s, args.clone()))
            }
            Invocation::Shared(command) => {
                Settings::from_env(env).map(|s| Loaded::Writer(*command, s))
            }
        },
    ) {
        Ok(ready) => ready,
        Err(code) => return code,
    };
    actix_web::rt::System::new().block_on(async move {
        match loaded {
            Loaded::Migrate(settings, args) => {
                kv_core::telemetry::init(&settings.writer.core.log);
                migrate::run(settings, args).await
            }
            Loaded::Writer(Command::CheckConfig, settings) => App::check(&settings).await,
            Loaded::Writer(Command::Serve | Command::Healthcheck { .. }, settings) => {
                serve(settings).await
            }
        }
    })
}

async fn serve(settings: Settings) -> ExitCode {
    kv_core::telemetry::init(&settings.core.log);
    let app = match App::build(settings).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!("kv-writer cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("kv-writer stopped with an error: {error}");
            ExitCode::FAILURE
        }
    }
}
