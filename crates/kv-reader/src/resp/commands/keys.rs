//! The commands that read named keys, each refused on a shard that does not hold the key.

use super::{store_failed, Args, Name, Shared};
use crate::http::MAX_BATCH_KEYS;
use crate::resp::expiry::{self, Asked};
use crate::resp::reply::Reply;
use crate::store::now_ms;

/// `GET key`.
pub(super) fn get(shared: &Shared, args: Args<'_>, reply: &mut Reply<'_>) {
    let key = args.get(1);
    if let Some(refusal) = shared.shard_refusal(key) {
        reply.error(&refusal);
        return;
    }
    let read = shared.state.store.read_value(key, |value| match value {
        Some(value) => reply.bulk(value),
        None => reply.null(),
    });
    if let Err(error) = read {
        store_failed(reply, &error);
    }
}

/// `MGET key …`: every key from one snapshot, in order, bounded as a batchGet is.
pub(super) fn mget(shared: &Shared, args: Args<'_>, reply: &mut Reply<'_>) {
    if args.len() - 1 > MAX_BATCH_KEYS {
        reply.error(&format!(
            "ERR MGET takes at most {MAX_BATCH_KEYS} keys at a time; ask for fewer"
        ));
        return;
    }
    if let Some(refusal) = args.from(1).find_map(|key| shared.shard_refusal(key)) {
        reply.error(&refusal);
        return;
    }
    let limit = shared.state.max_batch_get_bytes;
    let mut bytes = 0usize;
    let found = shared.state.store.get_many_while(args.from(1), |_, entry| {
        bytes = bytes.saturating_add(entry.value.len());
        bytes <= limit
    });
    match found {
        Ok(Some(entries)) => {
            reply.array(entries.len());
            for entry in entries {
                match entry {
                    Some(entry) => reply.bulk(&entry.value),
                    None => reply.null(),
                }
            }
        }
        Ok(None) => reply.error(&format!(
            "ERR the answer would hold more than {limit} bytes of values \
             (KV_API_MAX_BATCH_GET_BYTES); ask for fewer keys at a time"
        )),
        Err(error) => store_failed(reply, &error),
    }
}

/// `EXISTS key …`: how many of the keys this replica holds, a key named twice counted twice.
pub(super) fn exists(shared: &Shared, args: Args<'_>, reply: &mut Reply<'_>) {
    let mut found = 0;
    for key in args.from(1) {
        if let Some(refusal) = shared.shard_refusal(key) {
            reply.error(&refusal);
            return;
        }
        match shared.state.store.get(key) {
            Ok(entry) => found += i64::from(entry.is_some()),
            Err(error) => {
                store_failed(reply, &error);
                return;
            }
        }
    }
    reply.integer(found);
}

/// `STRLEN key` and `TYPE key`: every value here is a string.
pub(super) fn strlen_or_type(
    shared: &Shared,
    command: Name,
    args: Args<'_>,
    reply: &mut Reply<'_>,
) {
    let key = args.get(1);
    if let Some(refusal) = shared.shard_refusal(key) {
        reply.error(&refusal);
        return;
    }
    match (shared.state.store.get(key), command) {
        (Ok(entry), Name::Strlen) => {
            reply.integer(entry.map_or(0, |e| e.value.len() as i64));
        }
        (Ok(entry), _) => reply.simple(if entry.is_some() { "string" } else { "none" }),
        (Err(error), _) => store_failed(reply, &error),
    }
}

/// `TTL`, `PTTL`, `EXPIRETIME` and `PEXPIRETIME` `key`.
pub(super) fn expiry(shared: &Shared, command: Name, args: Args<'_>, reply: &mut Reply<'_>) {
    let key = args.get(1);
    if let Some(refusal) = shared.shard_refusal(key) {
        reply.error(&refusal);
        return;
    }
    let asked = match command {
        Name::Ttl => Asked::Ttl,
        Name::Pttl => Asked::Pttl,
        Name::ExpireTime => Asked::ExpireTime,
        _ => Asked::PexpireTime,
    };
    match shared.state.store.get(key) {
        Ok(entry) => {
            let expiry = entry.map(|entry| entry.expires_at_ms);
            reply.integer(expiry::reply(asked, expiry, now_ms()));
        }
        Err(error) => store_failed(reply, &error),
    }
}
