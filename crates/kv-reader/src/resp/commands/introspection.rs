//! What clients and tools ask about the server itself, rather than about a key.

use std::fmt::Write as _;

use super::{lookup, store_failed, Args, Lookup, Shared, Spec, COMMANDS, REDIS_VERSION};
use crate::resp::reply::Reply;

/// `DBSIZE`.
pub(super) fn dbsize(shared: &Shared, reply: &mut Reply<'_>) {
    match shared.read.store.key_count() {
        Ok(count) => reply.integer(count as i64),
        Err(error) => store_failed(reply, error),
    }
}

/// `INFO [section …]`: server, clients, replication (how fresh this replica is) and keyspace;
/// `all`, `everything` and `default` give them all.
pub(super) fn info(shared: &Shared, args: Args<'_>) -> String {
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
            shared.settings.max_connections
        );
    }
    if wanted("replication") {
        let report = shared.read.progress.report();
        let applied = shared.read.progress.freshness().applied;
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
        if let Ok(keys) = shared.read.store.key_count() {
            if keys > 0 {
                let _ = write!(text, "db0:keys={keys}\r\n");
            }
        }
    }
    text
}

/// `COMMAND`, `COMMAND COUNT | LIST | INFO name … | DOCS [name …]`: what clients ask to learn
/// the commands and where their keys are.
pub(super) fn command(args: Args<'_>, reply: &mut Reply<'_>) {
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
