//! deploy/grafana and deploy/prometheus against the real thing: a CA and
//! two sidecars run on loopback, real traffic makes every metric family
//! the dashboard queries appear (the prometheus crate shows a labelled
//! family only once it has a series), and then every `ward_*` name, label
//! matcher, `by (...)` label and legend label of the dashboard must exist
//! in those scrapes. `promtool check metrics` lints the scrapes and
//! `promtool check config` the scrape configuration.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::apps::{http_app, http1_requests};
use support::mesh::*;
use support::{https, tools};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(deploy("grafana/ward.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

fn yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Labels Prometheus adds to every ward target (prometheus.yml's
/// target_labels, plus job and instance), so they never show in a scrape.
fn target_labels() -> BTreeSet<String> {
    let config = yaml(&deploy("prometheus/prometheus.yml"));
    let proxies = &config["scrape_configs"][0];
    assert_eq!(proxies["job_name"], "ward-proxies");
    let mut labels: BTreeSet<String> = proxies["relabel_configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["target_label"].as_str())
        .filter(|l| !l.starts_with("__"))
        .map(String::from)
        .collect();
    labels.extend(["job".to_string(), "instance".to_string()]);
    labels
}

/// Every PromQL expression of the dashboard with its legend, and the
/// template variables' queries (legend empty).
fn queries(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let legend = t["legendFormat"].as_str().unwrap_or_default();
            out.push((t["expr"].as_str().unwrap().to_string(), legend.to_string()));
        }
    }
    for var in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            out.push((q.to_string(), String::new()));
        }
    }
    out
}

fn ident_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    &text[..end]
}

/// (metric name, label names in its selector) for each `ward_*` selector.
fn selectors(expr: &str) -> Vec<(&str, Vec<&str>)> {
    let mut found = Vec::new();
    for (at, _) in expr.match_indices("ward_") {
        let before = expr[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let name = ident_at(&expr[at..]);
        let rest = &expr[at + name.len()..];
        let labels = match rest.strip_prefix('{') {
            Some(body) => body[..body.find('}').unwrap()]
                .split(',')
                .map(|m| m.trim())
                .filter(|m| !m.is_empty())
                .map(ident_at)
                .collect(),
            None => Vec::new(),
        };
        found.push((name, labels));
    }
    found
}

/// The labels of every `by (...)` clause.
fn by_labels(expr: &str) -> BTreeSet<&str> {
    expr.match_indices("by (")
        .flat_map(|(at, _)| {
            let list = &expr[at + 4..];
            list[..list.find(')').unwrap()].split(',').map(str::trim)
        })
        .collect()
}

/// `{{label}}` references of a legend.
fn legend_labels(legend: &str) -> Vec<&str> {
    legend
        .split("{{")
        .skip(1)
        .map(|s| s[..s.find("}}").unwrap()].trim())
        .collect()
}

/// Series names and their label names in a Prometheus text scrape.
fn families(scrape: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = ident_at(line);
        let labels = out.entry(name.to_string()).or_default();
        if let Some(body) = line[name.len()..].strip_prefix('{') {
            // Label values here are SPIFFE IDs, codes and words: no `",`.
            for pair in body[..body.rfind('}').unwrap()].split("\",") {
                labels.insert(ident_at(pair).to_string());
            }
        }
    }
    out
}

#[test]
fn the_dashboard_is_well_formed() {
    let dash = dashboard();
    let vars = dash["templating"]["list"].as_array().unwrap();
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(ds["query"], "prometheus");
    let source = format!("${{{}}}", ds["name"].as_str().unwrap());
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in panels {
        let id = p["id"].as_u64().expect("numeric panel id");
        assert!(ids.insert(id), "panel id {id} is used twice");
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap());
        assert!(
            x + w <= 24 && w > 0 && h > 0,
            "panel {id} fits the 24-column grid"
        );
        for cell in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
            assert!(
                cells.insert(cell),
                "panel {id} overlaps another at {cell:?}"
            );
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], source.as_str(), "panel {id}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {id} has queries");
        let refs: BTreeSet<_> = targets
            .iter()
            .map(|t| t["refId"].as_str().unwrap())
            .collect();
        assert_eq!(refs.len(), targets.len(), "panel {id}: refIds");
    }
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Request rate",
        "Error rate (5xx share)",
        "Latency p50",
        "Latency p99",
        "Bytes per second",
        "Policy denials per rule",
        "TLS handshake errors by reason (sidecars)",
        "Soonest SVID expiry",
        "SVIDs issued and refused",
    ] {
        assert!(titles.contains(&wanted), "no panel {wanted:?}");
    }
}

/// `promtool check metrics` on one scrape.
fn promtool_check_metrics(tool: &str, what: &str, scrape: &str) {
    let mut child = Command::new(tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "promtool check metrics on the {what}:\n{report}\n{scrape}"
    );
}

const DAY: Duration = Duration::from_secs(86_400);

/// CA + orders (HTTP app, GET allowed, the rest denied by default) + web
/// forwarding to it; traffic that makes every family show: allowed and
/// denied requests, failed handshakes, non-HTTP bytes refused, an SVID request
/// the CA refuses. Returns the scrapes (CA, orders, web).
async fn scrapes_after_traffic() -> [String; 3] {
    let ca = TestCa::start(DAY).await;
    let app = http_app().await;
    let path = ca.tmp.path().join("mesh.yaml");
    let orders_id = workload("orders");
    let policy = "roles:\n  frontend: [\"spiffe://mesh.test/ns/shop/sa/web\"]\nallow:\n  - {name: web-reads-orders, from: [frontend], to: orders, http: {methods: [GET]}}\n";
    let mesh = |endpoint| [("orders", &orders_id, endpoint, app.port(), "http")];
    write_mesh_with_policy(&path, &mesh(app), policy);
    let mut server = SidecarSpec::new(&ca, orders_id.clone(), path.clone());
    server.app = Some(app);
    let orders = server.start().await;
    let inbound = orders.inbound.unwrap();
    write_mesh_with_policy(&path, &mesh(inbound), policy);
    let mut client = SidecarSpec::new(&ca, workload("web"), path);
    client.forwards = vec![("orders".into(), app.port())];
    let web = client.start().await;
    assert!(web.wait_ready(Duration::from_secs(10)).await);
    assert!(orders.wait_ready(Duration::from_secs(10)).await);

    let answers = http1_requests(web.forwards[0], &[("GET", "/"), ("POST", "/")]).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses, [200, 403]);
    // A TLS client that cannot authenticate the sidecar (no SVID of its own).
    assert!(
        https::request(inbound, "orders", &ca.bundle_pem, "GET", "/")
            .await
            .is_err()
    );
    let _ = round_trip(inbound, b"GET / HTTP/1.0\r\n\r\n").await;
    // Bytes that are not HTTP on a port declared http: refused after TLS.
    let _ = round_trip(web.forwards[0], b"\x00\x01 not http").await;
    let refused = https::request(ca.addr, "127.0.0.1", &ca.bundle_pem, "POST", "/v1/svid").await;
    assert_eq!(refused.map(|r| r.0), Ok(401));

    let counted = poll(Duration::from_secs(5), || async {
        let text = orders.metrics().await;
        text.contains("ward_tls_handshake_errors_total{direction=\"inbound\"")
            && text.contains("ward_tcp_connection_errors_total{direction=\"inbound\"")
    });
    assert!(counted.await, "{}", orders.metrics().await);
    let ca_scrape = https::request(ca.addr, "127.0.0.1", &ca.bundle_pem, "GET", "/metrics").await;
    let (status, ca_scrape) = ca_scrape.unwrap();
    assert_eq!(status, 200);
    [ca_scrape, orders.metrics().await, web.metrics().await]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_what_a_running_mesh_exports() {
    let scrapes = scrapes_after_traffic().await;
    let mut exported: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for scrape in &scrapes {
        for (name, labels) in families(scrape) {
            exported.entry(name).or_default().extend(labels);
        }
    }
    let targets = target_labels();
    let mut used = BTreeSet::new();
    for (expr, legend) in queries(&dashboard()) {
        let mut available: BTreeSet<&str> = targets.iter().map(String::as_str).collect();
        for (name, labels) in selectors(&expr) {
            let Some(known) = exported.get(name) else {
                panic!("{name} is not exported by a running ward (in: {expr})");
            };
            used.insert(name.to_string());
            for label in labels {
                assert!(
                    known.contains(label) || targets.contains(label),
                    "{name} has no label {label:?} (in: {expr})"
                );
            }
            available.extend(known.iter().map(String::as_str));
        }
        let grouped = by_labels(&expr);
        for label in &grouped {
            assert!(
                available.contains(label),
                "by ({label}) is no label here: {expr}"
            );
        }
        for label in legend_labels(&legend) {
            let kept = if grouped.is_empty() {
                available.contains(label)
            } else {
                grouped.contains(label)
            };
            assert!(
                kept,
                "legend {{{{{label}}}}} is not a label of the result: {expr}"
            );
        }
    }
    // The golden signals, denials, TLS errors, expiry and the CA are there.
    for family in [
        "ward_http_requests_total",
        "ward_http_request_duration_seconds_bucket",
        "ward_tcp_bytes_total",
        "ward_authz_decisions_total",
        "ward_tls_handshake_errors_total",
        "ward_identity_cert_expiration_timestamp_seconds",
        "ward_ca_svids_issued_total",
        "ward_ca_svid_requests_denied_total",
        "ward_ca_intermediate_expiry_seconds",
    ] {
        assert!(
            used.contains(family),
            "the dashboard does not show {family}"
        );
    }
    if let Some(promtool) = tools::promtool() {
        for (what, scrape) in ["CA", "orders sidecar", "web sidecar"].iter().zip(&scrapes) {
            promtool_check_metrics(&promtool, what, scrape);
        }
    }
}

/// `promtool check config`. Debian's promtool is built without Kubernetes
/// service discovery, so where it refuses `kubernetes_sd_configs` as an
/// unknown field the file is checked again with each job's discovery
/// replaced by a static target: everything else (relabelling, TLS, paths)
/// is still checked by promtool itself.
fn promtool_check_config(tool: &str, config: &Path) {
    let check = |path: &Path| {
        let out = Command::new(tool)
            .args(["check", "config"])
            .arg(path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, report) = check(config);
    if ok {
        return;
    }
    assert!(
        report.contains("field kubernetes_sd_configs not found"),
        "{report}"
    );
    eprintln!(
        "note: this promtool lacks Kubernetes discovery; checking the rest of {}",
        config.display()
    );
    let mut value = yaml(config);
    for job in value["scrape_configs"].as_array_mut().unwrap() {
        let job = job.as_object_mut().unwrap();
        assert!(job.remove("kubernetes_sd_configs").is_some());
        job.insert(
            "static_configs".into(),
            serde_json::json!([{"targets": ["127.0.0.1:15020"]}]),
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("prometheus.json");
    std::fs::write(&copy, serde_json::to_string(&value).unwrap()).unwrap();
    let (ok, report) = check(&copy);
    assert!(ok, "{report}");
}

fn flag_values<'a>(args: &'a [Value], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .filter_map(|w| w[1].as_str())
        .collect()
}

#[test]
fn the_scrape_config_passes_promtool_and_finds_what_ward_runs() {
    if let Some(promtool) = tools::promtool() {
        promtool_check_config(&promtool, &deploy("prometheus/prometheus.yml"));
    }
    let config = yaml(&deploy("prometheus/prometheus.yml"));
    let job = |name: &str| {
        config["scrape_configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["job_name"] == name)
            .unwrap()
            .clone()
    };
    let keep = |job: &Value, source: &str| -> String {
        let rule = job["relabel_configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["action"] == "keep" && r["source_labels"][0] == source);
        rule.unwrap_or_else(|| panic!("no keep rule on {source}"))["regex"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // The sidecar job keeps exactly the container and port `ward inject` adds.
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/inject/deployment.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .arg("inject")
        .arg("-f")
        .arg(&sample)
        .output()
        .unwrap();
    assert!(out.status.success());
    let injected: Value = serde_saphyr::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let pod = &injected["spec"]["template"];
    let proxy = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ward-proxy")
        .unwrap();
    let port = &proxy["ports"][0];
    let proxies = job("ward-proxies");
    assert_eq!(
        keep(&proxies, "__meta_kubernetes_pod_container_name"),
        format!("ward-proxy;{}", port["name"].as_str().unwrap())
    );
    assert_eq!(
        keep(
            &proxies,
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape"
        ),
        pod["metadata"]["annotations"]["prometheus.io/scrape"]
            .as_str()
            .unwrap()
    );
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        port["containerPort"].to_string().as_str()
    );

    // The CA job keeps the CA's pods and port, and verifies a name its certificate has.
    let ca = yaml(&deploy("base/ca-deployment.yaml"));
    let template = &ca["spec"]["template"];
    let container = &template["spec"]["containers"][0];
    let ca_job = job("ward-ca");
    assert_eq!(ca_job["scheme"], "https");
    let app = template["metadata"]["labels"]["app.kubernetes.io/name"]
        .as_str()
        .unwrap();
    let port_name = container["ports"][0]["name"].as_str().unwrap();
    assert_eq!(
        keep(
            &ca_job,
            "__meta_kubernetes_pod_label_app_kubernetes_io_name"
        ),
        format!("{app};{port_name}")
    );
    let sans = flag_values(container["args"].as_array().unwrap(), "--san");
    let server_name = ca_job["tls_config"]["server_name"].as_str().unwrap();
    assert!(
        sans.contains(&server_name),
        "{server_name} is not among {sans:?}"
    );
    let namespaces = &ca_job["kubernetes_sd_configs"][0]["namespaces"]["names"];
    assert_eq!(namespaces[0], ca["metadata"]["namespace"]);
}
