//! Scaffolding for computed state: a rules file, agents reporting through kv-writer, and the
//! values a test expects, computed here independently of the service.

use std::collections::BTreeMap;
use std::io::Write as _;

use crate::Service;

/// A rules file for `KV_API_STATE_RULES`, removed when dropped.
pub fn rules_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("rules file");
    file.write_all(text.as_bytes()).expect("write rules");
    file
}

/// One report through kv-writer with auth off; the status it got.
pub async fn report(
    http: &reqwest::Client,
    writer: &Service,
    key: &str,
    agent: &str,
    value: &str,
) -> u16 {
    http.put(writer.url(&format!("/v1/reports/{key}")))
        .header("X-KV-Agent", agent)
        .body(value.to_owned())
        .send()
        .await
        .expect("report")
        .status()
        .as_u16()
}

/// The last report of each agent, per key, as a test sent them (each agent in order).
#[derive(Debug, Default, Clone)]
pub struct Reports(pub BTreeMap<String, BTreeMap<String, String>>);

impl Reports {
    pub fn note(&mut self, key: &str, agent: &str, value: &str) {
        self.0
            .entry(key.to_owned())
            .or_default()
            .insert(agent.to_owned(), value.to_owned());
    }

    /// A majority over the agents' last reports: the value more than half of them report.
    pub fn majority(&self, key: &str) -> Option<String> {
        let agents = self.0.get(key)?;
        let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
        for value in agents.values() {
            *tally.entry(value).or_default() += 1;
        }
        tally
            .into_iter()
            .find(|(_, n)| 2 * n > agents.len())
            .map(|(v, _)| v.to_owned())
    }

    /// `value` when any agent's last report is it, else `otherwise`.
    pub fn at_least_one(&self, key: &str, value: &str, otherwise: &str) -> String {
        let any = self
            .0
            .get(key)
            .is_some_and(|agents| agents.values().any(|v| v == value));
        if any { value } else { otherwise }.to_owned()
    }

    /// `value` when every agent's last report is it, else `otherwise`.
    pub fn all(&self, key: &str, value: &str, otherwise: &str) -> String {
        let all = self
            .0
            .get(key)
            .is_some_and(|agents| !agents.is_empty() && agents.values().all(|v| v == value));
        if all { value } else { otherwise }.to_owned()
    }

    pub fn count(&self, key: &str) -> String {
        self.0.get(key).map_or(0, BTreeMap::len).to_string()
    }
}

/// The value of `key` on `reader` as text, if it has one (a computed key's published value).
pub async fn published(http: &reqwest::Client, reader: &Service, key: &str) -> Option<String> {
    let response = http
        .get(reader.url(&format!("/v1/kv/{key}")))
        .send()
        .await
        .ok()?;
    (response.status() == 200).then_some(())?;
    response.text().await.ok()
}
