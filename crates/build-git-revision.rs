// The build script of both binaries (their build.rs includes this file): embeds the git revision
// the binary is built from as KV_GIT_REVISION, which `--version` prints.
//
// KV_GIT_REVISION in the build's environment wins (the Dockerfile passes its REVISION build
// argument, as the image's build context has no .git); otherwise `git rev-parse`; with neither,
// "unknown". Cargo reruns this when HEAD moves (a commit, a checkout) or the variable changes.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=KV_GIT_REVISION");
    println!("cargo:rerun-if-changed=build.rs");
    let from_env = std::env::var("KV_GIT_REVISION")
        .ok()
        .filter(|revision| !revision.trim().is_empty());
    let revision = from_env.or_else(|| {
        // HEAD, and the branch it points at (loose or packed), so a commit reruns this; paths
        // as git resolves them (a worktree's HEAD is not under the work tree).
        let branch = git(&["symbolic-ref", "-q", "HEAD"])
            .and_then(|branch| git(&["rev-parse", "--git-path", &branch]));
        let watched = [
            git(&["rev-parse", "--git-path", "HEAD"]),
            branch,
            git(&["rev-parse", "--git-path", "packed-refs"]),
        ];
        for path in watched.into_iter().flatten() {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    println!(
        "cargo:rustc-env=KV_GIT_REVISION={}",
        revision.as_deref().unwrap_or("unknown")
    );
}
