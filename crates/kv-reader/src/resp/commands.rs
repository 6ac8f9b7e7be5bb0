//! The commands of the Redis-protocol read port (docs/api.md, "Redis protocol (RESP) read
//! port"): each reads the store and the replica's progress through the same calls as the HTTP
//! read routes, so a value, an expiry, a decryption and a read-your-writes wait mean the same
//! on both ports.
//!
//! A command runs to its reply without waiting, except the three that must: `AUTH` (a key
//! fetch from the provider), `KV.WAIT` (the consumer) and `SCAN` of a store encrypted at rest
//! (the blocking pool). Those return a [`Pending`] for the connection to await.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::web;
use bytes::BytesMut;
use kv_core::consistency::{ConsistencyToken, RecordPosition};
use kv_core::record::now_ms;
use kv_core::web::auth::{AuthError, AuthGate, Operation};

use super::expiry::{self, Asked};
use super::reply::Reply;
use crate::http::{ReaderState, MAX_BATCH_KEYS, MAX_LIST_LIMIT};
use crate::metrics::RespMetrics;
use crate::replica::progress::WaitError;
use crate::store::StoreError;

/// The Redis version this port answers to clients that ask (`INFO`, `HELLO`): the one whose
/// replies it gives (RESP3, `HELLO`, `CLIENT SETINFO`).
const REDIS_VERSION: &str = "7.0.0";
/// `SCAN`'s page size unless `COUNT` says otherwise, as Redis's.
const DEFAULT_SCAN_COUNT: usize = 10;
/// Scan positions kept for cursors handed out, server-wide; an older cursor is refused.
pub const MAX_CURSORS: usize = 4096;
/// Longest client name `CLIENT SETNAME` takes.
const MAX_CLIENT_NAME: usize = 256;

const READONLY: &str = "READONLY You can't write against a read only replica.";
const NOAUTH: &str = "NOAUTH Authentication required.";
const EXPIRED: &str =
    "NOAUTH Authentication required: the session's token has expired; AUTH with a fresh one.";

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    pub state: web::Data<ReaderState>,
    pub auth: web::Data<AuthGate>,
    pub metrics: RespMetrics,
    pub port: u16,
    pub max_connections: usize,
    cursors: Cursors,
    started: Instant,
    next_client: AtomicU64,
}

impl Shared {
    pub fn new(
        state: web::Data<ReaderState>,
        auth: web::Data<AuthGate>,
        metrics: RespMetrics,
        port: u16,
        max_connections: usize,
    ) -> Self {
        Self {
            state,
            auth,
            metrics,
            port,
            max_connections,
            cursors: Cursors::new(),
            started: Instant::now(),
            next_client: AtomicU64::new(0),
        }
    }

    /// Why this shard does not answer `key` itself; `None` on a full replica. Forwarding is the
    /// HTTP port's: a Redis client expects its server to hold what it asks for.
    fn shard_refusal(&self, key: &[u8]) -> Option<String> {
        let cluster = self.state.cluster.as_ref()?;
        let Some(count) = cluster.partitions() else {
            return Some(
                "TRYAGAIN this shard has not read the topic's partitions from the broker yet; \
                 retry"
                    .to_owned(),
            );
        };
        let partition = cluster.partition_of(key, count);
        (!cluster.holds(partition)).then(|| {
            format!(
                "ERR key not held by this shard (partition {partition} is another shard's); \
                 read it over the HTTP port, which forwards it"
            )
        })
    }
}

/// The commands this port serves, in the order of [`COMMANDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Get,
    Mget,
    Exists,
    Strlen,
    Type,
    Scan,
    Dbsize,
    Ping,
    Echo,
    Select,
    Client,
    Info,
    Command,
    Quit,
    Reset,
    Hello,
    Auth,
    KvWait,
    Ttl,
    Pttl,
    ExpireTime,
    PexpireTime,
}

/// A command as `COMMAND` describes it to clients, and how it is counted.
#[derive(Debug)]
struct Spec {
    command: Name,
    /// Lower case: the metric label and `COMMAND`'s name.
    name: &'static str,
    /// Redis's convention: `n` exactly n arguments with the name, `-n` at least n.
    arity: i32,
    flags: &'static [&'static str],
    /// First key, last key (-1: the last argument), step; 0, 0, 0 without keys.
    keys: (i64, i64, i64),
    /// Runs before `AUTH` on a port with auth on.
    before_auth: bool,
}

const READ: &[&str] = &["readonly", "fast"];
const CONNECTION: &[&str] = &["fast", "loading", "stale"];
const NO_AUTH: &[&str] = &["noscript", "loading", "stale", "fast", "no_auth"];

const COMMANDS: [Spec; 22] = [
    spec(Name::Get, "get", 2, READ, (1, 1, 1)),
    spec(Name::Mget, "mget", -2, READ, (1, -1, 1)),
    spec(Name::Exists, "exists", -2, READ, (1, -1, 1)),
    spec(Name::Strlen, "strlen", 2, READ, (1, 1, 1)),
    spec(Name::Type, "type", 2, READ, (1, 1, 1)),
    spec(Name::Scan, "scan", -2, &["readonly"], (0, 0, 0)),
    spec(Name::Dbsize, "dbsize", 1, READ, (0, 0, 0)),
    Spec {
        before_auth: true,
        ..spec(Name::Ping, "ping", -1, CONNECTION, (0, 0, 0))
    },
    spec(Name::Echo, "echo", 2, CONNECTION, (0, 0, 0)),
    spec(Name::Select, "select", 2, CONNECTION, (0, 0, 0)),
    spec(Name::Client, "client", -2, CONNECTION, (0, 0, 0)),
    spec(Name::Info, "info", -1, &["loading", "stale"], (0, 0, 0)),
    spec(
        Name::Command,
        "command",
        -1,
        &["loading", "stale"],
        (0, 0, 0),
    ),
    Spec {
        before_auth: true,
        ..spec(Name::Quit, "quit", -1, NO_AUTH, (0, 0, 0))
    },
    Spec {
        before_auth: true,
        ..spec(Name::Reset, "reset", 1, NO_AUTH, (0, 0, 0))
    },
    Spec {
        before_auth: true,
        ..spec(Name::Hello, "hello", -1, NO_AUTH, (0, 0, 0))
    },
    Spec {
        before_auth: true,
        ..spec(Name::Auth, "auth", -2, NO_AUTH, (0, 0, 0))
    },
    spec(Name::KvWait, "kv.wait", 3, &["readonly"], (0, 0, 0)),
    spec(Name::Ttl, "ttl", 2, READ, (1, 1, 1)),
    spec(Name::Pttl, "pttl", 2, READ, (1, 1, 1)),
    spec(Name::ExpireTime, "expiretime", 2, READ, (1, 1, 1)),
    spec(Name::PexpireTime, "pexpiretime", 2, READ, (1, 1, 1)),
];

const fn spec(
    command: Name,
    name: &'static str,
    arity: i32,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
) -> Spec {
    Spec {
        command,
        name,
        arity,
        flags,
        keys,
        before_auth: false,
    }
}

/// Redis's commands that change data: a replica refuses them with `READONLY`, as a Redis
/// replica does, rather than calling them unknown.
const WRITE_COMMANDS: &[&str] = &[
    "APPEND",
    "BITFIELD",
    "BITOP",
    "BLMOVE",
    "BLMPOP",
    "BLPOP",
    "BRPOP",
    "BRPOPLPUSH",
    "BZMPOP",
    "BZPOPMAX",
    "BZPOPMIN",
    "COPY",
    "DECR",
    "DECRBY",
    "DEL",
    "EVAL",
    "EVALSHA",
    "EXPIRE",
    "EXPIREAT",
    "FCALL",
    "FLUSHALL",
    "FLUSHDB",
    "GEOADD",
    "GETDEL",
    "GETEX",
    "GETSET",
    "HDEL",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HMSET",
    "HSET",
    "HSETNX",
    "INCR",
    "INCRBY",
    "INCRBYFLOAT",
    "LINSERT",
    "LMOVE",
    "LMPOP",
    "LPOP",
    "LPUSH",
    "LPUSHX",
    "LREM",
    "LSET",
    "LTRIM",
    "MIGRATE",
    "MOVE",
    "MSET",
    "MSETNX",
    "PERSIST",
    "PEXPIRE",
    "PEXPIREAT",
    "PFADD",
    "PFMERGE",
    "PSETEX",
    "RENAME",
    "RENAMENX",
    "RESTORE",
    "RPOP",
    "RPOPLPUSH",
    "RPUSH",
    "RPUSHX",
    "SADD",
    "SDIFFSTORE",
    "SET",
    "SETBIT",
    "SETEX",
    "SETNX",
    "SETRANGE",
    "SINTERSTORE",
    "SMOVE",
    "SPOP",
    "SREM",
    "SUNIONSTORE",
    "SWAPDB",
    "UNLINK",
    "XADD",
    "XDEL",
    "XTRIM",
    "ZADD",
    "ZINCRBY",
    "ZPOPMAX",
    "ZPOPMIN",
    "ZREM",
    "ZREMRANGEBYLEX",
    "ZREMRANGEBYRANK",
    "ZREMRANGEBYSCORE",
];

/// The metric label of a refused write, after the commands'.
const WRITE_LABEL: usize = COMMANDS.len();
/// The metric label of an unknown command.
const OTHER_LABEL: usize = COMMANDS.len() + 1;

/// Every value `kv_reader_resp_commands_total{command}` takes, by index.
pub fn metric_labels() -> Vec<&'static str> {
    COMMANDS
        .iter()
        .map(|spec| spec.name)
        .chain(["write", "other"])
        .collect()
}

enum Lookup {
    Known(usize),
    Write,
    Unknown,
}

/// The command a name names, in any case, without allocating.
fn lookup(name: &[u8]) -> Lookup {
    let mut upper = [0u8; 20];
    let Some(upper) = upper.get_mut(..name.len()) else {
        return Lookup::Unknown;
    };
    for (to, from) in upper.iter_mut().zip(name) {
        *to = from.to_ascii_uppercase();
    }
    let known = match &*upper {
        b"GET" => 0,
        b"MGET" => 1,
        b"EXISTS" => 2,
        b"STRLEN" => 3,
        b"TYPE" => 4,
        b"SCAN" => 5,
        b"DBSIZE" => 6,
        b"PING" => 7,
        b"ECHO" => 8,
        b"SELECT" => 9,
        b"CLIENT" => 10,
        b"INFO" => 11,
        b"COMMAND" => 12,
        b"QUIT" => 13,
        b"RESET" => 14,
        b"HELLO" => 15,
        b"AUTH" => 16,
        b"KV.WAIT" => 17,
        b"TTL" => 18,
        b"PTTL" => 19,
        b"EXPIRETIME" => 20,
        b"PEXPIRETIME" => 21,
        _ if WRITE_COMMANDS.iter().any(|w| w.as_bytes() == &*upper) => return Lookup::Write,
        _ => return Lookup::Unknown,
    };
    Lookup::Known(known)
}

/// A connection's state: what `HELLO`, `CLIENT` and `AUTH` set.
#[derive(Debug)]
pub struct Session {
    id: u64,
    resp3: bool,
    name: Option<Vec<u8>>,
    rights: Rights,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rights {
    /// Auth is off.
    Open,
    /// Auth is on and no valid token was given yet.
    Missing,
    /// A token with the read scope, accepted until this moment (ms since the Unix epoch).
    Until(u64),
}

impl Session {
    pub fn new(shared: &Shared) -> Self {
        Self {
            id: shared.next_client.fetch_add(1, Ordering::Relaxed) + 1,
            resp3: false,
            name: None,
            rights: initial_rights(&shared.auth),
        }
    }

    pub fn resp3(&self) -> bool {
        self.resp3
    }

    /// Why this session may not run a command that needs auth, if it may not. The expiry is
    /// checked at each command: a token's rights end when the token does.
    fn refusal(&mut self) -> Option<&'static str> {
        match self.rights {
            Rights::Open => None,
            Rights::Missing => Some(NOAUTH),
            Rights::Until(until) if now_ms() <= until => None,
            Rights::Until(_) => {
                self.rights = Rights::Missing;
                Some(EXPIRED)
            }
        }
    }
}

fn initial_rights(auth: &AuthGate) -> Rights {
    match auth {
        AuthGate::Disabled => Rights::Open,
        AuthGate::Enabled(_) => Rights::Missing,
    }
}

/// A request's arguments: ranges of the connection's read buffer.
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    buf: &'a [u8],
    ranges: &'a [Range<usize>],
}

impl<'a> Args<'a> {
    pub fn new(buf: &'a [u8], ranges: &'a [Range<usize>]) -> Self {
        Self { buf, ranges }
    }

    fn len(&self) -> usize {
        self.ranges.len()
    }

    fn get(&self, i: usize) -> &'a [u8] {
        self.ranges
            .get(i)
            .map_or(&[][..], |range| &self.buf[range.clone()])
    }

    /// The arguments from `i` on.
    fn from(&self, i: usize) -> impl Iterator<Item = &'a [u8]> + 'a {
        let buf = self.buf;
        self.ranges
            .get(i..)
            .unwrap_or_default()
            .iter()
            .map(move |range| &buf[range.clone()])
    }

    fn is(&self, i: usize, word: &str) -> bool {
        self.get(i).eq_ignore_ascii_case(word.as_bytes())
    }
}

/// What the connection does after a command.
#[derive(Debug)]
pub enum Next {
    Continue,
    /// `QUIT`: close after the reply.
    Close,
    /// Await this, then continue.
    Pending(Pending),
}

/// The part of a command that waits.
#[derive(Debug)]
pub enum Pending {
    Auth {
        token: String,
        /// `HELLO … AUTH`: what it sets once the token is accepted.
        hello: Option<Hello>,
    },
    Wait {
        token: ConsistencyToken,
        timeout: Duration,
    },
    SealedScan {
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        count: usize,
    },
}

#[derive(Debug)]
pub struct Hello {
    resp3: bool,
    name: Option<Vec<u8>>,
}

/// Runs the command `args` names, its reply appended to `out`.
pub fn execute(shared: &Shared, session: &mut Session, args: Args<'_>, out: &mut BytesMut) -> Next {
    let mut reply = Reply::new(out, session.resp3);
    let name = args.get(0);
    let index = match lookup(name) {
        Lookup::Known(index) => index,
        Lookup::Write => {
            shared.metrics.commands[WRITE_LABEL].inc();
            reply.error(session.refusal().unwrap_or(READONLY));
            return Next::Continue;
        }
        Lookup::Unknown => {
            shared.metrics.commands[OTHER_LABEL].inc();
            reply.error(&unknown_command(name, args));
            return Next::Continue;
        }
    };
    shared.metrics.commands[index].inc();
    let spec = &COMMANDS[index];
    let n = args.len() as i32;
    if (spec.arity > 0 && n != spec.arity) || n < -spec.arity {
        reply.error(&format!(
            "ERR wrong number of arguments for '{}' command",
            spec.name
        ));
        return Next::Continue;
    }
    if !spec.before_auth {
        if let Some(refusal) = session.refusal() {
            reply.error(refusal);
            return Next::Continue;
        }
    }
    let state = &shared.state;
    match spec.command {
        Name::Get => {
            let key = args.get(1);
            if let Some(refusal) = shared.shard_refusal(key) {
                reply.error(&refusal);
                return Next::Continue;
            }
            let read = state.store.read_value(key, |value| match value {
                Some(value) => reply.bulk(value),
                None => reply.null(),
            });
            if let Err(error) = read {
                store_failed(&mut reply, &error);
            }
        }
        Name::Mget => mget(shared, args, &mut reply),
        Name::Exists => {
            let mut found = 0;
            for key in args.from(1) {
                if let Some(refusal) = shared.shard_refusal(key) {
                    reply.error(&refusal);
                    return Next::Continue;
                }
                match state.store.get(key) {
                    Ok(entry) => found += i64::from(entry.is_some()),
                    Err(error) => {
                        store_failed(&mut reply, &error);
                        return Next::Continue;
                    }
                }
            }
            reply.integer(found);
        }
        Name::Strlen | Name::Type => {
            let key = args.get(1);
            if let Some(refusal) = shared.shard_refusal(key) {
                reply.error(&refusal);
                return Next::Continue;
            }
            match (state.store.get(key), spec.command) {
                (Ok(entry), Name::Strlen) => {
                    reply.integer(entry.map_or(0, |e| e.value.len() as i64));
                }
                (Ok(entry), _) => reply.simple(if entry.is_some() { "string" } else { "none" }),
                (Err(error), _) => store_failed(&mut reply, &error),
            }
        }
        Name::Scan => return scan(shared, args, &mut reply),
        Name::Dbsize => match state.store.key_count() {
            Ok(count) => reply.integer(count as i64),
            Err(error) => store_failed(&mut reply, &error),
        },
        Name::Ping => match args.len() {
            1 => reply.simple("PONG"),
            2 => reply.bulk(args.get(1)),
            _ => reply.error("ERR wrong number of arguments for 'ping' command"),
        },
        Name::Echo => reply.bulk(args.get(1)),
        Name::Select => match std::str::from_utf8(args.get(1)).map(str::parse::<i64>) {
            Ok(Ok(0)) => reply.ok(),
            Ok(Ok(_)) => reply.error("ERR DB index is out of range"),
            _ => reply.error("ERR value is not an integer or out of range"),
        },
        Name::Client => client(session, args, &mut reply),
        Name::Info => reply.text(&info(shared, args)),
        Name::Command => command(args, &mut reply),
        Name::Quit => {
            reply.ok();
            return Next::Close;
        }
        Name::Reset => {
            session.resp3 = false;
            session.name = None;
            session.rights = initial_rights(&shared.auth);
            reply.simple("RESET");
        }
        Name::Hello => return hello(shared, session, args, &mut reply),
        Name::Auth => {
            if args.len() > 3 {
                reply.error("ERR syntax error");
            } else if matches!(**shared.auth, AuthGate::Disabled) {
                reply.error(
                    "ERR AUTH <password> called without any password configured for the default \
                     user. Are you sure your configuration is correct?",
                );
            } else {
                let token = String::from_utf8_lossy(args.get(args.len() - 1)).into_owned();
                return Next::Pending(Pending::Auth { token, hello: None });
            }
        }
        Name::KvWait => return kv_wait(shared, args, &mut reply),
        Name::Ttl | Name::Pttl | Name::ExpireTime | Name::PexpireTime => {
            let key = args.get(1);
            if let Some(refusal) = shared.shard_refusal(key) {
                reply.error(&refusal);
                return Next::Continue;
            }
            let asked = match spec.command {
                Name::Ttl => Asked::Ttl,
                Name::Pttl => Asked::Pttl,
                Name::ExpireTime => Asked::ExpireTime,
                _ => Asked::PexpireTime,
            };
            match state.store.get(key) {
                Ok(entry) => {
                    let expiry = entry.map(|entry| entry.expires_at_ms);
                    reply.integer(expiry::reply(asked, expiry, now_ms()));
                }
                Err(error) => store_failed(&mut reply, &error),
            }
        }
    }
    Next::Continue
}

/// Redis's own message, quoting the first 128 bytes of the arguments.
fn unknown_command(name: &[u8], args: Args<'_>) -> String {
    let mut message = format!(
        "ERR unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(&name[..name.len().min(128)])
    );
    let mut quoted = 0;
    for arg in args.from(1) {
        if quoted >= 128 {
            break;
        }
        let arg = &arg[..arg.len().min(128 - quoted)];
        quoted += arg.len();
        let _ = write!(message, "'{}' ", String::from_utf8_lossy(arg));
    }
    message
}

fn store_failed(reply: &mut Reply<'_>, error: &StoreError) {
    tracing::error!(%error, "reading the store failed");
    reply.error("ERR reading the replica's store failed");
}

fn not_an_integer(reply: &mut Reply<'_>) {
    reply.error("ERR value is not an integer or out of range");
}

fn integer(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// `MGET key …`: every key from one snapshot, in order, bounded as a batchGet is.
fn mget(shared: &Shared, args: Args<'_>, reply: &mut Reply<'_>) {
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

/// `SCAN cursor [MATCH prefix*] [COUNT n] [TYPE string]`: keys in byte order, a page at a
/// time. Redis clients read the cursor as a number, so it names a position kept server-side.
fn scan(shared: &Shared, args: Args<'_>, reply: &mut Reply<'_>) -> Next {
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
    if !strings {
        // Every value here is a string.
        scan_reply(shared, reply, Vec::new(), false);
        return Next::Continue;
    }
    let store = &shared.state.store;
    if store.is_encrypted() {
        return Next::Pending(Pending::SealedScan {
            prefix,
            after,
            count,
        });
    }
    match store.list_keys(&prefix, after.as_deref(), count) {
        Ok((keys, more)) => scan_reply(shared, reply, keys, more),
        Err(error) => store_failed(reply, &error),
    }
    Next::Continue
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

fn scan_reply(shared: &Shared, reply: &mut Reply<'_>, keys: Vec<Vec<u8>>, more: bool) {
    let cursor = match keys.last() {
        Some(last) if more => shared.cursors.open(last.clone()),
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
/// may go on on another connection, and bounded: the oldest are forgotten first.
#[derive(Debug)]
struct Cursors(Mutex<CursorTable>);

#[derive(Debug)]
struct CursorTable {
    last: u64,
    after: HashMap<u64, Vec<u8>>,
    order: VecDeque<u64>,
}

impl Cursors {
    fn new() -> Self {
        // Numbered from the start time, so a cursor from before a restart is refused rather
        // than resumed somewhere else.
        Self(Mutex::new(CursorTable {
            last: now_ms().saturating_mul(1000),
            after: HashMap::new(),
            order: VecDeque::new(),
        }))
    }

    fn open(&self, after: Vec<u8>) -> u64 {
        let mut table = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        table.last += 1;
        let cursor = table.last;
        table.after.insert(cursor, after);
        table.order.push_back(cursor);
        if table.order.len() > MAX_CURSORS {
            if let Some(oldest) = table.order.pop_front() {
                table.after.remove(&oldest);
            }
        }
        cursor
    }

    fn resume(&self, cursor: u64) -> Option<Vec<u8>> {
        let table = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        table.after.get(&cursor).cloned()
    }
}

fn client(session: &mut Session, args: Args<'_>, reply: &mut Reply<'_>) {
    let arity = |n: usize, reply: &mut Reply<'_>| {
        let right = args.len() == n;
        if !right {
            reply.error(&format!(
                "ERR wrong number of arguments for 'client|{}' command",
                String::from_utf8_lossy(args.get(1)).to_lowercase()
            ));
        }
        right
    };
    if args.is(1, "SETNAME") {
        if arity(3, reply) {
            let name = args.get(2);
            if name.len() > MAX_CLIENT_NAME || !name.iter().all(|b| (b'!'..=b'~').contains(b)) {
                reply.error(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            } else {
                session.name = (!name.is_empty()).then(|| name.to_vec());
                reply.ok();
            }
        }
    } else if args.is(1, "GETNAME") {
        if arity(2, reply) {
            match &session.name {
                Some(name) => reply.bulk(name),
                None => reply.null(),
            }
        }
    } else if args.is(1, "SETINFO") {
        if arity(4, reply) {
            if args.is(2, "LIB-NAME") || args.is(2, "LIB-VER") {
                reply.ok();
            } else {
                reply.error(&format!(
                    "ERR Unrecognized option '{}'",
                    String::from_utf8_lossy(&args.get(2)[..args.get(2).len().min(64)])
                ));
            }
        }
    } else if args.is(1, "ID") {
        if arity(2, reply) {
            reply.integer(session.id as i64);
        }
    } else if args.is(1, "INFO") {
        if arity(2, reply) {
            let name = session.name.as_deref().unwrap_or_default();
            let line = format!(
                "id={} name={} db=0 resp={} lib-name= lib-ver=\n",
                session.id,
                String::from_utf8_lossy(name),
                if session.resp3 { 3 } else { 2 }
            );
            reply.bulk(line.as_bytes());
        }
    } else {
        reply.error(&format!(
            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(&args.get(1)[..args.get(1).len().min(64)])
        ));
    }
}

/// `INFO [section …]`: server, clients, replication (how fresh this replica is) and keyspace;
/// `all`, `everything` and `default` give them all.
fn info(shared: &Shared, args: Args<'_>) -> String {
    let wanted = |section: &str| {
        args.len() == 1
            || args.from(1).any(|s| {
                s.eq_ignore_ascii_case(section.as_bytes())
                    || s.eq_ignore_ascii_case(b"all")
                    || s.eq_ignore_ascii_case(b"everything")
                    || s.eq_ignore_ascii_case(b"default")
            })
    };
    let mut text = String::new();
    if wanted("server") {
        let _ = write!(
            text,
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nkv_reader_version:{}\r\n\
             redis_mode:standalone\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            shared.port,
            shared.started.elapsed().as_secs()
        );
    }
    if wanted("clients") {
        let _ = write!(
            text,
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n",
            shared.metrics.connections.get(),
            shared.max_connections
        );
    }
    if wanted("replication") {
        let report = shared.state.progress.report();
        let applied = shared.state.progress.freshness().applied;
        let _ = write!(
            text,
            "# Replication\r\nrole:slave\r\nmaster_link_status:{}\r\nkv_replica_ready:{}\r\n\
             kv_replica_lag:{}\r\nkv_replica_applied:{}\r\n",
            if report.alive { "up" } else { "down" },
            u8::from(report.ready),
            report.lag,
            applied
                .as_ref()
                .and_then(|a| a.to_str().ok())
                .unwrap_or_default()
        );
        for (partition, p) in &report.partitions {
            let _ = write!(
                text,
                "kv_partition_{partition}:applied={},end={},lag={},caught_up={}\r\n",
                p.next_offset - 1,
                p.end_offset,
                (p.end_offset - p.next_offset).max(0),
                u8::from(p.caught_up)
            );
        }
        text.push_str("\r\n");
    }
    if wanted("keyspace") {
        text.push_str("# Keyspace\r\n");
        if let Ok(keys) = shared.state.store.key_count() {
            if keys > 0 {
                let _ = write!(text, "db0:keys={keys}\r\n");
            }
        }
    }
    text
}

/// `COMMAND`, `COMMAND COUNT | LIST | INFO name … | DOCS [name …]`: what clients ask to learn
/// the commands and where their keys are.
fn command(args: Args<'_>, reply: &mut Reply<'_>) {
    let entry = |reply: &mut Reply<'_>, spec: &Spec| {
        reply.array(10);
        reply.bulk(spec.name.as_bytes());
        reply.integer(spec.arity.into());
        reply.array(spec.flags.len());
        for flag in spec.flags {
            reply.simple(flag);
        }
        reply.integer(spec.keys.0);
        reply.integer(spec.keys.1);
        reply.integer(spec.keys.2);
        reply.array(1);
        reply.simple(if spec.keys.0 > 0 {
            "@read"
        } else {
            "@connection"
        });
        // Tips, key specifications, subcommands.
        reply.array(0);
        reply.array(0);
        reply.array(0);
    };
    if args.len() == 1 {
        reply.array(COMMANDS.len());
        for spec in &COMMANDS {
            entry(reply, spec);
        }
    } else if args.is(1, "COUNT") {
        reply.integer(COMMANDS.len() as i64);
    } else if args.is(1, "LIST") {
        reply.array(COMMANDS.len());
        for spec in &COMMANDS {
            reply.bulk(spec.name.as_bytes());
        }
    } else if args.is(1, "INFO") {
        reply.array(args.len() - 2);
        for name in args.from(2) {
            match lookup(name) {
                Lookup::Known(index) => entry(reply, &COMMANDS[index]),
                _ => reply.null(),
            }
        }
    } else if args.is(1, "DOCS") {
        // No documentation: a client falls back to what it knows itself.
        reply.map(0);
    } else {
        reply.error(&format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(&args.get(1)[..args.get(1).len().min(64)])
        ));
    }
}

/// `HELLO [2|3 [AUTH user token] [SETNAME name]]`.
fn hello(shared: &Shared, session: &mut Session, args: Args<'_>, reply: &mut Reply<'_>) -> Next {
    let mut then = Hello {
        resp3: session.resp3,
        name: session.name.clone(),
    };
    let mut token = None;
    if args.len() > 1 {
        match integer(args.get(1)) {
            Some(2) => then.resp3 = false,
            Some(3) => then.resp3 = true,
            _ => {
                reply.error("NOPROTO unsupported protocol version");
                return Next::Continue;
            }
        }
        let mut i = 2;
        while i < args.len() {
            if args.is(i, "AUTH") && i + 2 < args.len() {
                token = Some(String::from_utf8_lossy(args.get(i + 2)).into_owned());
                i += 3;
            } else if args.is(i, "SETNAME") && i + 1 < args.len() {
                let name = args.get(i + 1);
                if name.len() > MAX_CLIENT_NAME || !name.iter().all(|b| (b'!'..=b'~').contains(b)) {
                    reply.error(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    );
                    return Next::Continue;
                }
                then.name = (!name.is_empty()).then(|| name.to_vec());
                i += 2;
            } else {
                reply.error(&format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&args.get(i)[..args.get(i).len().min(64)])
                ));
                return Next::Continue;
            }
        }
    }
    if let Some(token) = token {
        if matches!(**shared.auth, AuthGate::Disabled) {
            reply.error(
                "ERR AUTH <password> called without any password configured for the default \
                 user. Are you sure your configuration is correct?",
            );
            return Next::Continue;
        }
        return Next::Pending(Pending::Auth {
            token,
            hello: Some(then),
        });
    }
    if args.len() > 1 && session.refusal().is_some() {
        reply.error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
             HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
             select the RESP protocol version at the same time",
        );
        return Next::Continue;
    }
    session.resp3 = then.resp3;
    session.name = then.name;
    reply.set_resp3(session.resp3);
    hello_reply(session, reply);
    Next::Continue
}

fn hello_reply(session: &Session, reply: &mut Reply<'_>) {
    reply.map(7);
    reply.bulk(b"server");
    reply.bulk(b"redis");
    reply.bulk(b"version");
    reply.bulk(REDIS_VERSION.as_bytes());
    reply.bulk(b"proto");
    reply.integer(if session.resp3 { 3 } else { 2 });
    reply.bulk(b"id");
    reply.integer(session.id as i64);
    reply.bulk(b"mode");
    reply.bulk(b"standalone");
    reply.bulk(b"role");
    reply.bulk(b"replica");
    reply.bulk(b"modules");
    reply.array(0);
}

/// `KV.WAIT <consistency-token> <timeout-ms>`: `+OK` once this replica applied the writes of
/// the token (of its own partitions, on a shard), at most KV_API_READ_YOUR_WRITES_TIMEOUT_MS.
fn kv_wait(shared: &Shared, args: Args<'_>, reply: &mut Reply<'_>) -> Next {
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

impl Pending {
    /// Waits for what the command needs, then writes its reply to `out`.
    pub async fn run(self, shared: &Shared, session: &mut Session, out: &mut BytesMut) {
        match self {
            Pending::Auth { token, hello } => {
                let checked = shared.auth.check_token(&token, Operation::Read).await;
                let mut reply = Reply::new(out, session.resp3);
                match checked {
                    Ok(claims) => {
                        session.rights = match claims {
                            None => Rights::Open,
                            Some(claims) => {
                                Rights::Until(shared.auth.valid_until_ms(&claims).unwrap_or(0))
                            }
                        };
                        match hello {
                            None => reply.ok(),
                            Some(then) => {
                                session.resp3 = then.resp3;
                                session.name = then.name;
                                reply.set_resp3(session.resp3);
                                hello_reply(session, &mut reply);
                            }
                        }
                    }
                    Err(error @ AuthError::Insufficient(_)) => {
                        reply.error(&format!("NOPERM {error}"));
                    }
                    Err(error) => reply.error(&format!("WRONGPASS {error}")),
                }
            }
            Pending::Wait { token, timeout } => {
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
            Pending::SealedScan {
                prefix,
                after,
                count,
            } => {
                // As the HTTP listing of a sealed store: every entry is opened, so it runs on
                // the blocking pool, sharing the HTTP port's few slots.
                let slot = shared.state.sealed_listings.clone().try_acquire_owned();
                let listed = match slot {
                    Err(_) => None,
                    Ok(slot) => {
                        let store = shared.state.store.clone();
                        Some(
                            tokio::task::spawn_blocking(move || {
                                let _slot = slot;
                                store.list_keys(&prefix, after.as_deref(), count)
                            })
                            .await,
                        )
                    }
                };
                let mut reply = Reply::new(out, session.resp3);
                match listed {
                    None => reply.error(
                        "TRYAGAIN as many listings of this encrypted replica run as it takes at \
                         once; retry",
                    ),
                    Some(Ok(Ok((keys, more)))) => scan_reply(shared, &mut reply, keys, more),
                    Some(Ok(Err(error))) => store_failed(&mut reply, &error),
                    Some(Err(error)) => {
                        reply.error(&format!("ERR the listing task failed: {error}"))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_in_any_case_and_writes_are_told_from_unknown_commands() {
        assert!(matches!(lookup(b"get"), Lookup::Known(0)));
        assert!(matches!(lookup(b"Kv.Wait"), Lookup::Known(17)));
        assert!(matches!(lookup(b"pexpiretime"), Lookup::Known(21)));
        assert!(matches!(lookup(b"set"), Lookup::Write));
        assert!(matches!(lookup(b"FLUSHALL"), Lookup::Write));
        assert!(matches!(lookup(b"nosuch"), Lookup::Unknown));
        assert!(matches!(lookup(&[b'x'; 100]), Lookup::Unknown));
        for (index, spec) in COMMANDS.iter().enumerate() {
            assert!(
                matches!(lookup(spec.name.as_bytes()), Lookup::Known(i) if i == index),
                "{}",
                spec.name
            );
        }
        assert_eq!(metric_labels().len(), OTHER_LABEL + 1);
    }

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
    fn the_unknown_command_error_quotes_the_arguments_as_redis_does() {
        let buf = b"FOO a b";
        let ranges = [0..3, 4..5, 6..7];
        assert_eq!(
            unknown_command(b"FOO", Args::new(buf, &ranges)),
            "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
        );
    }

    #[test]
    fn cursors_resume_where_their_page_ended_and_the_oldest_are_forgotten() {
        let cursors = Cursors::new();
        let first = cursors.open(b"a".to_vec());
        assert_eq!(cursors.resume(first), Some(b"a".to_vec()));
        for i in 0..MAX_CURSORS {
            cursors.open(i.to_string().into_bytes());
        }
        assert_eq!(cursors.resume(first), None);
        assert_eq!(cursors.resume(0), None);
    }
}
