//! Outside programs some end-to-end tests drive, each installed by a project script (idempotent,
//! cached): the variable `make test` exports names it, else the script is run to install it and
//! print where it is.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The path `var` names, or the one `script` (under scripts/) prints after installing.
fn installed(var: &str, script: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new("bash")
        .arg(root.join("scripts").join(script))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{script}: {e}"));
    assert!(output.status.success(), "scripts/{script} failed");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// The Python with `cryptography` and `kafka-python` (`KV_SEED_PYTHON`, or
/// scripts/install-seed-tools.sh).
pub fn seed_python() -> PathBuf {
    installed("KV_SEED_PYTHON", "install-seed-tools.sh")
}

/// The script that seals and produces records as the original .NET service did.
pub fn seed_producer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/seed-tools/produce-seed-records.py")
}

/// Debian's chromium (`KV_CHROMIUM`, or scripts/install-chromium.sh).
pub fn chromium() -> PathBuf {
    installed("KV_CHROMIUM", "install-chromium.sh")
}

/// The DOM of `url` once a real headless browser loaded it, serialized (`--dump-dom`).
pub fn browser_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("a browser profile folder");
    let output = Command::new(chromium())
        .args([
            "--headless",
            // As root (CI) chromium refuses to start sandboxed.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(
        output.status.success(),
        "chromium --dump-dom {url} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
