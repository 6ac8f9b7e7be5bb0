use std::process::ExitCode;

use kv_core::cli::{self, Command};
use kv_core::settings::catalogue::Role;
use kv_reader::{App, Settings};

const ABOUT: &str = "A replica of the key-value topic in a local store, serving reads over HTTP. Configured by the environment (below).";

fn main() -> ExitCode {
    // KV_GIT_REVISION: set by build.rs.
    let version = (env!("CARGO_PKG_VERSION"), env!("KV_GIT_REVISION"));
    let (command, settings) = match cli::prepare(
        Role::Reader,
        "kv-reader",
        version,
        ABOUT,
        Settings::from_env,
    ) {
        Ok(ready) => ready,
        Err(code) => return code,
    };
    actix_web::rt::System::new().block_on(async move {
        match command {
            Command::CheckConfig => App::check(&settings).await,
            Command::Serve | Command::Healthcheck { .. } => serve(settings).await,
        }
    })
}

async fn serve(settings: Settings) -> ExitCode {
    kv_core::telemetry::init(&settings.core.log);
    let app = match App::build(settings).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!("kv-reader cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("kv-reader stopped with an error: {error}");
            ExitCode::FAILURE
        }
    }
}
