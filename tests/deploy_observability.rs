//! deploy/grafana and deploy/prometheus against the real thing: the CA (the
//! built `ward ca serve`, taking join tokens and ServiceAccount tokens that
//! a stand-in Kubernetes API reviews), two sidecars and the built
//! `ward injector` run on loopback, real traffic and AdmissionReviews make
//! every metric family the dashboard queries appear (the prometheus crate
//! shows a labelled family only once it has a series), and then every
//! metric name, label matcher, `by (...)` label and legend label of the
//! dashboard and of the alerting rules must exist in those scrapes, with
//! the labels Prometheus adds to the job that scrapes them. `promtool check
//! metrics` lints the scrapes. The scrape configuration and the alerting
//! rules themselves: deploy_prometheus.rs.

mod support;
mod webhook;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::apps::{http_app, http1_requests};
use support::deploy::*;
use support::kube_api::{Answer, FakeKubeApi, jwt};
use support::mesh::*;
use support::{https, process, tools};
use ward_proxy::identity::csr::new_key_and_csr;
use ward_proxy::identity::{CaClient, CaClientError};
use webhook::{Pair, assert_reviews, metric, post, sample, scrape};

/// Label names, each with the values seen (none: any value).
type Labels = BTreeMap<String, BTreeSet<String>>;

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

/// (metric name, label matchers) for each selector of a `ward_*` or
/// `process_*` metric or of `up`.
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
        let ours = name.starts_with("ward_") || name.starts_with("process_");
        if !(ours || (name == "up" && rest.starts_with('{'))) {
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
    // The next app connection takes that one's mesh connection from web's
    // pool once it is back.
    web.assert_metric("ward_http_pool_idle_connections{peer=\"orders\"}", 1.0)
        .await;
    let again = http1_requests(web.forwards[0], &[("GET", "/")]).await;
    assert_eq!(again[0].0, 200);
    web.assert_metric("ward_http_pool_reuses_total{peer=\"orders\"}", 1.0)
        .await;
    // A TLS client that cannot authenticate the sidecar (no SVID of its own).
    assert!(
        https::request(inbound, "orders", &ca.bundle_pem, "GET", "/")
            .await
            .is_err()
    );
    let _ = round_trip(inbound, b"GET / HTTP/1.0\r\n\r\n").await;
    // Bytes that are not HTTP on a port declared http: refused by web's
    // sidecar before any mesh connection.
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
        let (orders, web) = (orders.metrics().await, web.metrics().await);
        orders.contains("ward_tls_handshake_errors_total{direction=\"inbound\"")
            && web.contains("ward_tcp_connection_errors_total{direction=\"outbound\"")
    });
    assert!(counted.await, "{}", web.metrics().await);
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
    // The golden signals, denials, TLS errors, the sidecars' resources,
    // expiry, the CA and its TokenReviews, and the injector are on the
    // dashboard.
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
        "ward_http_pool_reuses_total",
        "ward_tcp_accept_errors_total",
        "process_resident_memory_bytes",
        "process_open_fds",
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
