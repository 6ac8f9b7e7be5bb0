//! Computed shared state (docs/architecture.md, "Computed state"): the rules file both services
//! read, how a rule reduces agents' reports to one value, and the records that carry reports,
//! timer ticks and sink progress through the topic (docs/wire-format.md).
//!
//! Reports, ticks and sink marks are *control records*: a reader recognises them by a header and
//! never stores them as keys. Their record key starts with the state key's record key, so
//! compaction keeps the last report of each agent and the last tick of each key; they are
//! produced to the state key's partition, so the partition's owner sees them in order with the
//! key's own records.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

/// Kafka header of a report: the reporting agent. Its record key is
/// `<state key's record key> 0x1F <agent>`.
pub const REPORT_AGENT_HEADER: &str = "X-KV-Report-Agent";
/// Kafka header of an owner's timer tick for a key: the due time it evaluates the key's rule at,
/// in milliseconds since the Unix epoch. Its record key is `<state key's record key> 0x1F`.
pub const TICK_HEADER: &str = "X-KV-Tick-At";
/// Kafka header of an owner's sink mark: every publication of the partition up to this offset
/// is on its sink topic. Its record key is [`SINK_MARK_KEY`].
pub const SINK_DONE_HEADER: &str = "X-KV-Sink-Done";
/// Kafka header of an owner's publication of a computed value: the time (ms) the value became
/// the rule's candidate. The record is an ordinary conditional put of the state key.
pub const PUBLISHED_HEADER: &str = "X-KV-Published";
/// Header of a sink record: `<partition>-<offset>` of the publication that decided the change,
/// the same on a repeat after an owner failover (a consumer drops a position it has seen).
pub const DECIDED_AT_HEADER: &str = "X-KV-Decided-At";
/// HTTP header naming the reporting agent when auth is off.
pub const AGENT_HTTP_HEADER: &str = "X-KV-Agent";
/// The record key of a sink mark.
pub const SINK_MARK_KEY: &[u8] = b"\x1fsink-done";
/// Separates a state key's record key from the agent in a report's record key.
pub const SEPARATOR: u8 = 0x1f;
/// Longest agent name, in bytes.
pub const MAX_AGENT_BYTES: usize = 128;
/// Most agents a key keeps reports of: a report from one more is ignored (counted), so no
/// caller can grow a key's evaluation without bound.
pub const MAX_AGENTS_PER_KEY: usize = 1000;
/// Largest report value, in bytes: a rule compares states (`up`, `down`, a level), and a key's
/// evaluation holds every agent's report, so 1000 agents stay within 4 MiB.
pub const MAX_REPORT_BYTES: usize = 4096;
/// Most rules a file may hold.
pub const MAX_RULES: usize = 1000;
/// Longest hold and report lifetime a rule may ask for: a week.
pub const MAX_SECONDS: u64 = 7 * 24 * 3600;

/// How a rule reduces the live reports of a key to one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reducer {
    Latest,
    Majority,
    AtLeastOne,
    All,
    Count,
}

impl Reducer {
    pub fn name(self) -> &'static str {
        match self {
            Self::Latest => "latest",
            Self::Majority => "majority",
            Self::AtLeastOne => "at_least_one",
            Self::All => "all",
            Self::Count => "count",
        }
    }
}

/// One rule, as validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub prefix: String,
    pub reducer: Reducer,
    /// Majority: a value wins with more than this share of the live reports.
    pub quorum: f64,
    /// At least one / all: the report value that counts, and the state when it does not.
    pub value: Option<Vec<u8>>,
    pub otherwise: Option<Vec<u8>>,
    /// A report older than this (ms, record time) no longer counts; `None`: forever.
    pub report_ttl_ms: Option<u64>,
    /// A new computed value is published only after it held this long (ms).
    pub hold_ms: u64,
    pub sink_topic: Option<String>,
}

/// A report as a rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report<'a> {
    pub value: &'a [u8],
    /// Record time, ms.
    pub at_ms: u64,
    /// Its offset: the later of two reports at the same time is the newer.
    pub offset: i64,
}

impl Rule {
    /// Whether a report made at `at_ms` still counts at `now_ms`.
    pub fn is_live(&self, at_ms: u64, now_ms: u64) -> bool {
        self.report_ttl_ms
            .is_none_or(|ttl| at_ms.saturating_add(ttl) > now_ms)
    }

    /// The value the live reports compute; `None`: no value wins, the published one stays.
    pub fn compute(&self, live: &[Report<'_>]) -> Option<Vec<u8>> {
        let counting = |value: &[u8]| live.iter().filter(|r| r.value == value).count();
        match self.reducer {
            Reducer::Latest => live
                .iter()
                .max_by_key(|r| (r.at_ms, r.offset))
                .map(|r| r.value.to_vec()),
            Reducer::Count => Some(live.len().to_string().into_bytes()),
            Reducer::Majority => {
                let mut tally: HashMap<&[u8], usize> = HashMap::new();
                for report in live {
                    *tally.entry(report.value).or_default() += 1;
                }
                let total = live.len() as f64;
                tally
                    .into_iter()
                    .find(|(_, n)| *n as f64 > self.quorum * total)
                    .map(|(value, _)| value.to_vec())
            }
            Reducer::AtLeastOne => {
                let value = self.value.as_deref().unwrap_or_default();
                Some(if counting(value) > 0 {
                    value.to_vec()
                } else {
                    self.otherwise.clone().unwrap_or_default()
                })
            }
            Reducer::All => {
                let value = self.value.as_deref().unwrap_or_default();
                Some(if !live.is_empty() && counting(value) == live.len() {
                    value.to_vec()
                } else {
                    self.otherwise.clone().unwrap_or_default()
                })
            }
        }
    }
}

/// The rules of `KV_API_STATE_RULES`, validated; empty when the variable is unset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateRules {
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRules {
    rules: Vec<FileRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    prefix: Option<String>,
    reducer: Option<Reducer>,
    quorum: Option<f64>,
    value: Option<String>,
    otherwise: Option<String>,
    report_ttl_seconds: Option<u64>,
    hold_seconds: Option<u64>,
    sink_topic: Option<String>,
}

impl StateRules {
    /// Reads and validates a rules file; an error names the rule and the field.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text)
    }

    /// Validates the text of a rules file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: FileRules =
            serde_yaml_ng::from_str(text).map_err(|e| format!("not a rules file: {e}"))?;
        if file.rules.len() > MAX_RULES {
            return Err(format!("more than {MAX_RULES} rules"));
        }
        let mut rules = Vec::with_capacity(file.rules.len());
        for (index, rule) in file.rules.into_iter().enumerate() {
            let name = match &rule.prefix {
                Some(prefix) => format!("rule {} (prefix {prefix:?})", index + 1),
                None => format!("rule {}", index + 1),
            };
            rules.push(Self::check(rule).map_err(|e| format!("{name}: {e}"))?);
        }
        for (i, a) in rules.iter().enumerate() {
            for b in &rules[i + 1..] {
                if a.prefix.starts_with(&b.prefix) || b.prefix.starts_with(&a.prefix) {
                    return Err(format!(
                        "rules with prefixes {:?} and {:?} overlap: a key may match one rule only",
                        a.prefix, b.prefix
                    ));
                }
            }
        }
        Ok(Self { rules })
    }

    fn check(rule: FileRule) -> Result<Rule, String> {
        let prefix = rule.prefix.ok_or("field prefix: missing")?;
        if prefix.is_empty() || prefix.bytes().any(|b| b.is_ascii_control()) {
            return Err("field prefix: must be non-empty text without control characters".into());
        }
        let reducer = rule.reducer.ok_or(
            "field reducer: missing (latest, majority, at_least_one, all or count)".to_owned(),
        )?;
        let quorum = match (reducer, rule.quorum) {
            (Reducer::Majority, None) => 0.5,
            (Reducer::Majority, Some(q)) if (0.0..1.0).contains(&q) => q,
            (Reducer::Majority, Some(_)) => {
                return Err("field quorum: must be at least 0 and below 1".into())
            }
            (_, Some(_)) => return Err("field quorum: only a majority rule has one".into()),
            (_, None) => 0.0,
        };
        let two_valued = matches!(reducer, Reducer::AtLeastOne | Reducer::All);
        match (two_valued, &rule.value, &rule.otherwise) {
            (true, None, _) => {
                return Err("field value: missing (the report value that counts)".into())
            }
            (true, _, None) => {
                return Err(
                    "field otherwise: missing (the state when the value does not count)".into(),
                )
            }
            (true, Some(v), Some(o)) if v == o => {
                return Err("field otherwise: must differ from value".into())
            }
            (false, Some(_), _) => {
                return Err(format!("field value: a {} rule has none", reducer.name()))
            }
            (false, _, Some(_)) => {
                return Err(format!(
                    "field otherwise: a {} rule has none",
                    reducer.name()
                ))
            }
            _ => {}
        }
        let seconds = |field: &str, value: Option<u64>, zero_ok: bool| match value {
            Some(s) if s > MAX_SECONDS => {
                Err(format!("field {field}: at most {MAX_SECONDS} (a week)"))
            }
            Some(0) if !zero_ok => Err(format!("field {field}: must be above 0")),
            other => Ok(other.map(|s| s * 1000)),
        };
        let report_ttl_ms = seconds("report_ttl_seconds", rule.report_ttl_seconds, false)?;
        let hold_ms = seconds("hold_seconds", rule.hold_seconds, true)?.unwrap_or(0);
        if let Some(topic) = &rule.sink_topic {
            let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if topic.is_empty() || topic.len() > 249 || !topic.chars().all(legal) {
                return Err(
                    "field sink_topic: not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)"
                        .into(),
                );
            }
        }
        Ok(Rule {
            prefix,
            reducer,
            quorum,
            value: rule.value.map(String::into_bytes),
            otherwise: rule.otherwise.map(String::into_bytes),
            report_ttl_ms,
            hold_ms,
            sink_topic: rule.sink_topic,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule a key is under, if any.
    pub fn rule_for(&self, key: &[u8]) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|rule| key.starts_with(rule.prefix.as_bytes()))
    }

    /// One line per rule, for `check-config`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for rule in &self.rules {
            let _ = write!(out, "\n  {:?}: {}", rule.prefix, rule.reducer.name());
            if rule.reducer == Reducer::Majority {
                let _ = write!(out, " (quorum {})", rule.quorum);
            }
            if let (Some(v), Some(o)) = (&rule.value, &rule.otherwise) {
                let _ = write!(
                    out,
                    " of {:?} else {:?}",
                    String::from_utf8_lossy(v),
                    String::from_utf8_lossy(o)
                );
            }
            if let Some(ttl) = rule.report_ttl_ms {
                let _ = write!(out, ", reports count {} s", ttl / 1000);
            }
            if rule.hold_ms > 0 {
                let _ = write!(out, ", hold {} s", rule.hold_ms / 1000);
            }
            if let Some(topic) = &rule.sink_topic {
                let _ = write!(out, ", sink {topic}");
            }
        }
        out
    }
}

/// Checks an agent's name: 1 to [`MAX_AGENT_BYTES`] bytes of text without control characters.
pub fn check_agent(agent: &str) -> Result<(), String> {
    if agent.is_empty() || agent.len() > MAX_AGENT_BYTES || agent.chars().any(char::is_control) {
        return Err(format!(
            "an agent is 1 to {MAX_AGENT_BYTES} bytes of text without control characters"
        ));
    }
    Ok(())
}

/// The record key of `agent`'s report on the key whose record key is `record_key`.
pub fn report_record_key(record_key: &[u8], agent: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(record_key.len() + 1 + agent.len());
    key.extend_from_slice(record_key);
    key.push(SEPARATOR);
    key.extend_from_slice(agent);
    key
}

/// The record key of an owner's tick on the key whose record key is `record_key`.
pub fn tick_record_key(record_key: &[u8]) -> Vec<u8> {
    report_record_key(record_key, b"")
}

/// A control record, recognised by its header (docs/wire-format.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control<'a> {
    Report { key: &'a [u8], agent: &'a [u8] },
    Tick { key: &'a [u8], at_ms: u64 },
    SinkDone { upto: i64 },
}

/// Reads a record's headers for a control header. `Ok(None)`: an ordinary record. A control
/// header whose record key or value does not fit is an error naming it (the record is skipped).
pub fn control_record<'a>(
    record_key: &'a [u8],
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Result<Option<Control<'a>>, String> {
    for (name, value) in headers {
        let value = || value.ok_or_else(|| format!("header {name} has no value"));
        if name.eq_ignore_ascii_case(REPORT_AGENT_HEADER) {
            let agent = value()?;
            let key = record_key
                .strip_suffix(agent)
                .and_then(|k| k.strip_suffix(&[SEPARATOR]))
                .filter(|k| !k.is_empty() && !agent.is_empty())
                .ok_or_else(|| {
                    format!("a report's record key must be <key> 0x1F <agent of {name}>")
                })?;
            return Ok(Some(Control::Report { key, agent }));
        }
        if name.eq_ignore_ascii_case(TICK_HEADER) {
            let at_ms = decimal(value()?).ok_or_else(|| format!("header {name} is not a time"))?;
            let key = record_key
                .strip_suffix(&[SEPARATOR])
                .filter(|k| !k.is_empty())
                .ok_or_else(|| "a tick's record key must be <key> 0x1F".to_owned())?;
            return Ok(Some(Control::Tick { key, at_ms }));
        }
        if name.eq_ignore_ascii_case(SINK_DONE_HEADER) {
            let upto =
                decimal(value()?).ok_or_else(|| format!("header {name} is not an offset"))?;
            return Ok(Some(Control::SinkDone { upto: upto as i64 }));
        }
    }
    Ok(None)
}

fn decimal(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The JSON value of a sink record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SinkChange {
    pub key: String,
    pub previous: Option<String>,
    pub value: String,
    /// When the change was published (record time, ms since the Unix epoch).
    pub at: u64,
    /// The rule's prefix.
    pub rule: String,
    /// `<partition>-<offset>` of the publication (also in [`DECIDED_AT_HEADER`]).
    pub decided_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(value: &str, at_ms: u64) -> Report<'_> {
        Report {
            value: value.as_bytes(),
            at_ms,
            offset: at_ms as i64,
        }
    }

    fn rule(text: &str) -> Rule {
        StateRules::parse(text).unwrap().rules()[0].clone()
    }

    #[test]
    fn each_reducer_computes_what_its_name_says() {
        let live = [report("down", 1), report("up", 2), report("down", 3)];
        let majority = rule("rules: [{prefix: a/, reducer: majority}]");
        assert_eq!(majority.compute(&live).as_deref(), Some(&b"down"[..]));
        assert_eq!(majority.compute(&live[..2]), None, "a tie has no winner");
        assert_eq!(majority.compute(&[]), None);
        let latest = rule("rules: [{prefix: a/, reducer: latest}]");
        assert_eq!(latest.compute(&live[..2]).as_deref(), Some(&b"up"[..]));
        let one = "rules: [{prefix: a/, reducer: at_least_one, value: down, otherwise: up}]";
        assert_eq!(rule(one).compute(&live[1..2]).as_deref(), Some(&b"up"[..]));
        assert_eq!(rule(one).compute(&live).as_deref(), Some(&b"down"[..]));
        let all = "rules: [{prefix: a/, reducer: all, value: down, otherwise: up}]";
        assert_eq!(rule(all).compute(&live).as_deref(), Some(&b"up"[..]));
        assert_eq!(rule(all).compute(&[live[0]]).as_deref(), Some(&b"down"[..]));
        assert_eq!(rule(all).compute(&[]).as_deref(), Some(&b"up"[..]));
        let count = rule("rules: [{prefix: a/, reducer: count}]");
        assert_eq!(count.compute(&live).as_deref(), Some(&b"3"[..]));
        let strict = rule("rules: [{prefix: a/, reducer: majority, quorum: 0.7}]");
        assert_eq!(strict.compute(&live), None, "2 of 3 is not above 0.7");
    }

    #[test]
    fn a_bad_rules_file_is_refused_naming_the_rule_and_the_field() {
        let cases = [
            ("rules: [{reducer: count}]", "rule 1: field prefix: missing"),
            (
                "rules: [{prefix: a/}]",
                "rule 1 (prefix \"a/\"): field reducer",
            ),
            ("rules: [{prefix: a/, reducer: vote}]", "not a rules file"),
            (
                "rules: [{prefix: a/, reducer: majority, quorum: 1.5}]",
                "field quorum",
            ),
            (
                "rules: [{prefix: a/, reducer: count, quorum: 0.5}]",
                "field quorum",
            ),
            (
                "rules: [{prefix: a/, reducer: all, value: x}]",
                "field otherwise",
            ),
            (
                "rules: [{prefix: a/, reducer: latest, value: x}]",
                "field value",
            ),
            (
                "rules: [{prefix: a/, reducer: count, hold_seconds: 9999999}]",
                "field hold_seconds",
            ),
            (
                "rules: [{prefix: a/, reducer: count, report_ttl_seconds: 0}]",
                "field report_ttl_seconds",
            ),
            (
                "rules: [{prefix: a/, reducer: count, sink_topic: 'a b'}]",
                "field sink_topic",
            ),
            (
                "rules: [{prefix: a/, reducer: count, colour: red}]",
                "unknown field",
            ),
            (
                "rules: [{prefix: a/, reducer: count}, {prefix: a/b, reducer: latest}]",
                "overlap",
            ),
        ];
        for (text, expected) in cases {
            let error = StateRules::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn a_key_finds_its_rule_by_prefix_and_reports_ticks_and_marks_are_recognised() {
        let rules = StateRules::parse(
            "rules: [{prefix: site/, reducer: majority, hold_seconds: 3, sink_topic: s}]",
        )
        .unwrap();
        assert_eq!(rules.rule_for(b"site/42").unwrap().hold_ms, 3000);
        assert!(rules.rule_for(b"other").is_none());
        let key = report_record_key(b"site/42", b"agent-1");
        let found = control_record(&key, [(REPORT_AGENT_HEADER, Some(&b"agent-1"[..]))]);
        assert_eq!(
            found,
            Ok(Some(Control::Report {
                key: b"site/42",
                agent: b"agent-1"
            }))
        );
        let forged = control_record(&key, [(REPORT_AGENT_HEADER, Some(&b"agent-2"[..]))]);
        assert!(forged.is_err());
        let tick = tick_record_key(b"site/42");
        assert_eq!(
            control_record(&tick, [(TICK_HEADER, Some(&b"1700"[..]))]),
            Ok(Some(Control::Tick {
                key: b"site/42",
                at_ms: 1700
            }))
        );
        assert_eq!(control_record(b"site/42", [("X-Other", None)]), Ok(None));
    }
}
