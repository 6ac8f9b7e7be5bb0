use std::process::ExitCode;

use kv_core::settings::Env;
use kv_writer::{App, Settings};

#[actix_web::main]
async fn main() -> ExitCode {
    let settings = match Env::from_process()
        .and_then(|env| Settings::from_env(&env).map_err(|error| env.locate(error)))
    {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("kv-writer: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
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
