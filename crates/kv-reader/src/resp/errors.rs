//! The read core's refusals as Redis error replies: the core's words, behind the prefix a
//! Redis client acts on (`TRYAGAIN` when a moment may cure it, `ERR` otherwise).

use crate::read::{ReadError, ReadErrorKind};

pub fn refusal(error: &ReadError) -> String {
    let prefix = match error.kind() {
        ReadErrorKind::NotReady
        | ReadErrorKind::Lagging
        | ReadErrorKind::ShardUnavailable
        | ReadErrorKind::Overloaded => "TRYAGAIN",
        ReadErrorKind::Invalid
        | ReadErrorKind::NotFound
        | ReadErrorKind::TooLarge
        | ReadErrorKind::Internal => "ERR",
    };
    match error {
        // This port never forwards: a Redis client expects its server to hold what it asks.
        ReadError::NotHeld { .. } => {
            format!("{prefix} {error}; read it over the HTTP port, which forwards it")
        }
        _ => format!("{prefix} {error}"),
    }
}
