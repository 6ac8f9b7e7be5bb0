//! `GET /status` in a real headless browser (Debian's chromium): sharded readers over a topic
//! the writer wrote to, the page rendered without script, showing what `/healthz/cluster` says.

use crate::{writer, READER};

use kv_testkit::reader::{key_path, wait_ready, wait_seen_ready};
use kv_testkit::tools::browser_dom;
use kv_testkit::{service_env, Broker, Service, Shards};
use serde_json::Value;

/// The serialized DOM holds `value` in the cell named `field` (its JSON field's name).
fn assert_cell(dom: &str, scope: &str, field: &str, value: &str) {
    let cell = format!("data-field=\"{field}\">{value}<");
    assert!(
        dom.contains(&cell),
        "{scope}: the page does not show {field} = {value:?} (looked for {cell:?}) in\n{dom}"
    );
}

fn number(value: &Value) -> String {
    value
        .as_u64()
        .map(|n| n.to_string())
        .or_else(|| value.as_i64().map(|n| n.to_string()))
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

#[tokio::test]
async fn the_status_page_renders_in_a_browser_and_shows_what_the_cluster_json_shows() {
    let broker = Broker::start();
    let topic = broker.create_topic("status", 4).await;
    let http = reqwest::Client::new();
    let writer = Service::start(writer(), &service_env(&broker, &topic));
    for i in 0..12 {
        let response = http
            .put(writer.url(&key_path(format!("user/{i}").as_bytes())))
            .body(format!("value {i}"))
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), 200, "{}", writer.output());
    }
    let mut env = service_env(&broker, &topic);
    // The older name of KV_API_OWNER: every shard is an owner candidate.
    env.push(("KV_API_TTL_SWEEPER", "true".to_owned()));
    let shards = Shards::start(READER, &env, 2, 1);
    for (_, shard) in shards.running() {
        wait_ready(&http, shard).await;
    }
    wait_seen_ready(&http, shards.get(0), 1).await;
    let shard = shards.get(0);

    let page = http.get(shard.url("/status")).send().await.expect("status");
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .expect("policy");
    assert!(policy.starts_with("default-src 'none'"), "{policy}");

    let json: Value = http
        .get(shard.url("/healthz/cluster"))
        .send()
        .await
        .expect("cluster")
        .json()
        .await
        .expect("cluster json");
    let url = shard.url("/status");
    let dom = tokio::task::spawn_blocking(move || browser_dom(&url))
        .await
        .expect("browser");
    assert!(!dom.contains("<script"), "{dom}");

    assert_eq!(json["topic"], topic.as_str());
    assert_cell(&dom, "summary", "topic", &topic);
    assert_cell(&dom, "summary", "status", "ready");
    assert_cell(&dom, "summary", "sharded", "yes");
    for field in ["shard", "shards", "replicas", "partitions", "lag"] {
        assert_cell(&dom, "summary", field, &number(&json[field]));
    }
    assert_cell(&dom, "summary", "partitions_without_ready_owner", "none");
    assert_eq!(json["owner"]["mode"], "shards", "{json}");
    assert_cell(&dom, "summary", "owner.mode", "shards");
    let owned: Vec<String> = json["owner"]["partitions"]
        .as_object()
        .expect("owned partitions")
        .keys()
        .cloned()
        .collect();
    assert_cell(
        &dom,
        "replay",
        "replay.applied",
        &number(&json["replay"]["applied"]),
    );
    assert_cell(
        &dom,
        "replay",
        "replay.remaining",
        &number(&json["replay"]["remaining"]),
    );
    assert_cell(
        &dom,
        "freshness",
        "freshness.applied",
        json["freshness"]["applied"].as_str().expect("applied"),
    );
    assert_cell(
        &dom,
        "freshness",
        "freshness.lag",
        &number(&json["freshness"]["lag"]),
    );

    let partitions = json["partition_owners"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 4);
    let mut held = 0;
    for partition in partitions {
        let p = number(&partition["partition"]);
        let start = dom
            .find(&format!("<tr data-partition=\"{p}\">"))
            .unwrap_or_else(|| panic!("no row for partition {p} in\n{dom}"));
        let row = &dom[start..start + dom[start..].find("</tr>").expect("row end")];
        let owners: Vec<String> = partition["owners"]
            .as_array()
            .expect("owners")
            .iter()
            .map(number)
            .collect();
        assert_cell(row, &p, "owners", &owners.join(", "));
        assert_cell(row, &p, "acting_owner", &number(&partition["acting_owner"]));
        let owned_here = partition["owned_here"] == true;
        assert_eq!(
            owned_here,
            owned.contains(&p),
            "partition {p}: owned_here and the owner object agree: {json}"
        );
        if owned_here {
            assert_eq!(partition["acting_owner"], json["shard"], "{json}");
        }
        assert_cell(row, &p, "owned_here", if owned_here { "yes" } else { "no" });
        match &partition["local"] {
            Value::Null => assert_cell(row, &p, "next_offset", "-"),
            local => {
                held += 1;
                assert_cell(row, &p, "next_offset", &number(&local["next_offset"]));
                assert_cell(row, &p, "end_offset", &number(&local["end_offset"]));
                assert_cell(row, &p, "lag", &number(&local["lag"]));
                assert_cell(row, &p, "caught_up", "yes");
            }
        }
    }
    assert_eq!(held, 2, "shard 0 of 2 holds half of the 4 partitions");
    assert_eq!(
        owned.len(),
        2,
        "with one replica of each partition, shard 0 acts as the owner of the two it holds: {json}"
    );

    let cluster = json["cluster"].as_array().expect("cluster");
    assert_eq!(cluster.len(), 2);
    for view in cluster {
        let index = number(&view["shard"]);
        let start = dom
            .find(&format!("<tr data-shard=\"{index}\">"))
            .unwrap_or_else(|| panic!("no row for shard {index} in\n{dom}"));
        let row = &dom[start..start + dom[start..].find("</tr>").expect("row end")];
        assert_cell(row, &index, "reachable", "yes");
        assert_cell(
            row,
            &index,
            "status",
            view["status"].as_str().expect("status"),
        );
    }
}
