//! deploy/prometheus/, checked with promtool and against what ward runs:
//! the scrape configuration finds the sidecars, the CA and the injector as
//! deploy/ and `ward inject` lay them out (relabelling emulated), and the
//! alerting rules pass their unit tests and fit the deployed SVID lifetime.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::deploy::*;
use support::tools;

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
        promtool_check_config(&promtool, &deploy().join("prometheus/prometheus.yml"));
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
        let deployment = yaml(&deploy().join(deployment));
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
    let webhook = yaml(&deploy().join("base/injector-webhook.yaml"));
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
    let readme = std::fs::read_to_string(deploy().join("README.md")).unwrap();
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
    let tests = yaml(&deploy().join("prometheus/alerts_test.yaml"));
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
    promtool_rules(&promtool, "check", &deploy().join("prometheus/alerts.yaml"));
    promtool_rules(
        &promtool,
        "test",
        &deploy().join("prometheus/alerts_test.yaml"),
    );
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
    let ca = yaml(&deploy().join("base/ca-deployment.yaml"));
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
        "rule_files": [deploy().join("prometheus/alerts.yaml")],
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
