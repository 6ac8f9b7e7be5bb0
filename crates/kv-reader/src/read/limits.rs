//! How much one read may ask for, on any port: a batch's keys and a listing page's.

/// Most keys one batch (`POST /v1/kv:batchGet`, `MGET`) may name.
pub const MAX_BATCH_KEYS: usize = 1000;
/// Keys per listing page: default and maximum.
pub const DEFAULT_LIST_LIMIT: usize = 100;
pub const MAX_LIST_LIMIT: usize = 1000;
/// How many listings of an encrypted-at-rest store may run at once: each reads every entry.
pub const MAX_SEALED_LISTINGS: usize = 2;
