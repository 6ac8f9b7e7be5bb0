//! Docs that stay true, in the style of the settings catalogue's check: what the code and the
//! deployment files define (metrics, compose's ports and profiles, the chart's shapes) is what
//! the pages say, so a change to one without the other fails here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir)
        .expect("read a source folder")
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// String literals that are whole `kv_…` names: the services' metric names (a `kv_…{…}` in a
/// test's expected text is no whole literal).
fn literal_kv_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("\"kv_") {
        let rest = &text[i + 1..];
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        if rest[end..].starts_with('"') {
            names.insert(rest[..end].to_owned());
        }
    }
    names
}

/// `kv_…` names that are no metric: tracing targets.
const NOT_METRICS: &[&str] = &["kv_access"];

/// The metrics the three service crates register.
fn registered_metrics() -> BTreeSet<String> {
    let mut files = Vec::new();
    for krate in ["kv-core", "kv-writer", "kv-reader"] {
        sources(&repo().join("crates").join(krate).join("src"), &mut files);
    }
    let mut names = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read a source file");
        names.extend(literal_kv_names(&text));
    }
    names.retain(|name| !NOT_METRICS.contains(&name.as_str()));
    names
}

/// The metrics the tables of docs/operations.md list: the back-quoted names in a row's first cell.
fn documented_metrics(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for row in page.lines().filter(|line| line.starts_with("| `")) {
        let first = row.split('|').nth(1).unwrap_or_default();
        for (i, quoted) in first.split('`').enumerate() {
            if i % 2 == 1 && quoted.starts_with("kv_") {
                names.insert(quoted.to_owned());
            }
        }
    }
    names
}

#[test]
fn every_metric_the_services_register_is_in_the_metric_tables_of_operations_md_and_no_other() {
    let code = registered_metrics();
    assert!(code.len() > 40, "too few metrics found: {code:?}");
    let page = read("docs/operations.md");
    let documented = documented_metrics(&page);
    let missing: Vec<_> = code.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "registered but missing from docs/operations.md's metric tables: {missing:?}"
    );
    let stale: Vec<_> = documented.difference(&code).collect();
    assert!(
        stale.is_empty(),
        "in docs/operations.md's metric tables but registered by no service: {stale:?}"
    );
}

/// compose's services: (name, published host ports, profiles).
fn compose_services() -> Vec<(String, Vec<String>, Vec<String>)> {
    let compose: serde_json::Value =
        serde_yaml_ng::from_str(&read("compose/docker-compose.yml")).expect("compose is YAML");
    let services = compose["services"].as_object().expect("services");
    services
        .iter()
        .map(|(name, service)| {
            let strings = |key: &str| -> Vec<String> {
                service[key]
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(|item| item.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let ports = strings("ports")
                .iter()
                .map(|port| port.split(':').next().unwrap_or_default().to_owned())
                .collect();
            (name.clone(), ports, strings("profiles"))
        })
        .collect()
}

#[test]
fn compose_readme_names_every_published_port_and_every_profile() {
    let readme = read("compose/README.md");
    let header = read("compose/docker-compose.yml");
    let header: String = header
        .lines()
        .take_while(|line| line.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let services = compose_services();
    for (name, ports, profiles) in &services {
        for port in ports {
            assert!(
                readme.contains(port.as_str()) && header.contains(port.as_str()),
                "compose's {name} publishes port {port}, which compose/README.md or the \
                 compose file's header does not name"
            );
        }
        for profile in profiles {
            let flag = format!("--profile {profile}");
            assert!(
                readme.contains(&flag) && header.contains(&flag),
                "compose's profile {profile} ({name}) is missing from compose/README.md or the \
                 compose file's header"
            );
        }
    }
    let known: BTreeSet<&str> = services
        .iter()
        .flat_map(|(_, _, profiles)| profiles.iter().map(String::as_str))
        .collect();
    for page in ["README.md", "compose/README.md", "docs/api.md"] {
        let text = read(page);
        for (i, _) in text.match_indices("--profile ") {
            let profile: String = text[i + 10..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            assert!(
                known.contains(profile.as_str()),
                "{page} names --profile {profile}, which compose does not have"
            );
        }
    }
}

#[test]
fn usage_http_addresses_the_services_on_the_ports_compose_publishes() {
    let usage = read("docs/usage.http");
    let services = compose_services();
    let port_of = |service: &str| -> String {
        services
            .iter()
            .find(|(name, _, _)| name == service)
            .and_then(|(_, ports, _)| ports.first().cloned())
            .unwrap_or_else(|| panic!("compose has no {service} with a port"))
    };
    for (variable, service) in [("@writer", "kv-writer"), ("@reader", "kv-reader")] {
        let line = usage
            .lines()
            .find(|line| line.starts_with(variable))
            .unwrap_or_else(|| panic!("docs/usage.http defines no {variable}"));
        let port = port_of(service);
        assert!(
            line.ends_with(&format!(":{port}")),
            "docs/usage.http's {line:?} is not compose's {service} on port {port}"
        );
    }
    let gateway = port_of("gateway");
    assert!(
        usage.contains(&format!("http://localhost:{gateway}")),
        "docs/usage.http does not name the gateway's port {gateway}"
    );
}

#[test]
fn deploy_readme_names_every_chart_shape_and_top_level_value() {
    let readme = read("deploy/README.md");
    let chart = repo().join("deploy/helm/kafka-kv");
    for entry in std::fs::read_dir(chart.join("ci"))
        .expect("ci shapes")
        .flatten()
    {
        let shape = entry.file_name().to_string_lossy().into_owned();
        assert!(
            readme.contains(&format!("`{shape}`")),
            "deploy/README.md does not name the chart shape {shape}"
        );
    }
    let values: serde_json::Value =
        serde_yaml_ng::from_str(&read("deploy/helm/kafka-kv/values.yaml")).expect("values");
    for key in values.as_object().expect("values").keys() {
        let named = readme.contains(&format!("`{key}`")) || readme.contains(&format!("`{key}."));
        assert!(named, "deploy/README.md does not name the value {key}");
    }
    let stale = ["does not shard"];
    for words in stale {
        for page in [
            "deploy/README.md",
            "scripts/deploy-tools/render-chart.py",
            "README.md",
        ] {
            assert!(!read(page).contains(words), "{page} still says {words:?}");
        }
    }
}

/// The `kv_…` metric names a PromQL expression reads, a histogram's series (`_bucket`,
/// `_sum`, `_count`) named after the histogram.
fn metrics_in_query(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("kv_") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '"') {
            let name = &tail[..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            names.insert(base.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_query_of_the_grafana_dashboard_reads_metrics_the_services_register() {
    let code = registered_metrics();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/helm/kafka-kv/files/kafka-kv-dashboard.json"))
            .expect("the dashboard is JSON");
    let mut queries = 0;
    let mut unknown = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a query's expr");
            queries += 1;
            let named = metrics_in_query(expr);
            assert!(
                !named.is_empty(),
                "{:?} reads no kv_ metric",
                panel["title"]
            );
            for name in named {
                if !code.contains(&name) {
                    unknown.push((panel["title"].to_string(), name));
                }
            }
        }
    }
    assert!(queries > 30, "too few dashboard queries found: {queries}");
    assert!(
        unknown.is_empty(),
        "dashboard panels read metrics no service registers: {unknown:?}"
    );
}

#[test]
fn no_metric_name_holds_a_quantile_or_a_precomputed_rate() {
    for name in registered_metrics() {
        let words: Vec<&str> = name.split('_').collect();
        let quantile = words.iter().any(|w| {
            w.len() > 1 && w.starts_with('p') && w[1..].chars().all(|c| c.is_ascii_digit())
        }) || words
            .iter()
            .any(|w| ["quantile", "percentile", "median"].contains(w));
        assert!(
            !quantile,
            "{name} holds a quantile: use a `percentile` label or a histogram"
        );
        let rate = name.contains("_per_") || words.contains(&"rate");
        assert!(
            !rate,
            "{name} is a precomputed rate: export a counter and let rate() divide"
        );
    }
}
