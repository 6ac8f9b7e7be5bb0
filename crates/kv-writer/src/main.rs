use std::process::ExitCode;

use kv_core::cli::{self, Command};
use kv_core::settings::catalogue::Role;
use kv_core::settings::{listen_address, Env};
use kv_writer::{App, Settings};

fn main() -> ExitCode {
    let command = cli::parse(Role::Writer, "kv-writer", env!("CARGO_PKG_VERSION"), ABOUT);
    let env = match Env::from_process() {
        Ok(env) => env,
        Err(error) => return invalid(&error),
    };
    if let Command::Healthcheck { live } = command {
        return match listen_address(&env) {
            Ok(listen) => cli::healthcheck(&listen, live),
            Err(error) => invalid(&env.locate(error)),
        };
    }
    let settings = match Settings::from_env(&env) {
        Ok(settings) => settings,
        Err(error) => return invalid(&env.locate(error)),
    };
    actix_web::rt::System::new().block_on(async move {
        match command {
            Command::CheckConfig => App::check(&settings).await,
            Command::Serve | Command::Healthcheck { .. } => serve(settings).await,
        }
    })
}

const ABOUT: &str = "Takes key-value writes over HTTP and produces them to the Kafka topic. Configured by the environment (below).";

fn invalid(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("kv-writer: invalid configuration: {error}");
    ExitCode::from(2)
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
