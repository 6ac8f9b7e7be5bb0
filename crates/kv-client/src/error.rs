//! What a call can fail with: the service's own error (its JSON `{"error":{"code","message"}}`
//! kept), a failed precondition with the key's current version, or no answer at all.

use reqwest::{Response, StatusCode};

use crate::types::Version;

/// The most of an error answer's body read.
const MAX_ERROR_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client was built or called without what it needs (a URL, a writer).
    #[error("client configuration: {0}")]
    Config(String),
    /// The write's precondition did not hold: nothing was written. `current` is the key's
    /// version then (`None` when it was absent).
    #[error("precondition failed (the key's version is {current:?})")]
    PreconditionFailed { current: Option<Version> },
    /// [`crate::Client::update`] met a `412` on every attempt: others keep writing the key.
    #[error("the key kept changing: {attempts} read-modify-write attempts failed")]
    Contended { attempts: u32 },
    /// A key of dots only (`.`, `..`): a URL parser folds such a path segment even escaped, so
    /// the key routes cannot carry it (the original's body routes, `/store` and `/retrieve`, can).
    #[error("the key {key:?} is dots only, which no URL path carries")]
    UnaddressableKey { key: String },
    /// [`crate::Client::increment`] found a value that is not a decimal integer.
    #[error("{key:?} does not hold a decimal integer")]
    NotACounter { key: String },
    /// The service answered an error (after the retries `Retry-After` allowed).
    #[error("{status} {code}: {message}")]
    Api {
        status: StatusCode,
        /// The error contract's `code` (`not_ready`, `forbidden`, ...); `http_<status>` when the
        /// body was not the service's error.
        code: String,
        message: String,
    },
    /// No answer (connection refused, timeout) after the retries.
    #[error("no answer: {0}")]
    Transport(#[source] reqwest::Error),
    /// An answer this client cannot read.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl Error {
    pub(crate) fn transport(error: reqwest::Error) -> Self {
        Self::Transport(error)
    }

    pub(crate) async fn from_response(mut response: Response) -> Self {
        let status = response.status();
        // An error body is small: a longer one is not the service's, and is not read on.
        let mut bytes = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > MAX_ERROR_BODY {
                break;
            }
        }
        match kv_wire::errors::ErrorBody::parse(&bytes) {
            Some(error) => Self::Api {
                status,
                code: error.code,
                message: error.message,
            },
            None => Self::Api {
                status,
                code: format!("http_{}", status.as_u16()),
                message: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
            },
        }
    }

    /// The service's error code, if it answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            Self::PreconditionFailed { .. } => Some("precondition_failed"),
            _ => None,
        }
    }
}
