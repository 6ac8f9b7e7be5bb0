use std::process::ExitCode;

use kv_reader::{App, Settings};

const ABOUT: &str = "A replica of the key-value topic in a local store, serving reads over HTTP. Configured by the environment (below).";

fn main() -> ExitCode {
    // KV_GIT_REVISION: set by build.rs.
    let version = (env!("CARGO_PKG_VERSION"), env!("KV_GIT_REVISION"));
    kv_core::cli::run_main::<App>(version, ABOUT, Settings::from_env)
}
