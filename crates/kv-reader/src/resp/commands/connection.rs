//! Commands about the connection, not the data: what a Redis client sends before its first read.

use kv_core::web::auth::AuthGate;

use super::session::{hello_reply, Hello, Session};
use super::{integer, Args, Next, Pending, Shared};
use crate::resp::reply::Reply;

/// Longest client name `CLIENT SETNAME` takes.
const MAX_CLIENT_NAME: usize = 256;

/// `PING [message]`.
pub(super) fn ping(args: Args<'_>, reply: &mut Reply<'_>) {
    match args.len() {
        1 => reply.simple("PONG"),
        2 => reply.bulk(args.get(1)),
        _ => reply.error("ERR wrong number of arguments for 'ping' command"),
    }
}

pub(super) fn echo(args: Args<'_>, reply: &mut Reply<'_>) {
    reply.bulk(args.get(1));
}

/// `SELECT 0`: the one database there is.
pub(super) fn select(args: Args<'_>, reply: &mut Reply<'_>) {
    match std::str::from_utf8(args.get(1)).map(str::parse::<i64>) {
        Ok(Ok(0)) => reply.ok(),
        Ok(Ok(_)) => reply.error("ERR DB index is out of range"),
        _ => reply.error("ERR value is not an integer or out of range"),
    }
}

/// `QUIT`: the connection closes after the reply.
pub(super) fn quit(reply: &mut Reply<'_>) -> Next {
    reply.ok();
    Next::Close
}

pub(super) fn reset(shared: &Shared, session: &mut Session, reply: &mut Reply<'_>) {
    session.reset(&shared.auth);
    reply.simple("RESET");
}

pub(super) fn client(session: &mut Session, args: Args<'_>, reply: &mut Reply<'_>) {
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

/// `HELLO [2|3 [AUTH user token] [SETNAME name]]`.
pub(super) fn hello(
    shared: &Shared,
    session: &mut Session,
    args: Args<'_>,
    reply: &mut Reply<'_>,
) -> Next {
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
        if matches!(*shared.auth, AuthGate::Disabled) {
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
