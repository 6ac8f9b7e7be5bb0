//! The error contract's body as a caller reads it: `{"error":{"code","message"}}` (the services
//! write it with `kv_core::web::error`).

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

impl ErrorBody {
    /// The body's error, when `bytes` are the contract's JSON.
    pub fn parse(bytes: &[u8]) -> Option<ErrorDetail> {
        serde_json::from_slice::<ErrorBody>(bytes)
            .ok()
            .map(|body| body.error)
    }
}
