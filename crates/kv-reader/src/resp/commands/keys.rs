//! The commands that read named keys, each refused on a shard that does not hold the key.

use super::{store_failed, Args, Name, Shared};
use crate::resp::expiry::{self, Asked};
use crate::resp::reply::Reply;
use kv_core::record::now_ms;

/// `GET key`.
pub(super) fn get(shared: &Shared, args: Args<'_>, reply: &mut Reply<'_>) {
    let key = args.get(1);
    if let Some(refusal) = shared.shard_refusal(key) {
        reply.error(&refusal);
        return;
    }
    let read = shared.read.store.read_value(key, |value| match value {
        Some(value) => reply.bulk(value),
        None => reply.null(),
    });
    if let Err(error) = read {
        store_failed(reply, error);
    }
}

/// `MGET key …`: every key from one snapshot, in order, bounded as a batchGet is.
pub(super) fn mget(shared: &Shared, args: Args<'_>, reply: &mut Reply<'_>) {
    if let Err(error) = shared.read.check_batch(args.len() - 1) {
        reply.error(&shared.refused(&error));
        return;
    }
    if let Some(refusal) = args.from(1).find_map(|key| shared.shard_refusal(key)) {
        reply.error(&refusal);
        return;
    }
    match shared.read.lookup_batch(args.from(1), <[u8]>::len) {
        Ok(found) => {
            reply.array(found.slots.len());
            for slot in found.slots {
                match &found.found[slot] {
                    Some(entry) => reply.bulk(&entry.value),
                    None => reply.null(),
                }
            }
        }
        Err(error) => reply.error(&shared.refused(&error)),
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
        match shared.read.store.get(key) {
            Ok(entry) => found += i64::from(entry.is_some()),
            Err(error) => {
                store_failed(reply, error);
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
    match (shared.read.store.get(key), command) {
        (Ok(entry), Name::Strlen) => {
            reply.integer(entry.map_or(0, |e| e.value.len() as i64));
        }
        (Ok(entry), _) => reply.simple(if entry.is_some() { "string" } else { "none" }),
        (Err(error), _) => store_failed(reply, error),
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
    match shared.read.store.get(key) {
        Ok(entry) => {
            let expiry = entry.map(|entry| entry.expires_at_ms);
            reply.integer(expiry::reply(asked, expiry, now_ms()));
        }
        Err(error) => store_failed(reply, error),
    }
}
