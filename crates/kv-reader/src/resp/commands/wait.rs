//! Read-your-writes on this port: `KV.WAIT` holds the connection until the replica catches up.

use std::time::Duration;

use bytes::BytesMut;
use kv_core::consistency::ConsistencyToken;

use super::{integer, Args, Next, Pending, Session, Shared};
use crate::resp::reply::Reply;

/// `KV.WAIT <consistency-token> <timeout-ms>`: `+OK` once this replica applied the writes of
/// the token (of its own partitions, on a shard), at most KV_API_READ_YOUR_WRITES_TIMEOUT_MS.
pub(super) fn kv_wait(shared: &Shared, args: Args<'_>, reply: &mut Reply<'_>) -> Next {
    let text = String::from_utf8_lossy(args.get(1));
    let text = text.trim();
    if text.is_empty() {
        reply.ok();
        return Next::Continue;
    }
    let token = match text.parse::<ConsistencyToken>() {
        Ok(token) => token,
        Err(error) => {
            reply.error(&format!("ERR {error}"));
            return Next::Continue;
        }
    };
    let Some(timeout) = integer(args.get(2)) else {
        reply.error("ERR timeout is not an integer or out of range");
        return Next::Continue;
    };
    let timeout = Duration::from_millis(timeout);
    let core = &shared.read;
    // On a shard, the token's offsets of its own partitions only.
    let scoped = core.held_partitions().and_then(|held| match &held {
        Some(held) => core.scoped(token, core.scope(held)),
        None => Ok(Some(token)),
    });
    match scoped {
        Ok(Some(token)) => Next::Pending(Pending::Wait { token, timeout }),
        Ok(None) => {
            reply.ok();
            Next::Continue
        }
        Err(error) => {
            reply.error(&shared.refused(&error));
            Next::Continue
        }
    }
}

/// The waiting part of `KV.WAIT`, on the consumer's progress.
pub(super) async fn wait_for(
    shared: &Shared,
    session: &Session,
    token: ConsistencyToken,
    timeout: Duration,
    out: &mut BytesMut,
) {
    let waited = shared.read.wait_for(&token, timeout).await;
    let mut reply = Reply::new(out, session.resp3);
    match waited {
        Ok(()) => reply.ok(),
        Err(error) => reply.error(&shared.refused(&error)),
    }
}
