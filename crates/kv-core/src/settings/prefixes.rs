//! KV_API_AUTH_PREFIXES: which scopes or roles may act on which key prefixes.
//!
//! The rules are parsed here, once, at start-up; `web::prefixes` turns them and a token's
//! claims into the keys one request may touch.

use std::sync::Arc;

use super::env::SettingsError;

/// The variable holding the rules.
pub const PREFIXES_VAR: &str = "KV_API_AUTH_PREFIXES";

/// What a caller does to a key; each rule grants some of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAction {
    Read,
    Write,
    Delete,
    Watch,
    Report,
}

impl KeyAction {
    pub const ALL: [KeyAction; 5] = [
        KeyAction::Read,
        KeyAction::Write,
        KeyAction::Delete,
        KeyAction::Watch,
        KeyAction::Report,
    ];

    /// The name a rule spells it with.
    pub fn name(self) -> &'static str {
        match self {
            KeyAction::Read => "read",
            KeyAction::Write => "write",
            KeyAction::Delete => "delete",
            KeyAction::Watch => "watch",
            KeyAction::Report => "report",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// One rule: holders of `scope` may take `actions` on keys starting with `prefix` (every key
/// when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixRule {
    pub scope: String,
    actions: u8,
    /// Shared, so a request's grant holds it without copying the bytes.
    pub prefix: Option<Arc<[u8]>>,
}

impl PrefixRule {
    pub fn grants(&self, action: KeyAction) -> bool {
        self.actions & action.bit() != 0
    }
}

/// The rules of KV_API_AUTH_PREFIXES, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrefixRules(pub Vec<PrefixRule>);

impl PrefixRules {
    /// Parses `<scope-or-role> <actions> <prefix>` rules separated by `;` or line breaks (a
    /// settings file's block of lines). Actions are a comma
    /// list of read, write, delete, watch, report, or `*` for all; a prefix of `*` is every key.
    /// Empty rules (a trailing `;`) are skipped; the error names the rule at fault.
    pub fn parse(raw: &str) -> Result<Self, SettingsError> {
        let error = |rule: &str, reason: String| {
            SettingsError::new(PREFIXES_VAR, format!("rule {:?}: {reason}", rule.trim()))
        };
        let mut rules = Vec::new();
        for rule in raw.split([';', '\n']).filter(|r| !r.trim().is_empty()) {
            let words: Vec<&str> = rule.split_whitespace().collect();
            let [scope, actions, prefix] = words[..] else {
                return Err(error(
                    rule,
                    format!(
                        "expected `<scope-or-role> <actions> <prefix>` (three words), got {}",
                        words.len()
                    ),
                ));
            };
            let mut bits = 0u8;
            for name in actions.split(',') {
                bits |= match name {
                    "*" => KeyAction::ALL.iter().fold(0, |all, a| all | a.bit()),
                    _ => KeyAction::ALL
                        .into_iter()
                        .find(|a| a.name() == name)
                        .ok_or_else(|| {
                            error(
                                rule,
                                format!(
                                    "unknown action {name:?}; choose among read, write, delete, \
                                     watch, report, or *"
                                ),
                            )
                        })?
                        .bit(),
                };
            }
            rules.push(PrefixRule {
                scope: scope.to_owned(),
                actions: bits,
                prefix: (prefix != "*").then(|| Arc::from(prefix.as_bytes())),
            });
        }
        if rules.is_empty() {
            return Err(SettingsError::new(
                PREFIXES_VAR,
                "is set but holds no rule; unset it to let every scope reach every key",
            ));
        }
        Ok(Self(rules))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_with_action_lists_and_star() {
        let rules =
            PrefixRules::parse(" billing read,watch billing/ ; ops * *\nadmin write,delete a/b;")
                .unwrap();
        assert_eq!(rules.0.len(), 3);
        assert_eq!(rules.0[0].scope, "billing");
        assert!(rules.0[0].grants(KeyAction::Read) && rules.0[0].grants(KeyAction::Watch));
        assert!(!rules.0[0].grants(KeyAction::Write));
        assert_eq!(rules.0[0].prefix.as_deref(), Some(&b"billing/"[..]));
        assert!(KeyAction::ALL.iter().all(|a| rules.0[1].grants(*a)));
        assert_eq!(rules.0[1].prefix, None);
        assert!(rules.0[2].grants(KeyAction::Delete) && !rules.0[2].grants(KeyAction::Report));
    }

    #[test]
    fn a_bad_rule_is_named_with_the_variable() {
        let error = PrefixRules::parse("a read x/; b rread y/").unwrap_err();
        assert_eq!(error.var, PREFIXES_VAR);
        assert!(error.reason.contains("\"b rread y/\""), "{}", error.reason);
        assert!(
            error.reason.contains("unknown action \"rread\""),
            "{}",
            error.reason
        );
        let error = PrefixRules::parse("a read").unwrap_err();
        assert!(error.reason.contains("three words"), "{}", error.reason);
        let error = PrefixRules::parse(" ; ").unwrap_err();
        assert!(error.reason.contains("no rule"), "{}", error.reason);
    }
}
