//! The commands of the Redis-protocol read port (docs/api.md, "Redis protocol (RESP) read
//! port"): each reads the store and the replica's progress through the same calls as the HTTP
//! read routes, so a value, an expiry, a decryption and a read-your-writes wait mean the same
//! on both ports.
//!
//! A command runs to its reply without waiting, except the three that must: `AUTH` (a key
//! fetch from the provider), `KV.WAIT` (the consumer) and `SCAN` of a store encrypted at rest
//! (the blocking pool). Those return a [`Pending`] for the connection to await.
//!
//! Here are only the table, the checks every command passes and the dispatch: each family of
//! commands has a module of its own, so its code, its limits and its tests read together.

mod connection;
mod introspection;
mod keys;
mod scan;
mod session;
mod shared;
mod wait;

pub use session::Session;
pub use shared::Shared;

use std::fmt::Write as _;
use std::ops::Range;
use std::time::Duration;

use bytes::BytesMut;
use kv_core::consistency::ConsistencyToken;

use super::reply::Reply;
use crate::read::ReadError;
use crate::store::StoreError;
use session::Hello;

/// The Redis version this port answers to clients that ask (`INFO`, `HELLO`): the one whose
/// replies it gives (RESP3, `HELLO`, `CLIENT SETINFO`).
const REDIS_VERSION: &str = "7.0.0";

const READONLY: &str = "READONLY You can't write against a read only replica.";

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
        /// The readable part of the `MATCH` prefix (`KeyGrant::listing`).
        prefixes: Vec<Vec<u8>>,
        after: Option<Vec<u8>>,
        count: usize,
    },
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
    if let Some(refusal) = session.key_refusal(spec.keys, args) {
        reply.error(&refusal);
        return Next::Continue;
    }
    let reply = &mut reply;
    match spec.command {
        Name::Get => keys::get(shared, args, reply),
        Name::Mget => keys::mget(shared, args, reply),
        Name::Exists => keys::exists(shared, args, reply),
        Name::Strlen | Name::Type => keys::strlen_or_type(shared, spec.command, args, reply),
        Name::Ttl | Name::Pttl | Name::ExpireTime | Name::PexpireTime => {
            keys::expiry(shared, spec.command, args, reply)
        }
        Name::Scan => return scan::scan(shared, session, args, reply),
        Name::Dbsize => introspection::dbsize(shared, reply),
        Name::Info => reply.text(&introspection::info(shared, args)),
        Name::Command => introspection::command(args, reply),
        Name::Ping => connection::ping(args, reply),
        Name::Echo => connection::echo(args, reply),
        Name::Select => connection::select(args, reply),
        Name::Client => connection::client(session, args, reply),
        Name::Quit => return connection::quit(reply),
        Name::Reset => connection::reset(shared, session, reply),
        Name::Hello => return connection::hello(shared, session, args, reply),
        Name::Auth => return session::auth(shared, args, reply),
        Name::KvWait => return wait::kv_wait(shared, args, reply),
    }
    Next::Continue
}

/// The most bytes the reply of `args` may take, for a command whose reply may be large:
/// `MGET`, its values up to KV_API_MAX_BATCH_GET_BYTES and each one's header. `None` for the
/// others, whose replies hold one value at most.
pub fn large_reply_bound(shared: &Shared, args: Args<'_>) -> Option<usize> {
    match lookup(args.get(0)) {
        Lookup::Known(index) if COMMANDS[index].command == Name::Mget => Some(
            shared
                .read
                .max_batch_get_bytes
                .saturating_add(args.len().saturating_mul(24)),
        ),
        _ => None,
    }
}

impl Pending {
    /// Waits for what the command needs, then writes its reply to `out`.
    pub async fn run(self, shared: &Shared, session: &mut Session, out: &mut BytesMut) {
        match self {
            Pending::Auth { token, hello } => {
                session::authenticate(shared, session, token, hello, out).await
            }
            Pending::Wait { token, timeout } => {
                wait::wait_for(shared, session, token, timeout, out).await
            }
            Pending::SealedScan {
                prefixes,
                after,
                count,
            } => scan::sealed_scan(shared, session, prefixes, after, count, out).await,
        }
    }
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

fn store_failed(reply: &mut Reply<'_>, error: StoreError) {
    reply.error(&crate::resp::errors::refusal(&ReadError::store(error)));
}

fn integer(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
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
    fn the_unknown_command_error_quotes_the_arguments_as_redis_does() {
        let buf = b"FOO a b";
        let ranges = [0..3, 4..5, 6..7];
        assert_eq!(
            unknown_command(b"FOO", Args::new(buf, &ranges)),
            "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
        );
    }
}
