//! The keys one request (or one RESP session, one watch) may touch for an action, compiled once
//! from the token's scopes and KV_API_AUTH_PREFIXES (`settings::prefixes`), then asked per key.

use std::sync::Arc;

use crate::settings::prefixes::{KeyAction, PrefixRules, PREFIXES_VAR};
use crate::web::error::{ApiError, ErrorCode};

/// The keys a caller may touch for one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGrant {
    action: KeyAction,
    reach: Reach,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Reach {
    /// No rule applies (KV_API_AUTH_PREFIXES unset, or auth off), or a rule grants `*`.
    All,
    /// Sorted, none a prefix of another: the ranges they name are disjoint and in key order.
    Prefixes(Vec<Arc<[u8]>>),
}

impl KeyGrant {
    /// Every key: what a caller gets while KV_API_AUTH_PREFIXES is unset.
    pub fn all(action: KeyAction) -> Self {
        Self {
            action,
            reach: Reach::All,
        }
    }

    /// What `rules` grant for `action` to a token holding the scopes `has` says it holds.
    pub fn compile(rules: &PrefixRules, action: KeyAction, has: impl Fn(&str) -> bool) -> Self {
        let mut prefixes = Vec::new();
        for rule in rules.0.iter().filter(|r| r.grants(action) && has(&r.scope)) {
            match &rule.prefix {
                None => return Self::all(action),
                Some(prefix) => prefixes.push(Arc::clone(prefix)),
            }
        }
        prefixes.sort();
        // Sorted, a prefix comes right before the keys it covers: keep only the widest.
        prefixes.dedup_by(|later, kept| later.starts_with(&kept[..]));
        Self {
            action,
            reach: Reach::Prefixes(prefixes),
        }
    }

    pub fn action(&self) -> KeyAction {
        self.action
    }

    /// Whether every key is allowed, so callers can skip the per-key work.
    pub fn is_all(&self) -> bool {
        self.reach == Reach::All
    }

    pub fn allows(&self, key: &[u8]) -> bool {
        match &self.reach {
            Reach::All => true,
            Reach::Prefixes(prefixes) => prefixes.iter().any(|p| key.starts_with(&p[..])),
        }
    }

    /// `Ok` when `key` is allowed, else `403 forbidden` naming the action and the key.
    pub fn check(&self, key: &[u8]) -> Result<(), ApiError> {
        if self.allows(key) {
            Ok(())
        } else {
            Err(self.refusal(key))
        }
    }

    /// `Ok` when every key of a batch is allowed, else the `403` of the first that is not:
    /// a batch is refused whole.
    pub fn check_items<K: AsRef<[u8]>>(&self, field: &str, keys: &[K]) -> Result<(), ApiError> {
        if self.is_all() {
            return Ok(());
        }
        keys.iter()
            .enumerate()
            .try_for_each(|(index, key)| self.check_item(field, index, key.as_ref()))
    }

    /// As [`KeyGrant::check`] for the key of a batch's item, named `field[index]`.
    pub fn check_item(&self, field: &str, index: usize, key: &[u8]) -> Result<(), ApiError> {
        self.check(key).map_err(|error| ApiError {
            message: format!("`{field}[{index}]`: {}", error.message),
            ..error
        })
    }

    /// The `403` for a key this grant does not allow.
    pub fn refusal(&self, key: &[u8]) -> ApiError {
        ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "no prefix of {PREFIXES_VAR} grants the token's scopes {} on key {}",
                self.action.name(),
                shown(key)
            ),
        )
    }

    /// The prefixes to scan so that a listing of `prefix` returns exactly the keys under it
    /// this grant allows, in key order: `[prefix]` when it is allowed whole, the granted
    /// prefixes under it otherwise, and `None` when no allowed key can start with it.
    pub fn listing(&self, prefix: &[u8]) -> Option<Vec<Vec<u8>>> {
        match &self.reach {
            Reach::All => Some(vec![prefix.to_vec()]),
            Reach::Prefixes(granted) => {
                if granted.iter().any(|g| prefix.starts_with(&g[..])) {
                    return Some(vec![prefix.to_vec()]);
                }
                let under: Vec<Vec<u8>> = granted
                    .iter()
                    .filter(|g| g.starts_with(prefix))
                    .map(|g| g.to_vec())
                    .collect();
                (!under.is_empty()).then_some(under)
            }
        }
    }

    /// The `403` for a listing (or a watch) of a prefix under which no key is allowed.
    pub fn prefix_refusal(&self, prefix: &[u8]) -> ApiError {
        ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "no prefix of {PREFIXES_VAR} grants the token's scopes {} on any key starting \
                 with {}",
                self.action.name(),
                shown(prefix)
            ),
        )
    }
}

/// A key as an error message shows it: text when it is, quoted and cut short.
fn shown(key: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&key[..key.len().min(MAX)]);
    if key.len() > MAX {
        format!("{text:?}…")
    } else {
        format!("{text:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(raw: &str, action: KeyAction, scopes: &[&str]) -> KeyGrant {
        let rules = PrefixRules::parse(raw).unwrap();
        KeyGrant::compile(&rules, action, |s| scopes.contains(&s))
    }

    #[test]
    fn a_key_is_allowed_only_under_a_prefix_granted_to_one_of_the_tokens_scopes() {
        let rules = "billing read,watch billing/; ops write ops/; audit read audit/";
        let read = grant(rules, KeyAction::Read, &["billing", "ops"]);
        assert!(read.allows(b"billing/a"));
        assert!(!read.allows(b"ops/a"), "ops may only write");
        assert!(!read.allows(b"audit/a"), "the token has no audit scope");
        assert!(
            !read.allows(b"billing"),
            "the prefix is billing/, not billing"
        );
        let error = read.check(b"ops/a").unwrap_err();
        assert_eq!(error.code, ErrorCode::Forbidden);
        assert!(
            error.message.contains("read on key \"ops/a\""),
            "{}",
            error.message
        );
        assert!(grant(rules, KeyAction::Write, &["ops"]).allows(b"ops/x"));
        assert!(!grant(rules, KeyAction::Report, &["billing", "ops"]).allows(b"billing/a"));
        assert!(!grant(rules, KeyAction::Read, &[]).allows(b"billing/a"));
    }

    #[test]
    fn a_star_prefix_or_no_rules_allow_every_key() {
        assert!(grant("ops * *", KeyAction::Delete, &["ops"]).is_all());
        assert!(!grant("ops * *", KeyAction::Delete, &["dev"]).allows(b"x"));
        assert!(KeyGrant::all(KeyAction::Read).allows(b"anything"));
    }

    #[test]
    fn a_listing_scans_only_the_granted_part_of_the_requested_prefix() {
        let g = grant(
            "a read b/x; a read b/y/; a read b/y/z; a read c",
            KeyAction::Read,
            &["a"],
        );
        // Wider than every grant: only the granted prefixes under it, widest only, in order.
        assert_eq!(
            g.listing(b"b/"),
            Some(vec![b"b/x".to_vec(), b"b/y/".to_vec()])
        );
        assert_eq!(
            g.listing(b""),
            Some(vec![b"b/x".to_vec(), b"b/y/".to_vec(), b"c".to_vec()])
        );
        // Inside a grant: the requested prefix whole.
        assert_eq!(g.listing(b"b/y/q"), Some(vec![b"b/y/q".to_vec()]));
        assert_eq!(g.listing(b"cat"), Some(vec![b"cat".to_vec()]));
        // No overlap at all.
        assert_eq!(g.listing(b"d"), None);
        assert_eq!(g.listing(b"b/z"), None);
        let error = g.prefix_refusal(b"d");
        assert_eq!(error.code, ErrorCode::Forbidden);
    }
}
