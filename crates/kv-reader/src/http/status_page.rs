//! `GET /status`: the reader's state for a person, as one HTML page. It renders the value
//! `/healthz/cluster` answers as JSON ([`crate::cluster::health`]), so the two cannot drift: the
//! topic, the shards and their partitions, who holds each partition and who acts as its owner
//! (this process's part from [`crate::acting::owner::Election`]), lag, replay progress and freshness. No script, no external asset (the style is inline, and the
//! Content-Security-Policy allows nothing else); every value is HTML-escaped, peers' answers
//! included.

use std::fmt::Write as _;

use actix_web::http::header::{CacheControl, CacheDirective, ContentType};
use actix_web::{web, HttpResponse};

use crate::http::cluster_view::{health, ClusterHealth};
use crate::http::state::HttpState;

/// The page allows its inline style and nothing else: no script, no fetch, no frame.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}\
table{border-collapse:collapse;margin:0 0 1.5rem}\
th,td{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}\
th{background:#f3f3f3}.bad{color:#a00;font-weight:bold}.ok{color:#070}\
caption{text-align:left;font-weight:bold;padding:.3rem 0}";

/// `GET /status`.
pub async fn status_page(state: web::Data<HttpState>) -> HttpResponse {
    let view = health(
        &state.topic,
        state.read.cluster.as_deref(),
        &state.read.progress,
        &state.election,
    );
    HttpResponse::Ok()
        .content_type(ContentType::html())
        .insert_header(("content-security-policy", CONTENT_SECURITY_POLICY))
        .insert_header(CacheControl(vec![CacheDirective::NoStore]))
        .body(render(&view))
}

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A row of the summary table: a label and its value, the value's cell named by `field` (the
/// name of its JSON field in `/healthz/cluster`), so tools and tests can find it.
fn row(out: &mut String, label: &str, field: &str, value: &str) {
    let _ = write!(
        out,
        "<tr><th scope=\"row\">{}</th><td data-field=\"{}\">{}</td></tr>",
        escape(label),
        escape(field),
        escape(value)
    );
}

fn optional<T: std::fmt::Display>(value: Option<T>, none: &str) -> String {
    value.map_or_else(|| none.to_owned(), |v| v.to_string())
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

fn list(values: &[u32]) -> String {
    values
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The whole page.
pub fn render(view: &ClusterHealth) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>kv-reader status: {topic}</title><style>{STYLE}</style></head><body>\
         <h1>kv-reader status: <span data-field=\"topic\">{topic}</span></h1>\
         <p>The same data as <a href=\"/healthz/cluster\">/healthz/cluster</a> (JSON), as this \
         replica knows it now; reload for fresh values.</p>",
        topic = escape(&view.topic)
    );

    out.push_str("<table id=\"summary\"><caption>This replica</caption>");
    row(&mut out, "Topic", "topic", &view.topic);
    let class = if view.status == "ready" { "ok" } else { "bad" };
    let _ = write!(
        out,
        "<tr><th scope=\"row\">Status</th><td class=\"{class}\" data-field=\"status\">{}</td></tr>",
        escape(view.status)
    );
    row(&mut out, "Sharded", "sharded", yes_no(view.sharded));
    if let Some(shard) = view.shard {
        row(&mut out, "This shard", "shard", &shard.to_string());
    }
    row(&mut out, "Shards", "shards", &view.shards.to_string());
    row(
        &mut out,
        "Replicas of each partition",
        "replicas",
        &view.replicas.to_string(),
    );
    row(
        &mut out,
        "Partitions",
        "partitions",
        &view.partitions.to_string(),
    );
    row(
        &mut out,
        "Lag (records not applied yet)",
        "lag",
        &view.lag.to_string(),
    );
    if let Some(without) = &view.partitions_without_ready_owner {
        let text = if without.is_empty() {
            "none".to_owned()
        } else {
            without
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        row(
            &mut out,
            "Partitions without a ready owner",
            "partitions_without_ready_owner",
            &text,
        );
    }
    row(&mut out, "Owner election", "owner.mode", view.owner.mode);
    let owned = if view.owner.partitions.is_empty() {
        "none".to_owned()
    } else {
        view.owner
            .partitions
            .iter()
            .map(|(p, since)| format!("{p} (since {since})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    row(
        &mut out,
        "Partitions owned here (since, ms since the epoch)",
        "owner.partitions",
        &owned,
    );
    out.push_str("</table>");

    let replay = &view.replay;
    out.push_str("<table id=\"replay\"><caption>Replay</caption>");
    row(
        &mut out,
        "Records applied",
        "replay.applied",
        &replay.applied.to_string(),
    );
    row(
        &mut out,
        "Records remaining",
        "replay.remaining",
        &replay.remaining.to_string(),
    );
    row(
        &mut out,
        "Elapsed (ms)",
        "replay.elapsed_ms",
        &replay.elapsed_ms.to_string(),
    );
    row(
        &mut out,
        "Records per second",
        "replay.records_per_second",
        &replay.records_per_second.to_string(),
    );
    row(
        &mut out,
        "Estimated time left (ms)",
        "replay.eta_ms",
        &optional(replay.eta_ms, "-"),
    );
    row(
        &mut out,
        "Ready after (ms)",
        "replay.ready_after_ms",
        &optional(replay.ready_after_ms, "not ready yet"),
    );
    out.push_str("</table>");

    let freshness = &view.freshness;
    out.push_str("<table id=\"freshness\"><caption>Freshness</caption>");
    row(
        &mut out,
        "Applied (X-Replica-Applied)",
        "freshness.applied",
        &optional(freshness.applied.as_deref(), "nothing yet"),
    );
    row(
        &mut out,
        "Lag (X-Replica-Lag)",
        "freshness.lag",
        &freshness.lag.to_string(),
    );
    row(
        &mut out,
        "Broker silent for (ms, X-Replica-Silence-Ms)",
        "freshness.silence_ms",
        &optional(freshness.silence_ms, "never heard"),
    );
    out.push_str("</table>");

    out.push_str(
        "<table id=\"partitions\"><caption>Partitions</caption><thead><tr>\
         <th>Partition</th><th>Owners (primary first)</th><th>Acting owner</th>\
         <th>Acting owner here</th><th>Next offset</th><th>End offset</th><th>Lag</th>\
         <th>Caught up</th></tr></thead><tbody>",
    );
    for partition in &view.partition_owners {
        let owners = if view.sharded {
            list(&partition.owners)
        } else {
            "this replica".to_owned()
        };
        let acting = match (view.sharded, partition.acting_owner) {
            (false, _) if partition.owned_here => "this replica".to_owned(),
            (false, _) if view.owner.mode == "off" => "not known here (not a candidate)".to_owned(),
            (false, _) => "not this replica".to_owned(),
            (true, Some(shard)) => shard.to_string(),
            (true, None) => "none ready".to_owned(),
        };
        let local = partition.local.as_ref();
        let cell = |value: Option<String>| escape(&value.unwrap_or_else(|| "-".to_owned()));
        let _ = write!(
            out,
            "<tr data-partition=\"{p}\"><td data-field=\"partition\">{p}</td>\
             <td data-field=\"owners\">{owners}</td><td data-field=\"acting_owner\">{acting}</td>\
             <td data-field=\"owned_here\">{owned}</td><td data-field=\"next_offset\">{next}</td>\
             <td data-field=\"end_offset\">{end}</td><td data-field=\"lag\">{lag}</td>\
             <td data-field=\"caught_up\">{caught_up}</td></tr>",
            p = partition.partition,
            owners = escape(&owners),
            acting = escape(&acting),
            owned = yes_no(partition.owned_here),
            next = cell(local.map(|l| l.next_offset.to_string())),
            end = cell(local.map(|l| l.end_offset.to_string())),
            lag = cell(local.map(|l| l.lag.to_string())),
            caught_up = cell(local.map(|l| yes_no(l.caught_up).to_owned())),
        );
    }
    out.push_str("</tbody></table>");
    if view.sharded {
        out.push_str(
            "<p>Among shards run with <code>KV_API_OWNER=true</code> (formerly \
             <code>KV_API_TTL_SWEEPER</code>), a partition's acting owner (its first owner, \
             primary first, that is caught up) produces its TTL tombstones and repairs; this \
             page knows only its own shard's setting.</p>",
        );
    }

    if let Some(shards) = &view.cluster {
        out.push_str(
            "<table id=\"shards\"><caption>Shards, as this one last heard them</caption><thead>\
             <tr><th>Shard</th><th>Reachable</th><th>Status</th><th>Last heard (ms ago)</th>\
             <th>Partitions (lag)</th></tr></thead><tbody>",
        );
        for shard in shards {
            let partitions = shard
                .partitions
                .iter()
                .map(|(p, view)| {
                    format!(
                        "{p} ({}{})",
                        view.lag,
                        if view.caught_up { "" } else { ", catching up" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let name = if shard.this {
                format!("{} (this one)", shard.shard)
            } else {
                shard.shard.to_string()
            };
            let _ = write!(
                out,
                "<tr data-shard=\"{index}\"><td data-field=\"shard\">{name}</td>\
                 <td class=\"{class}\" data-field=\"reachable\">{reachable}</td>\
                 <td data-field=\"status\">{status}</td>\
                 <td data-field=\"last_seen_ms_ago\">{seen}</td>\
                 <td data-field=\"partitions\">{partitions}</td></tr>",
                index = shard.shard,
                name = escape(&name),
                class = if shard.reachable { "ok" } else { "bad" },
                reachable = yes_no(shard.reachable),
                status = escape(shard.status.as_deref().unwrap_or("not heard yet")),
                seen = escape(&optional(shard.last_seen_ms_ago, "-")),
                partitions = escape(&partitions),
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::acting::owner::OwnerView;
    use crate::cluster::peers::{PartitionView, ShardView};
    use crate::http::cluster_view::{FreshnessView, LocalPartition, PartitionOwners, ReplayView};

    fn view() -> ClusterHealth {
        ClusterHealth {
            sharded: true,
            shard: Some(0),
            shards: 2,
            replicas: 1,
            partitions: 2,
            partitions_without_ready_owner: Some(vec![1]),
            owner: OwnerView {
                mode: "shards",
                partitions: BTreeMap::from([(0, 1_733_000_000_000)]),
            },
            cluster: Some(vec![
                ShardView {
                    shard: 0,
                    this: true,
                    reachable: true,
                    status: Some("ready".to_owned()),
                    last_seen_ms_ago: None,
                    partitions: BTreeMap::from([(
                        0,
                        PartitionView {
                            caught_up: true,
                            lag: 0,
                        },
                    )]),
                },
                ShardView {
                    shard: 1,
                    this: false,
                    reachable: false,
                    status: Some("<script>alert(1)</script>".to_owned()),
                    last_seen_ms_ago: Some(1200),
                    partitions: BTreeMap::new(),
                },
            ]),
            topic: "orders&co".to_owned(),
            status: "ready",
            lag: 0,
            replay: ReplayView {
                applied: 42,
                remaining: 0,
                elapsed_ms: 900,
                records_per_second: 46.7,
                eta_ms: None,
                ready_after_ms: Some(900),
            },
            freshness: FreshnessView {
                applied: Some("0:41".to_owned()),
                lag: 0,
                silence_ms: Some(12),
            },
            partition_owners: vec![
                PartitionOwners {
                    partition: 0,
                    owners: vec![0],
                    acting_owner: Some(0),
                    owned_here: true,
                    local: Some(LocalPartition {
                        next_offset: 42,
                        end_offset: 42,
                        end_offset_at_start: 40,
                        lag: 0,
                        caught_up: true,
                    }),
                },
                PartitionOwners {
                    partition: 1,
                    owners: vec![1],
                    acting_owner: None,
                    owned_here: false,
                    local: None,
                },
            ],
        }
    }

    #[test]
    fn the_page_shows_the_topic_owners_lag_replay_and_freshness() {
        let page = render(&view());
        for expected in [
            "<span data-field=\"topic\">orders&amp;co</span>",
            "<td data-field=\"replay.applied\">42</td>",
            "<td data-field=\"freshness.applied\">0:41</td>",
            "<td data-field=\"partitions_without_ready_owner\">1</td>",
            "<td data-field=\"acting_owner\">none ready</td>",
            "<td data-field=\"owned_here\">yes</td>",
            "<td data-field=\"owner.mode\">shards</td>",
            "<td data-field=\"owner.partitions\">0 (since 1733000000000)</td>",
            "<td data-field=\"next_offset\">42</td>",
            "<td data-field=\"last_seen_ms_ago\">1200</td>",
        ] {
            assert!(page.contains(expected), "{expected} missing from\n{page}");
        }
    }

    #[test]
    fn what_a_peer_says_is_escaped_and_the_page_has_no_script() {
        let page = render(&view());
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("src="), "no external asset: {page}");
        assert_eq!(escape("a\"b'c<d>&"), "a&quot;b&#39;c&lt;d&gt;&amp;");
    }
}
