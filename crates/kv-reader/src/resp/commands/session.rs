//! A connection's rights end when its token does, so who may run what is kept with the session.

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use kv_core::settings::prefixes::KeyAction;
use kv_core::web::auth::{AuthError, AuthGate, Operation};
use kv_core::web::prefixes::KeyGrant;

use super::{Args, Next, Pending, Shared, REDIS_VERSION};
use crate::resp::reply::Reply;
use kv_core::record::now_ms;

const NOAUTH: &str = "NOAUTH Authentication required.";
const EXPIRED: &str =
    "NOAUTH Authentication required: the session's token has expired; AUTH with a fresh one.";

/// A connection's state: what `HELLO`, `CLIENT` and `AUTH` set.
#[derive(Debug)]
pub struct Session {
    pub(super) id: u64,
    pub(super) resp3: bool,
    pub(super) name: Option<Vec<u8>>,
    rights: Rights,
    /// The keys the session's token may read (KV_API_AUTH_PREFIXES), compiled at `AUTH`.
    pub(super) reads: KeyGrant,
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
            reads: shared.auth.key_grant(None, KeyAction::Read),
        }
    }

    pub fn resp3(&self) -> bool {
        self.resp3
    }

    /// Whether a command that needs auth may run now, as far as the session knows before the
    /// token's expiry is checked: auth is off, or a token was accepted.
    pub fn authenticated(&self) -> bool {
        self.rights != Rights::Missing
    }

    /// Why this session may not run a command that needs auth, if it may not. The expiry is
    /// checked at each command: a token's rights end when the token does.
    pub(super) fn refusal(&mut self) -> Option<&'static str> {
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

    /// `RESET`: back to the state of a new connection, rights included.
    pub(super) fn reset(&mut self, auth: &AuthGate) {
        self.resp3 = false;
        self.name = None;
        self.rights = initial_rights(auth);
        self.reads = auth.key_grant(None, KeyAction::Read);
    }

    /// Why this session may not read one of the keys a command names (`keys` as the
    /// command's key specification: first, last (negative: from the end), step), if it may
    /// not: Redis's ACL error, naming the key.
    pub(super) fn key_refusal(&self, keys: (i64, i64, i64), args: Args<'_>) -> Option<String> {
        let (first, last, step) = keys;
        if first <= 0 || self.reads.is_all() {
            return None;
        }
        let count = args.len() as i64;
        let last = if last < 0 { count + last } else { last };
        let key = (first..=last.min(count - 1))
            .step_by(step.max(1) as usize)
            .map(|i| args.get(i as usize))
            .find(|key| !self.reads.allows(key))?;
        Some(format!(
            "NOPERM this user has no permissions to access one of the keys used as arguments: \
             {}",
            self.reads.refusal(key).message
        ))
    }
}

fn initial_rights(auth: &AuthGate) -> Rights {
    match auth {
        AuthGate::Disabled => Rights::Open,
        AuthGate::Enabled(_) => Rights::Missing,
    }
}

/// What `HELLO … AUTH` sets once the token is accepted.
#[derive(Debug)]
pub struct Hello {
    pub(super) resp3: bool,
    pub(super) name: Option<Vec<u8>>,
}

/// `AUTH [user] token`: the token is checked by [`authenticate`], which may fetch a key.
pub(super) fn auth(shared: &Shared, args: Args<'_>, reply: &mut Reply<'_>) -> Next {
    if args.len() > 3 {
        reply.error("ERR syntax error");
    } else if matches!(*shared.auth, AuthGate::Disabled) {
        reply.error(
            "ERR AUTH <password> called without any password configured for the default \
             user. Are you sure your configuration is correct?",
        );
    } else {
        let token = String::from_utf8_lossy(args.get(args.len() - 1)).into_owned();
        return Next::Pending(Pending::Auth { token, hello: None });
    }
    Next::Continue
}

/// The waiting part of `AUTH` and `HELLO … AUTH`: the session's rights are the token's.
pub(super) async fn authenticate(
    shared: &Shared,
    session: &mut Session,
    token: String,
    hello: Option<Hello>,
    out: &mut BytesMut,
) {
    let checked = shared.auth.check_token(&token, Operation::Read).await;
    let mut reply = Reply::new(out, session.resp3);
    match checked {
        Ok(claims) => {
            session.reads = shared.auth.key_grant(claims.as_ref(), KeyAction::Read);
            session.rights = match claims {
                None => Rights::Open,
                Some(claims) => Rights::Until(shared.auth.valid_until_ms(&claims).unwrap_or(0)),
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

pub(super) fn hello_reply(session: &Session, reply: &mut Reply<'_>) {
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
