//! deploy/grafana and deploy/prometheus against the real thing: the CA (the
//! built `ward ca serve`, taking join tokens and ServiceAccount tokens that
//! a stand-in Kubernetes API reviews), two sidecars and the built
//! `ward injector` run on loopback, real traffic and AdmissionReviews make
//! every metric family the dashboard queries appear (the prometheus crate
//! shows a labelled family only once it has a series), and then every
//! metric name, label matcher, `by (...)` label and legend label of the
//! dashboard and of the alerting rules must exist in those scrapes, with
//! the labels Prometheus adds to the job that scrapes them. `promtool check
//! metrics` lints the scrapes, `promtool check config` the scrape
//! configuration, `promtool check rules` and `promtool test rules` the
//! alerts.

mod support;
mod webhook;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::apps::{http_app, http1_requests};
use support::kube_api::{Answer, FakeKubeApi, jwt};
use support::mesh::*;
use support::{https, process, tools};
use ward_proxy::identity::csr::new_key_and_csr;
use ward_proxy::identity::{CaClient, CaClientError};
use webhook::{Pair, assert_reviews, metric, post, sample, scrape};

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

/// Label names, each with the values seen (none: any value).
type Labels = BTreeMap<String, BTreeSet<String>>;

/// The jobs of prometheus.yml, by name.
fn jobs() -> BTreeMap<String, Value> {
    let config = yaml(&deploy("prometheus/prometheus.yml"));
    config["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["job_name"].as_str().unwrap().to_string(), j.clone()))
        .collect()
}

/// Labels Prometheus adds to every series of `job` (its relabelling's
/// target labels, plus job and instance), so they never show in a scrape.
fn target_labels(job: &Value) -> Labels {
    let mut labels: Labels = job["relabel_configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["target_label"].as_str())
        .filter(|l| !l.starts_with("__"))
        .map(|l| (l.to_string(), BTreeSet::new()))
        .collect();
    let name = job["job_name"].as_str().unwrap().to_string();
    labels.insert("job".into(), BTreeSet::from([name]));
    labels.insert("instance".into(), BTreeSet::new());
    labels
}

/// A query and the labels its result must carry: the dashboard's
/// expressions with their legends, its template variables' queries, and
/// the alerts with the `$labels` their annotations print.
struct Query {
    expr: String,
    shows: Vec<String>,
}

fn queries(dash: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let legend = t["legendFormat"].as_str().unwrap_or_default();
            out.push(Query {
                expr: t["expr"].as_str().unwrap().to_string(),
                shows: legend_labels(legend),
            });
        }
    }
    for var in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            out.push(Query {
                expr: q.to_string(),
                shows: Vec::new(),
            });
        }
    }
    out
}

fn alerts() -> Vec<Value> {
    let rules = yaml(&deploy("prometheus/alerts.yaml"));
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

fn alert_queries() -> Vec<Query> {
    alerts()
        .iter()
        .map(|rule| Query {
            expr: rule["expr"].as_str().unwrap().to_string(),
            shows: rule["annotations"]
                .as_object()
                .unwrap()
                .values()
                .flat_map(|text| {
                    let text = text.as_str().unwrap();
                    text.split("$labels.")
                        .skip(1)
                        .map(|s| ident_at(s).to_string())
                        .collect::<Vec<_>>()
                })
                .collect(),
        })
        .collect()
}

fn ident_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    &text[..end]
}

/// A label matcher: label, operator (`=`, `!=`, `=~`, `!~`), value.
type Matcher<'a> = (&'a str, &'a str, &'a str);

/// (metric name, label matchers) for each selector of a `ward_*` metric
/// or of `up`.
fn selectors(expr: &str) -> Vec<(&str, Vec<Matcher<'_>>)> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(c) = expr[at..].chars().next() {
        let name = ident_at(&expr[at..]);
        if name.is_empty() {
            at += c.len_utf8();
            continue;
        }
        at += name.len();
        let rest = &expr[at..];
        if !(name.starts_with("ward_") || (name == "up" && rest.starts_with('{'))) {
            continue;
        }
        let matchers = match rest.strip_prefix('{') {
            Some(body) => body[..body.find('}').unwrap()]
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(|m| {
                    let label = ident_at(m);
                    let rest = m[label.len()..].trim_start();
                    let op_len = rest.find('"').unwrap();
                    let value = rest[op_len..].trim_matches('"');
                    (label, rest[..op_len].trim(), value)
                })
                .collect(),
            None => Vec::new(),
        };
        found.push((name, matchers));
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
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .map(|s| s[..s.find("}}").unwrap()].trim().to_string())
        .collect()
}

/// Series names in a Prometheus text scrape, with their labels.
fn families(scrape: &str) -> BTreeMap<String, Labels> {
    let mut out: BTreeMap<String, Labels> = BTreeMap::new();
    for line in scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = ident_at(line);
        let labels = out.entry(name.to_string()).or_default();
        if let Some(body) = line[name.len()..].strip_prefix('{') {
            // Label values here are SPIFFE IDs, codes and words: no `",`.
            for pair in body[..body.rfind('}').unwrap()].split("\",") {
                let (label, value) = pair.split_once("=\"").unwrap();
                let value = value.trim_end_matches('"').to_string();
                labels.entry(label.to_string()).or_default().insert(value);
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
        "ServiceAccount TokenReviews by result",
        "TokenReview latency (Kubernetes API)",
        "SVID refusals in the time range, by reason",
        "Injector reviews by result",
        "Injector serving certificate time left",
        "Injector certificate reload failures",
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

/// A scrape of one ward process, and the job of prometheus.yml that
/// scrapes its kind.
struct Scrape {
    job: &'static str,
    what: &'static str,
    text: String,
}

/// The CA as deployed (`ward ca serve`, ServiceAccount tokens reviewed by a
/// stand-in Kubernetes API, and join tokens for the sidecars here), orders
/// (HTTP app, GET allowed, the rest denied by default), web forwarding to
/// it, and `ward injector`; traffic that makes every family show: allowed
/// and denied requests, failed handshakes, non-HTTP bytes refused, SVID
/// requests the CA refuses, a ServiceAccount token accepted and one
/// refused, and AdmissionReviews with every answer but `error`.
async fn scrapes_after_traffic() -> Vec<Scrape> {
    let api = FakeKubeApi::start().await;
    let mut ca = TestCa::new(DAY);
    let kubeconfig = ca.tmp.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let home = ca.tmp.path().to_str().unwrap().to_string();
    let _ca_process = ca.serve_binary(
        &[
            "--authenticator",
            "kubernetes,join-token",
            "--token-audience",
            "ward",
        ],
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("HOME", &home),
        ],
    );
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

    // A pod's ServiceAccount token the API server vouches for, and one it
    // does not (expired): two TokenReviews, one SVID, one refusal.
    let (accepted, expired) = (jwt("web"), jwt("expired"));
    api.answer(&accepted, Answer::Recorded(201, "authenticated"));
    api.answer(&expired, Answer::Recorded(201, "expired"));
    let ca_client = CaClient::new(&ca.url(), &ca.bundle_pem).unwrap();
    let (_, csr) = new_key_and_csr(&workload("web")).unwrap();
    assert!(ca_client.request_svid(&accepted, &csr).await.is_ok());
    match ca_client.request_svid(&expired, &csr).await {
        Err(CaClientError::Refused { status, reason, .. }) => {
            assert_eq!(
                (status.as_u16(), reason.as_str()),
                (401, "token_unauthenticated")
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(api.seen().len(), 2, "join tokens are not reviewed");

    let counted = poll(Duration::from_secs(5), || async {
        let text = orders.metrics().await;
        text.contains("ward_tls_handshake_errors_total{direction=\"inbound\"")
            && text.contains("ward_tcp_connection_errors_total{direction=\"inbound\"")
    });
    assert!(counted.await, "{}", orders.metrics().await);
    let ca_scrape = https::request(ca.addr, "127.0.0.1", &ca.bundle_pem, "GET", "/metrics").await;
    let (status, ca_scrape) = ca_scrape.unwrap();
    assert_eq!(status, 200);
    for (series, value) in [
        ("ward_ca_token_reviews_total{result=\"authenticated\"}", 1.0),
        (
            "ward_ca_token_reviews_total{result=\"unauthenticated\"}",
            1.0,
        ),
        ("ward_ca_token_reviews_total{result=\"error\"}", 0.0),
        ("ward_ca_token_review_duration_seconds_count", 2.0),
        (
            "ward_ca_svid_requests_denied_total{reason=\"token_unauthenticated\"}",
            1.0,
        ),
    ] {
        assert_eq!(metric(&ca_scrape, series), Some(value), "{series}");
    }

    let injector_dir = ca.tmp.path().join("injector");
    std::fs::create_dir(&injector_dir).unwrap();
    let pair = Pair::valid();
    let files = pair.write(&injector_dir);
    let (_injector, addr) = process::injector(&files.cert, &files.key);
    let tls = webhook::client(&[&pair], rustls::ALL_VERSIONS);
    for review in [
        "pod-create.json",
        "pod-injected.json",
        "pod-opted-out.json",
        "pod-bad-annotation.json",
    ] {
        let (status, body) = post(addr, &tls, &sample(review)).await;
        assert_eq!(status, 200, "{review}: {body}");
    }
    assert_eq!(post(addr, &tls, b"not json").await.0, 400);
    let injector_scrape = scrape(addr, &tls).await;
    assert_reviews(
        &injector_scrape,
        &[
            ("injected", 1.0),
            ("unchanged", 1.0),
            ("skipped", 1.0),
            ("refused", 1.0),
            ("bad_request", 1.0),
            ("error", 0.0),
        ],
    );

    vec![
        Scrape {
            job: "ward-ca",
            what: "CA",
            text: ca_scrape,
        },
        Scrape {
            job: "ward-proxies",
            what: "orders sidecar",
            text: orders.metrics().await,
        },
        Scrape {
            job: "ward-proxies",
            what: "web sidecar",
            text: web.metrics().await,
        },
        Scrape {
            job: "ward-injector",
            what: "injector",
            text: injector_scrape,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_query_only_what_a_running_ward_exports() {
    let scrapes = scrapes_after_traffic().await;
    let jobs = jobs();
    // What Prometheus stores: each scrape's series plus its job's labels,
    // and `up` for every job.
    let mut exported: BTreeMap<String, Labels> = BTreeMap::new();
    for scrape in &scrapes {
        let added = target_labels(&jobs[scrape.job]);
        for (name, labels) in families(&scrape.text) {
            let known = exported.entry(name).or_default();
            for (label, values) in labels.into_iter().chain(added.clone()) {
                known.entry(label).or_default().extend(values);
            }
        }
    }
    for job in jobs.values() {
        let up = exported.entry("up".into()).or_default();
        for (label, values) in target_labels(job) {
            up.entry(label).or_default().extend(values);
        }
    }
    let dash = dashboard();
    for Query { expr, shows } in queries(&dash).into_iter().chain(alert_queries()) {
        let mut available: BTreeSet<&str> = BTreeSet::new();
        for (name, matchers) in selectors(&expr) {
            let Some(known) = exported.get(name) else {
                panic!("{name} is not exported by a running ward (in: {expr})");
            };
            for (label, op, value) in matchers {
                let Some(values) = known.get(label) else {
                    panic!("{name} has no label {label:?} (in: {expr})");
                };
                // An exact value must be one ward (or the job) gives it.
                if op == "=" && !value.contains('$') && !values.is_empty() {
                    assert!(
                        values.contains(value),
                        "{name}{{{label}=\"{value}\"}} never occurs, only {values:?} (in: {expr})"
                    );
                }
            }
            available.extend(known.keys().map(String::as_str));
        }
        let grouped = by_labels(&expr);
        for label in &grouped {
            assert!(
                available.contains(label),
                "by ({label}) is no label here: {expr}"
            );
        }
        for label in &shows {
            let kept = if grouped.is_empty() {
                available.contains(label.as_str())
            } else {
                grouped.contains(label.as_str())
            };
            assert!(kept, "{{{{{label}}}}} is not a label of the result: {expr}");
        }
    }
    // The golden signals, denials, TLS errors, expiry, the CA and its
    // TokenReviews, and the injector are on the dashboard.
    let shown: BTreeSet<String> = queries(&dash)
        .iter()
        .flat_map(|q| {
            selectors(&q.expr)
                .into_iter()
                .map(|(name, _)| name.to_string())
        })
        .collect();
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
        "ward_ca_token_reviews_total",
        "ward_ca_token_review_duration_seconds_bucket",
        "ward_injector_reviews_total",
        "ward_injector_cert_expiration_timestamp_seconds",
        "ward_injector_cert_reloads_total",
    ] {
        assert!(
            shown.contains(family),
            "the dashboard does not show {family}"
        );
    }
    if let Some(promtool) = tools::promtool() {
        for scrape in &scrapes {
            promtool_check_metrics(&promtool, scrape.what, &scrape.text);
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
    // The copy is elsewhere: the rule files by their full path.
    for file in value["rule_files"].as_array_mut().unwrap() {
        let path = config.parent().unwrap().join(file.as_str().unwrap());
        *file = Value::String(path.to_str().unwrap().to_string());
    }
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

/// tests/data/inject/deployment.yaml (Deployment shop/web) as `ward inject`
/// prints it.
fn injected_sample() -> Value {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/inject/deployment.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .arg("inject")
        .arg("-f")
        .arg(&sample)
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_saphyr::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap()
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
    let jobs = jobs();
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
    let injected = injected_sample();
    let pod = &injected["spec"]["template"];
    let proxy = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ward-proxy")
        .unwrap();
    let port = &proxy["ports"][0];
    let proxies = &jobs["ward-proxies"];
    assert_eq!(
        keep(proxies, "__meta_kubernetes_pod_container_name"),
        format!("ward-proxy;{}", port["name"].as_str().unwrap())
    );
    assert_eq!(
        keep(
            proxies,
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

    // The CA and injector jobs keep their Deployment's pods and port, in
    // its namespace, over HTTPS; returns the Deployment's container.
    let https_job = |job: &Value, deployment: &str| -> Value {
        let deployment = yaml(&deploy(deployment));
        let template = &deployment["spec"]["template"];
        let container = &template["spec"]["containers"][0];
        assert_eq!(job["scheme"], "https");
        let app = template["metadata"]["labels"]["app.kubernetes.io/name"]
            .as_str()
            .unwrap();
        let port_name = container["ports"][0]["name"].as_str().unwrap();
        assert_eq!(
            keep(job, "__meta_kubernetes_pod_label_app_kubernetes_io_name"),
            format!("{app};{port_name}")
        );
        let namespaces = &job["kubernetes_sd_configs"][0]["namespaces"]["names"];
        assert_eq!(namespaces[0], deployment["metadata"]["namespace"]);
        container.clone()
    };

    // The CA job verifies a name the CA's certificate has.
    let ca_job = &jobs["ward-ca"];
    let container = https_job(ca_job, "base/ca-deployment.yaml");
    let sans = flag_values(container["args"].as_array().unwrap(), "--san");
    let server_name = ca_job["tls_config"]["server_name"].as_str().unwrap();
    assert!(
        sans.contains(&server_name),
        "{server_name} is not among {sans:?}"
    );

    // The injector job verifies the name the API server verifies (the
    // webhook's Service), which the operator's certificate has (README,
    // section 2), against a CA of its own: ward's CA does not sign it.
    let injector_job = &jobs["ward-injector"];
    https_job(injector_job, "base/injector-deployment.yaml");
    let webhook = yaml(&deploy("base/injector-webhook.yaml"));
    let service = &webhook["webhooks"][0]["clientConfig"]["service"];
    let service_name = format!(
        "{}.{}.svc",
        service["name"].as_str().unwrap(),
        service["namespace"].as_str().unwrap()
    );
    assert_eq!(
        injector_job["tls_config"]["server_name"],
        service_name.as_str()
    );
    let readme = std::fs::read_to_string(deploy("README.md")).unwrap();
    assert!(readme.contains(&format!("subjectAltName=DNS:{service_name}")));
    assert!(readme.contains(&format!("`[{service_name}]`")));
    assert_ne!(
        injector_job["tls_config"]["ca_file"],
        ca_job["tls_config"]["ca_file"]
    );
}

/// `promtool check rules` and the rules' unit tests (`promtool test
/// rules`): each alert fires on the series it is about, after its `for`,
/// with its annotations, and not on healthy ones.
#[test]
fn the_alerting_rules_pass_promtool_and_their_unit_tests() {
    // Each alert is unit-tested, firing and quiet.
    let tests = yaml(&deploy("prometheus/alerts_test.yaml"));
    let cases: Vec<&Value> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .collect();
    for rule in alerts() {
        let name = rule["alert"].as_str().unwrap();
        for firing in [true, false] {
            assert!(
                cases.iter().any(|c| c["alertname"] == name
                    && c["exp_alerts"].as_array().unwrap().is_empty() != firing),
                "no unit test of {name} {}",
                if firing { "firing" } else { "staying quiet" }
            );
        }
    }
    let Some(promtool) = tools::promtool() else {
        return;
    };
    promtool_rules(&promtool, "check", &deploy("prometheus/alerts.yaml"));
    promtool_rules(&promtool, "test", &deploy("prometheus/alerts_test.yaml"));
}

/// `promtool check rules FILE` or `promtool test rules FILE`, which must pass.
fn promtool_rules(promtool: &str, command: &str, file: &Path) {
    let out = Command::new(promtool)
        .args([command, "rules"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {command} rules {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// deploy/'s CA issues SVIDs of its `--svid-ttl`, and a sidecar renews
/// at half the time left, +-10 % (proxy/src/identity/manager.rs). A
/// sidecar renewing as late as that, for four lifetimes, never fires
/// WardSvidExpiringSoon (promtool evaluates it every minute) and shows
/// green on the dashboard's expiry panel.
#[test]
fn the_svid_expiry_alert_and_panel_fit_the_deployed_svid_lifetime() {
    let ca = yaml(&deploy("base/ca-deployment.yaml"));
    let args = ca["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap();
    let [ttl] = flag_values(args, "--svid-ttl")[..] else {
        panic!("one --svid-ttl: {args:?}")
    };
    let ttl = ward_config::parse_duration(ttl).unwrap().as_secs();
    let renewed_after = ttl * 55 / 100;
    // One sample a minute: the SVID's expiry, renewed every renewed_after.
    let expiries: Vec<u64> = (0..=4 * ttl / 60)
        .map(|minute| minute * 60 / renewed_after * renewed_after + ttl)
        .collect();
    let least_left = (0..)
        .zip(&expiries)
        .map(|(minute, expiry)| expiry - minute * 60)
        .min()
        .unwrap();

    let dash = dashboard();
    let panel = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == "Soonest SVID expiry")
        .unwrap();
    let steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        .as_array()
        .unwrap();
    let green = steps.iter().find(|s| s["color"] == "green").unwrap();
    assert!(
        green["value"].as_u64().unwrap() <= least_left,
        "a healthy sidecar has {least_left} s left at the least: {green}"
    );

    let Some(promtool) = tools::promtool() else {
        return;
    };
    let values: Vec<String> = expiries.iter().map(u64::to_string).collect();
    let quiet: Vec<Value> = (0..expiries.len())
        .map(|minute| {
            serde_json::json!({"eval_time": format!("{minute}m"),
                               "alertname": "WardSvidExpiringSoon", "exp_alerts": []})
        })
        .collect();
    let test = serde_json::json!({
        "rule_files": [deploy("prometheus/alerts.yaml")],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{
                "series": "ward_identity_cert_expiration_timestamp_seconds{job=\"ward-proxies\", namespace=\"shop\", pod=\"web-1\"}",
                "values": values.join(" "),
            }],
            "alert_rule_test": quiet,
        }],
    });
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("svid_ttl_test.yaml");
    std::fs::write(&file, test.to_string()).unwrap();
    promtool_rules(&promtool, "test", &file);
}

/// Target labels, by name.
type Target = BTreeMap<String, String>;

/// Prometheus's relabelling of one discovered target, for the actions
/// prometheus.yml uses (`replace`, `keep`), as its relabel package does
/// it: the source labels' values joined with `;` (absent ones empty), the
/// regex anchored at both ends, `$1` expanded in the replacement, an empty
/// result removing the target label. `None`: the target is dropped. The
/// `regex` crate reads the RE2 syntax Go's regexp reads.
fn relabel(rules: &[Value], mut target: Target) -> Option<Target> {
    for rule in rules {
        let value = rule["source_labels"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| target.get(l.as_str().unwrap()).cloned().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(rule["separator"].as_str().unwrap_or(";"));
        let regex = rule["regex"].as_str().unwrap_or("(.*)");
        let regex = regex::Regex::new(&format!("^(?:{regex})$")).unwrap();
        match rule["action"].as_str().unwrap_or("replace") {
            "keep" if !regex.is_match(&value) => return None,
            "keep" => {}
            "replace" => {
                let Some(captures) = regex.captures(&value) else {
                    continue;
                };
                let mut result = String::new();
                captures.expand(rule["replacement"].as_str().unwrap_or("$1"), &mut result);
                let label = rule["target_label"].as_str().unwrap().to_string();
                if result.is_empty() {
                    target.remove(&label);
                } else {
                    target.insert(label, result);
                }
            }
            other => panic!("relabel action {other} is not emulated"),
        }
    }
    Some(target)
}

/// The targets Prometheus's Kubernetes discovery (`role: pod`) makes of a
/// running Pod owned by `controller` (kind, name): one per declared port
/// of each container and init container, with the meta labels
/// prometheus.yml reads, and the job's path and scheme.
fn pod_targets(job: &Value, pod: &Value, controller: (&str, &str)) -> Vec<Target> {
    let meta = &pod["metadata"];
    let sanitized = |name: &str| -> String {
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    let text = |v: &Value| v.as_str().unwrap().to_string();
    let mut common = Target::from([
        (
            "__metrics_path__".into(),
            job["metrics_path"].as_str().unwrap_or("/metrics").into(),
        ),
        ("__scheme__".into(), text(&job["scheme"])),
        (
            "__meta_kubernetes_namespace".into(),
            text(&meta["namespace"]),
        ),
        ("__meta_kubernetes_pod_name".into(), text(&meta["name"])),
        ("__meta_kubernetes_pod_phase".into(), "Running".into()),
        ("__meta_kubernetes_pod_node_name".into(), "node-a".into()),
        (
            "__meta_kubernetes_pod_controller_kind".into(),
            controller.0.into(),
        ),
        (
            "__meta_kubernetes_pod_controller_name".into(),
            controller.1.into(),
        ),
    ]);
    for (kind, field) in [("label", "labels"), ("annotation", "annotations")] {
        for (name, value) in meta[field].as_object().into_iter().flatten() {
            let label = format!("__meta_kubernetes_pod_{kind}_{}", sanitized(name));
            common.insert(label, text(value));
        }
    }
    let mut targets = Vec::new();
    for (list, init) in [("containers", "false"), ("initContainers", "true")] {
        for c in pod["spec"][list].as_array().unwrap() {
            for port in c["ports"].as_array().into_iter().flatten() {
                let mut target = common.clone();
                let number = port["containerPort"].to_string();
                target.insert("__address__".into(), format!("10.1.2.3:{number}"));
                target.insert(
                    "__meta_kubernetes_pod_container_name".into(),
                    text(&c["name"]),
                );
                target.insert("__meta_kubernetes_pod_container_init".into(), init.into());
                let name = port["name"].as_str().unwrap_or_default().to_string();
                target.insert("__meta_kubernetes_pod_container_port_name".into(), name);
                target.insert("__meta_kubernetes_pod_container_port_number".into(), number);
                targets.push(target);
            }
        }
    }
    targets
}

/// prometheus.yml's sidecar job against the targets an injected Pod gives
/// (sidecar, init container and app ports): exactly one is scraped, the
/// proxy's admin port at /metrics, even when the Pod has prometheus.io
/// annotations of its own; `workload` is the app's label, else the
/// controller, a Deployment's ReplicaSet without its pod-template hash.
#[test]
fn the_sidecar_job_scrapes_each_proxy_once_labelled_by_workload() {
    let job = &jobs()["ward-proxies"];
    let rules = job["relabel_configs"].as_array().unwrap();
    let template = &injected_sample()["spec"]["template"];
    let pod = |labels: Value, annotations: Option<Value>| {
        let mut pod = serde_json::json!({
            "metadata": {"name": "web-7d9f8b6c5d-x2x4z", "namespace": "shop",
                         "labels": labels, "annotations": template["metadata"]["annotations"]},
            "spec": template["spec"],
        });
        if let Some(own) = annotations {
            pod["metadata"]["annotations"] = own;
        }
        pod
    };
    let app = serde_json::json!({"app.kubernetes.io/name": "web", "app": "frontend"});
    let own = serde_json::json!({"prometheus.io/scrape": "true",
                                 "prometheus.io/port": "8080", "prometheus.io/path": "/stats"});
    let cases = [
        (
            pod(app.clone(), None),
            ("ReplicaSet", "web-7d9f8b6c5d"),
            "web",
        ),
        (
            pod(serde_json::json!({"app": "orders"}), None),
            ("ReplicaSet", "orders-5c4b9"),
            "orders",
        ),
        (
            pod(serde_json::json!({}), None),
            ("ReplicaSet", "web-7d9f8b6c5d"),
            "web",
        ),
        (
            pod(serde_json::json!({}), None),
            ("ReplicaSet", "cache"),
            "cache",
        ),
        (
            pod(serde_json::json!({}), None),
            ("StatefulSet", "db-bcd"),
            "db-bcd",
        ),
        (
            pod(serde_json::json!({}), None),
            ("DaemonSet", "agent"),
            "agent",
        ),
        (pod(app, Some(own)), ("ReplicaSet", "web-7d9f8b6c5d"), "web"),
    ];
    for (pod, controller, workload) in cases {
        let targets = pod_targets(job, &pod, controller);
        assert!(targets.len() >= 2, "the app's port and the proxy's");
        let scraped: Vec<Target> = targets
            .into_iter()
            .filter_map(|t| relabel(rules, t))
            .collect();
        let at = format!("{controller:?} {}", pod["metadata"]);
        assert_eq!(scraped.len(), 1, "{at}: {scraped:?}");
        let t = &scraped[0];
        assert_eq!(t["__address__"], "10.1.2.3:15020", "{at}");
        assert_eq!(t["__metrics_path__"], "/metrics", "{at}");
        assert_eq!(t["workload"], workload, "{at}");
        assert_eq!(
            (t["namespace"].as_str(), t["pod"].as_str()),
            ("shop", "web-7d9f8b6c5d-x2x4z")
        );
        assert_eq!(t["node"], "node-a");
    }
}
