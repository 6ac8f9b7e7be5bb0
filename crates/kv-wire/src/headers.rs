//! HTTP header names both ends of the API read, lower-case as `http::HeaderName` wants them.

/// The consistency token a write answers and a read waits for.
pub const CONSISTENCY_TOKEN: &str = "x-consistency-token";
