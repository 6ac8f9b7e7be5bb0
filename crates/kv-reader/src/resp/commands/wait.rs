//! Read-your-writes on this port: `KV.WAIT` holds the connection until the replica catches up.

use std::time::Duration;

use bytes::BytesMut;
use kv_core::consistency::{ConsistencyToken, RecordPosition};

use super::{integer, Args, Next, Pending, Session, Shared};
use crate::replica::progress::WaitError;
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
    let timeout = Duration::from_millis(timeout).min(shared.state.read_your_writes_timeout);
    let token = match &shared.state.cluster {
        None => token,
        Some(cluster) => {
            let Some(count) = cluster.partitions() else {
                reply.error(
                    "TRYAGAIN this shard has not read the topic's partitions from the broker \
                     yet; retry",
                );
                return Next::Continue;
            };
            if let Some((partition, _)) = token.offsets().find(|(p, _)| *p as u32 >= count) {
                reply.error(&format!(
                    "ERR consistency token {token} cannot name a write of this topic: the topic \
                     has no partition {partition} (it has {count})"
                ));
                return Next::Continue;
            }
            let held = ConsistencyToken::from_positions(
                token
                    .offsets()
                    .filter(|(p, _)| cluster.holds(*p))
                    .map(|(partition, offset)| RecordPosition { partition, offset }),
            );
            if held.offsets().next().is_none() {
                reply.ok();
                return Next::Continue;
            }
            held
        }
    };
    Next::Pending(Pending::Wait { token, timeout })
}

/// The waiting part of `KV.WAIT`, on the consumer's progress.
pub(super) async fn wait_for(
    shared: &Shared,
    session: &Session,
    token: ConsistencyToken,
    timeout: Duration,
    out: &mut BytesMut,
) {
    let waited = shared.state.progress.wait_for(&token, timeout).await;
    let mut reply = Reply::new(out, session.resp3);
    match waited {
        Ok(()) => reply.ok(),
        Err(error @ WaitError::UnknownPartition { .. }) => reply.error(&format!(
            "ERR consistency token {token} cannot name a write of this topic: {error}"
        )),
        Err(WaitError::TimedOut) => reply.error(&format!(
            "TRYAGAIN this replica has not applied the writes of consistency token \
             {token} within {} ms; retry later",
            timeout.as_millis()
        )),
        Err(error) => reply.error(&format!(
            "TRYAGAIN this replica cannot wait for consistency token {token}: \
             {error}; retry later"
        )),
    }
}
