//! `SCAN` pages through the store over many requests, so its cursors outlive one connection.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use bytes::BytesMut;

use super::{integer, Args, Next, Pending, Session, Shared};
use crate::read::limits::MAX_LIST_LIMIT;
use crate::resp::reply::Reply;
use kv_core::record::now_ms;

/// `SCAN`'s page size unless `COUNT` says otherwise, as Redis's.
const DEFAULT_SCAN_COUNT: usize = 10;
/// Scan positions kept for cursors handed out, server-wide; an older cursor is refused.
const MAX_CURSORS: usize = 4096;
/// Scan positions kept for the cursors one connection handed out: its own older ones go first.
const MAX_CURSORS_PER_CONNECTION: usize = 64;

/// `SCAN cursor [MATCH prefix*] [COUNT n] [TYPE string]`: keys in byte order, a page at a
/// time. Redis clients read the cursor as a number, so it names a position kept server-side.
pub(super) fn scan(
    shared: &Shared,
    session: &Session,
    args: Args<'_>,
    reply: &mut Reply<'_>,
) -> Next {
    let Some(cursor) = integer(args.get(1)) else {
        reply.error("ERR invalid cursor");
        return Next::Continue;
    };
    let (mut prefix, mut count, mut strings) = (Vec::new(), DEFAULT_SCAN_COUNT, true);
    let mut i = 2;
    while i < args.len() {
        let Some(value) = args.ranges.get(i + 1).map(|_| args.get(i + 1)) else {
            reply.error("ERR syntax error");
            return Next::Continue;
        };
        if args.is(i, "MATCH") {
            match prefix_of(value) {
                Some(p) => prefix = p,
                None => {
                    reply.error(&format!(
                        "ERR this replica's SCAN takes a prefix pattern (`prefix*`, or `*`), got \
                         '{}'",
                        String::from_utf8_lossy(&value[..value.len().min(128)])
                    ));
                    return Next::Continue;
                }
            }
        } else if args.is(i, "COUNT") {
            match integer(value) {
                Some(n) if n >= 1 => count = (n as usize).min(MAX_LIST_LIMIT),
                Some(_) => {
                    reply.error("ERR syntax error");
                    return Next::Continue;
                }
                None => {
                    not_an_integer(reply);
                    return Next::Continue;
                }
            }
        } else if args.is(i, "TYPE") {
            strings = value.eq_ignore_ascii_case(b"string");
        } else {
            reply.error("ERR syntax error");
            return Next::Continue;
        }
        i += 2;
    }
    let after = match cursor {
        0 => None,
        cursor => match shared.cursors.resume(cursor) {
            Some(after) => Some(after),
            None => {
                reply.error(&format!(
                    "ERR invalid cursor: this replica keeps the positions of its {MAX_CURSORS} \
                     latest cursors (or it restarted); SCAN again from 0"
                ));
                return Next::Continue;
            }
        },
    };
    // Only the readable part of the prefix is scanned; none of it readable is refused.
    let Some(prefixes) = session.reads.listing(&prefix) else {
        reply.error(&format!(
            "NOPERM {}",
            session.reads.prefix_refusal(&prefix).message
        ));
        return Next::Continue;
    };
    if !strings {
        // Every value here is a string.
        scan_reply(shared, session, reply, Vec::new(), false);
        return Next::Continue;
    }
    if shared.read.listing_blocks() {
        return Next::Pending(Pending::SealedScan {
            prefixes,
            after,
            count,
        });
    }
    match shared.read.page_now(&prefixes, after.as_deref(), count) {
        Ok((keys, more)) => scan_reply(shared, session, reply, keys, more),
        Err(error) => reply.error(&shared.refused(&error)),
    }
    Next::Continue
}

/// The waiting part of `SCAN` on a store encrypted at rest.
pub(super) async fn sealed_scan(
    shared: &Shared,
    session: &Session,
    prefixes: Vec<Vec<u8>>,
    after: Option<Vec<u8>>,
    count: usize,
    out: &mut BytesMut,
) {
    // As the HTTP listing of a sealed store: it shares the HTTP port's few slots.
    let listed = shared.read.page(prefixes, after, count).await;
    let mut reply = Reply::new(out, session.resp3);
    match listed {
        Ok((keys, more)) => scan_reply(shared, session, &mut reply, keys, more),
        Err(error) => reply.error(&shared.refused(&error)),
    }
}

fn not_an_integer(reply: &mut Reply<'_>) {
    reply.error("ERR value is not an integer or out of range");
}

/// The prefix a `MATCH` pattern selects: `prefix*` with no other wildcard, where `\` quotes
/// the next byte; `None` for any other pattern.
fn prefix_of(pattern: &[u8]) -> Option<Vec<u8>> {
    let mut prefix = Vec::with_capacity(pattern.len());
    let mut bytes = pattern.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => prefix.push(*bytes.next()?),
            b'*' => return bytes.as_slice().is_empty().then_some(prefix),
            b'?' | b'[' | b']' => return None,
            _ => prefix.push(b),
        }
    }
    // A pattern without `*` matches one key exactly: not a prefix.
    None
}

fn scan_reply(
    shared: &Shared,
    session: &Session,
    reply: &mut Reply<'_>,
    keys: Vec<Vec<u8>>,
    more: bool,
) {
    let cursor = match keys.last() {
        Some(last) if more => shared.cursors.open(session.id, last.clone()),
        _ => 0,
    };
    reply.array(2);
    reply.bulk(cursor.to_string().as_bytes());
    reply.array(keys.len());
    for key in &keys {
        reply.bulk(key);
    }
}

/// Where each cursor handed out resumes: the last key of its page. Server-wide, so a client
/// may go on on another connection, and bounded per connection and in all: a connection past
/// its share forgets its own oldest cursors, and the table past its size forgets those of the
/// connection holding the most, so no connection's scans forget another's cursors.
#[derive(Debug)]
pub(super) struct Cursors(Mutex<CursorTable>);

#[derive(Debug)]
struct CursorTable {
    last: u64,
    after: HashMap<u64, Vec<u8>>,
    /// Each connection's cursors, oldest first, by the id of the connection that opened them.
    by_connection: HashMap<u64, VecDeque<u64>>,
}

impl CursorTable {
    fn forget_oldest_of(&mut self, connection: u64) {
        let Some(cursors) = self.by_connection.get_mut(&connection) else {
            return;
        };
        if let Some(oldest) = cursors.pop_front() {
            self.after.remove(&oldest);
        }
        if cursors.is_empty() {
            self.by_connection.remove(&connection);
        }
    }
}

impl Cursors {
    pub(super) fn new() -> Self {
        // Numbered from the start time, so a cursor from before a restart is refused rather
        // than resumed somewhere else.
        Self(Mutex::new(CursorTable {
            last: now_ms().saturating_mul(1000),
            after: HashMap::new(),
            by_connection: HashMap::new(),
        }))
    }

    /// A new cursor of `connection` that resumes after `after`.
    fn open(&self, connection: u64, after: Vec<u8>) -> u64 {
        let mut table = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        table.last += 1;
        let cursor = table.last;
        table.after.insert(cursor, after);
        let own = table.by_connection.entry(connection).or_default();
        own.push_back(cursor);
        if own.len() > MAX_CURSORS_PER_CONNECTION {
            table.forget_oldest_of(connection);
        }
        if table.after.len() > MAX_CURSORS {
            let largest = table
                .by_connection
                .iter()
                .max_by_key(|(_, cursors)| cursors.len())
                .map(|(&id, _)| id);
            if let Some(largest) = largest {
                table.forget_oldest_of(largest);
            }
        }
        cursor
    }

    fn resume(&self, cursor: u64) -> Option<Vec<u8>> {
        let table = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        table.after.get(&cursor).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_prefix_patterns_select_a_prefix() {
        assert_eq!(prefix_of(b"*"), Some(Vec::new()));
        assert_eq!(prefix_of(b"users/*"), Some(b"users/".to_vec()));
        assert_eq!(prefix_of(br"a\*b*"), Some(b"a*b".to_vec()));
        assert_eq!(prefix_of(b"users"), None);
        assert_eq!(prefix_of(b"*x"), None);
        assert_eq!(prefix_of(b"a?*"), None);
        assert_eq!(prefix_of(b"[ab]*"), None);
        assert_eq!(prefix_of(br"a\"), None);
    }

    #[test]
    fn cursors_resume_where_their_page_ended_and_the_oldest_are_forgotten() {
        let cursors = Cursors::new();
        let first = cursors.open(1, b"a".to_vec());
        assert_eq!(cursors.resume(first), Some(b"a".to_vec()));
        for i in 0..MAX_CURSORS_PER_CONNECTION {
            cursors.open(1, i.to_string().into_bytes());
        }
        assert_eq!(cursors.resume(first), None);
        assert_eq!(cursors.resume(0), None);
    }

    #[test]
    fn one_connections_scans_never_forget_another_connections_cursor() {
        let cursors = Cursors::new();
        let kept = cursors.open(1, b"mine".to_vec());
        // One connection's `SCAN 0 COUNT 1`, 4096 times over.
        for i in 0..MAX_CURSORS {
            cursors.open(2, i.to_string().into_bytes());
        }
        assert_eq!(cursors.resume(kept), Some(b"mine".to_vec()));
        // And as many connections, each with its share: the table stays bounded, and the
        // connection with the fewest cursors keeps them.
        for connection in 3..3 + 2 * (MAX_CURSORS / MAX_CURSORS_PER_CONNECTION) as u64 {
            for i in 0..MAX_CURSORS_PER_CONNECTION {
                cursors.open(connection, i.to_string().into_bytes());
            }
        }
        let table = cursors.0.lock().expect("table");
        assert!(table.after.len() <= MAX_CURSORS);
        drop(table);
        assert_eq!(cursors.resume(kept), Some(b"mine".to_vec()));
    }
}
