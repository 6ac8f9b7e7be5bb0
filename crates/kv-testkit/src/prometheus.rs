//! Reading the Prometheus text format the services answer on `/metrics`.

/// The value of `name`'s first sample in `text` (the exposition format) whose labels include
/// every one of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .find(|line| {
            labels
                .iter()
                .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// `name`'s value (the first sample, whatever its labels) on `service`'s `/metrics` now, or
/// `None` when the service does not answer or has no such sample.
pub async fn scrape(http: &reqwest::Client, service: &str, name: &str) -> Option<f64> {
    let text = http
        .get(format!("{service}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    metric(&text, name, &[])
}

/// What `promtool check metrics` says of `text` (the exposition format's rules and Prometheus'
/// naming lint), or `None` when it finds nothing. promtool comes from Debian's `prometheus`
/// package: `PROMTOOL` names it (`make test` exports it), else it is looked up on `PATH`.
pub fn promtool_check_metrics(text: &str) -> Option<String> {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let promtool = std::env::var_os("PROMTOOL").unwrap_or_else(|| "promtool".into());
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; run scripts/install-deploy-tools.sh (make test does)",
                promtool.to_string_lossy()
            )
        });
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("promtool output");
    if output.status.success() {
        return None;
    }
    Some(format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}
