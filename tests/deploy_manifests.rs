//! deploy/'s Kubernetes manifests, checked offline: every manifest against
//! the Kubernetes schemas (kubernetes-validate --strict), kustomizations
//! that list exactly their files, the hardening every ward pod must have,
//! and the cross-references a typo would break silently in a cluster
//! (Service selectors and ports, the webhook's Service and path, the CA's
//! and the injector's flags against the real binary).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use support::deploy::*;
use support::tools;

#[test]
fn every_manifest_matches_the_kubernetes_schemas() {
    let Some(tool) = tools::kubernetes_validate() else {
        return;
    };
    let files = manifests();
    let count: usize = files.iter().map(|f| docs(f).len()).sum();
    assert!(count >= 12, "only {count} documents found under deploy/");
    // 1.33: native sidecars are GA; 1.37: the newest schemas the tool has.
    for version in ["1.33.0", "1.37.0"] {
        let out = Command::new(&tool)
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "Kubernetes {version}:\n{report}");
        // A kind without a schema is only a warning: count real passes.
        let passed = report.matches(" passed for resource ").count();
        assert_eq!(passed, count, "Kubernetes {version}:\n{report}");
    }
}

#[test]
fn kustomizations_list_exactly_their_files() {
    let dirs = kustomization_dirs();
    let rel: Vec<_> = dirs
        .iter()
        .map(|d| d.strip_prefix(deploy()).unwrap())
        .collect();
    assert_eq!(rel, [Path::new("base"), Path::new("examples/namespace")]);
    for dir in dirs {
        let k = &docs(&dir.join("kustomization.yaml"))[0];
        let listed: BTreeSet<&str> = strs(&k["resources"]).into_iter().collect();
        let inputs: BTreeSet<&str> = k["configMapGenerator"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| strs(&g["files"]))
            .collect();
        let ignored = std::fs::read_to_string(dir.join(".gitignore")).unwrap_or_default();
        let ignored: BTreeSet<&str> = ignored
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let present: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "kustomization.yaml" && n != ".gitignore")
            .collect();
        let present: BTreeSet<&str> = present.iter().map(String::as_str).collect();
        let wanted: BTreeSet<&str> = listed.union(&inputs).copied().collect();
        let absent: BTreeSet<&str> = wanted.difference(&present).copied().collect();
        let d = dir.display();
        assert!(
            listed.iter().all(|r| present.contains(r)),
            "{d}: a resource is missing"
        );
        assert_eq!(
            present.difference(&wanted).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "{d}: files that no resource or generator uses"
        );
        // Generated inputs (the trust bundle) are made by the operator and
        // ignored by git; nothing else may be missing.
        assert!(absent.is_subset(&ignored), "{d}: missing {absent:?}");
        assert!(ignored.is_subset(&inputs), "{d}: ignores {ignored:?}");
    }
}

/// `kubectl kustomize` renders the base as its files say, and the example
/// namespace into the two ConfigMaps the injected pods mount.
#[test]
fn kustomize_renders_the_base_and_the_namespace_example() {
    let Some(kubectl) = tools::kubectl() else {
        return;
    };
    let render = |dir: &Path| -> Vec<Value> {
        let out = Command::new(&kubectl)
            .arg("kustomize")
            .arg(dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", dir.display());
        serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap()
    };
    let key = |d: &Value| d["kind"].to_string() + &d["metadata"]["name"].to_string();
    let mut rendered = render(&deploy().join("base"));
    let mut files = base();
    rendered.sort_by_key(key);
    files.sort_by_key(key);
    assert_eq!(rendered, files, "kustomize changes nothing in the base");

    let tmp = tempfile::tempdir().unwrap();
    let example = tmp.path().join("namespace");
    std::fs::create_dir(&example).unwrap();
    for entry in std::fs::read_dir(deploy().join("examples/namespace")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, example.join(path.file_name().unwrap())).unwrap();
    }
    let ca = tmp.path().join("ca").display().to_string();
    let init = ward(&[
        "ca",
        "init",
        "--dir",
        &ca,
        "--trust-domain",
        "cluster.local",
        "--insecure-plaintext-key",
    ]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let bundle = ward(&["ca", "bundle", "--dir", &ca]);
    std::fs::write(example.join("ca.pem"), &bundle.stdout).unwrap();
    let rendered = render(&example);
    let mesh = std::fs::read_to_string(example.join("mesh.yaml")).unwrap();
    let cm = |name: &str| {
        rendered
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no ConfigMap {name} (a hash suffix?)"))
    };
    assert_eq!(cm("ward-mesh")["metadata"]["namespace"], "shop");
    assert_eq!(cm("ward-mesh")["data"]["mesh.yaml"], mesh.as_str());
    let pem = String::from_utf8(bundle.stdout).unwrap();
    assert_eq!(cm("ward-trust-bundle")["data"]["ca.pem"], pem.as_str());
    if let Some(tool) = tools::kubernetes_validate() {
        let all = tmp.path().join("rendered.yaml");
        let out = Command::new(&kubectl)
            .arg("kustomize")
            .arg(&example)
            .output()
            .unwrap();
        std::fs::write(&all, out.stdout).unwrap();
        let out = Command::new(tool)
            .args(["--strict", "--kubernetes-version", "1.33.0"])
            .arg(&all)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn services_and_budgets_select_their_deployments_and_ports() {
    let all = base();
    let deployments: Vec<&Value> = of_kind(&all, "Deployment").collect();
    assert_eq!(deployments.len(), 2);
    let selected = |selector: &Value| -> Vec<&Value> {
        deployments
            .iter()
            .copied()
            .filter(|d| selects(selector, &d["spec"]["template"]["metadata"]["labels"]))
            .collect()
    };
    for d in &deployments {
        let name = &d["metadata"]["name"];
        assert_eq!(
            selected(&d["spec"]["selector"]),
            [*d],
            "{name}: own selector"
        );
        assert!(
            d["spec"]["replicas"].as_u64() >= Some(2),
            "{name}: replicas"
        );
        let spread = &d["spec"]["template"]["spec"]["topologySpreadConstraints"];
        let by_host = spread
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["topologyKey"] == "kubernetes.io/hostname")
            .unwrap_or_else(|| panic!("{name}: no spread over nodes"));
        assert_eq!(by_host["labelSelector"], d["spec"]["selector"]);
        let sa = d["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .unwrap();
        find(&all, "ServiceAccount", sa);
    }
    for svc in of_kind(&all, "Service") {
        let name = &svc["metadata"]["name"];
        let targets = selected(&json!({"matchLabels": svc["spec"]["selector"]}));
        assert_eq!(targets.len(), 1, "Service {name} selects one Deployment");
        let containers = &targets[0]["spec"]["template"]["spec"]["containers"];
        for port in svc["spec"]["ports"].as_array().unwrap() {
            let target = &port["targetPort"];
            let found = containers.as_array().unwrap().iter().any(|c| {
                c["ports"].as_array().unwrap().iter().any(|p| {
                    (p["name"] == *target || p["containerPort"] == *target)
                        && p["protocol"] == port["protocol"]
                })
            });
            assert!(
                found,
                "Service {name}: targetPort {target} is no container port"
            );
        }
    }
    for pdb in of_kind(&all, "PodDisruptionBudget") {
        let targets = selected(&pdb["spec"]["selector"]);
        assert_eq!(targets.len(), 1, "{}", pdb["metadata"]["name"]);
        let replicas = targets[0]["spec"]["replicas"].as_u64().unwrap();
        let max = pdb["spec"]["maxUnavailable"].as_u64().unwrap();
        assert!(
            max >= 1 && max < replicas,
            "drains can proceed, one replica stays"
        );
    }
    // The CA may create TokenReviews, and nothing else.
    let role = find(&all, "ClusterRole", "ward-ca-tokenreview");
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}])
    );
    let binding = find(&all, "ClusterRoleBinding", "ward-ca-tokenreview");
    assert_eq!(binding["roleRef"]["name"], "ward-ca-tokenreview");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "ward-ca", "namespace": "ward-system"}])
    );
    let injector = find(&all, "ServiceAccount", "ward-injector");
    assert_eq!(injector["automountServiceAccountToken"], false);
}

#[test]
fn every_ward_pod_is_hardened() {
    for d in of_kind(&base(), "Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap();
        let pod = &d["spec"]["template"]["spec"];
        let ctx = &pod["securityContext"];
        assert_eq!(ctx["runAsNonRoot"], true, "{name}");
        assert!(ctx["runAsUser"].as_u64() > Some(0), "{name}");
        assert_eq!(
            ctx["fsGroup"], ctx["runAsGroup"],
            "{name}: Secrets readable"
        );
        assert_eq!(ctx["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        for c in pod["containers"].as_array().unwrap() {
            let at = format!("{name}/{}", c["name"]);
            assert_eq!(
                c["image"],
                ward::inject::DEFAULT_IMAGE,
                "{at}: the image ward injects"
            );
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{at}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{at}");
            assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}), "{at}");
            assert_eq!(sc["runAsNonRoot"], true, "{at}");
            for bound in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    assert!(
                        c["resources"][bound][resource].is_string(),
                        "{at}: {bound}.{resource}"
                    );
                }
            }
            let ports: Vec<&str> = c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["name"].as_str())
                .collect();
            for probe in ["readinessProbe", "livenessProbe"] {
                let get = &c[probe]["httpGet"];
                assert_eq!(
                    get["scheme"], "HTTPS",
                    "{at}: {probe} (the endpoint is TLS)"
                );
                assert_eq!(get["path"], "/healthz", "{at}: {probe}");
                assert!(
                    ports.contains(&get["port"].as_str().unwrap()),
                    "{at}: {probe}"
                );
            }
            for mount in c["volumeMounts"].as_array().unwrap() {
                assert_eq!(mount["readOnly"], true, "{at}: {}", mount["name"]);
            }
        }
        for volume in pod["volumes"].as_array().unwrap() {
            // Owner and group (fsGroup = the ward user) may read; nobody else.
            assert_eq!(
                volume["secret"]["defaultMode"], 0o440,
                "{name}: {}",
                volume["name"]
            );
        }
    }
}

/// The Namespace objects deploy/ ships, with the label the API server adds.
#[test]
fn the_webhook_calls_the_injector_for_opted_in_namespaces_only() {
    let all = base();
    let config = find(&all, "MutatingWebhookConfiguration", "ward-injector");
    let hooks = config["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1);
    let hook = &hooks[0];
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["matchPolicy"], "Equivalent");
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    // Every Pod creation in an opted-in namespace waits on it.
    let timeout = hook["timeoutSeconds"].as_u64().unwrap();
    assert!((1..=5).contains(&timeout), "timeoutSeconds: {timeout}");
    let readme = std::fs::read_to_string(deploy().join("README.md")).unwrap();
    assert!(readme.contains(&format!("`timeoutSeconds: {timeout}`")));
    assert_eq!(
        hook["rules"],
        json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}])
    );
    let svc = &hook["clientConfig"]["service"];
    assert_eq!(svc["path"], ward::injector::MUTATE_PATH);
    let target = find(&all, "Service", svc["name"].as_str().unwrap());
    assert_eq!(target["metadata"]["namespace"], svc["namespace"]);
    assert!(
        target["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["port"] == svc["port"])
    );

    let selector = &hook["namespaceSelector"];
    let ward_system = find(&all, "Namespace", "ward-system");
    assert!(!selects(selector, &namespace_labels(ward_system)));
    let shop = &docs(&deploy().join("examples/namespace/namespace.yaml"))[0];
    assert!(
        selects(selector, &namespace_labels(shop)),
        "the example opts in"
    );
    for never in ["kube-system", "ward-system"] {
        let labels = json!({"kubernetes.io/metadata.name": never, "ward.dev/inject": "enabled"});
        assert!(!selects(selector, &labels), "{never} is never injected");
    }
    assert!(!selects(
        selector,
        &json!({"kubernetes.io/metadata.name": "other"})
    ));
}

#[test]
fn container_args_parse_with_the_real_binary_and_match_the_mounts() {
    let all = base();
    let container =
        |name: &str| &find(&all, "Deployment", name)["spec"]["template"]["spec"]["containers"][0];
    for name in ["ward-ca", "ward-injector"] {
        let c = container(name);
        assert_eq!(c["command"], json!(["ward"]), "{name}");
        let args = strs(&c["args"]);
        // Parsing stops at the first bad flag or value, before --help.
        let out = ward(&[args.clone(), vec!["--help"]].concat());
        assert!(
            out.status.success(),
            "{name}: {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let ca = container("ward-ca");
    let args = strs(&ca["args"]);
    let value = |flag: &str| -> Vec<&str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1])
            .collect()
    };
    let mounts: BTreeMap<&str, &str> = ca["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(value("--dir"), [mounts["ca"]]);
    assert_eq!(
        value("--passphrase-file"),
        [format!("{}/passphrase", mounts["ca-passphrase"]).as_str()]
    );
    assert_eq!(value("--token-audience"), [ward::inject::DEFAULT_AUDIENCE]);
    assert_eq!(value("--authenticator"), ["kubernetes"]);
    // A deleted Pod's SVID outlives it by at most an hour.
    let [ttl] = value("--svid-ttl")[..] else {
        panic!("one --svid-ttl: {args:?}")
    };
    let ttl = ward_config::parse_duration(ttl).unwrap();
    assert!(ttl <= std::time::Duration::from_secs(3600), "{ttl:?}");
    // The proxies dial DEFAULT_CA_URL: its host must be a SAN, its port the Service's.
    let url = ward::inject::DEFAULT_CA_URL
        .strip_prefix("https://")
        .unwrap();
    let (host, port) = url.split_once(':').unwrap();
    assert!(value("--san").contains(&host), "{:?}", value("--san"));
    let svc = find(&all, "Service", "ward-ca");
    assert_eq!(svc["spec"]["ports"][0]["port"].to_string(), port);
    assert_eq!(
        svc["metadata"]["name"].as_str().unwrap(),
        host.split('.').next().unwrap()
    );

    let pod = &find(&all, "Deployment", "ward-ca")["spec"]["template"]["spec"];
    let secret = |volume: &str| {
        let v = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume)
            .unwrap();
        let keys: BTreeSet<&str> = v["secret"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["key"].as_str().unwrap())
            .collect();
        (v["secret"]["secretName"].as_str().unwrap(), keys)
    };
    use ward_ca::store::{INTERMEDIATE_CERT, INTERMEDIATE_KEY, ROOT_CERT, ROOT_KEY, TRUST_BUNDLE};
    let (name, keys) = secret("ca");
    assert_eq!(name, "ward-ca");
    assert_eq!(
        keys,
        BTreeSet::from([ROOT_CERT, INTERMEDIATE_CERT, INTERMEDIATE_KEY, TRUST_BUNDLE])
    );
    assert!(!keys.contains(ROOT_KEY), "the root key stays offline");
    assert_eq!(
        secret("ca-passphrase"),
        ("ward-ca-passphrase", BTreeSet::from(["passphrase"]))
    );

    let injector = container("ward-injector");
    let args = strs(&injector["args"]);
    let flag = |f: &str| args.windows(2).find(|w| w[0] == f).map(|w| w[1]).unwrap();
    assert_eq!(flag("--tls-cert"), "/var/run/ward/tls/tls.crt");
    assert_eq!(flag("--tls-key"), "/var/run/ward/tls/tls.key");
    assert_eq!(
        injector["volumeMounts"][0]["mountPath"],
        "/var/run/ward/tls"
    );
    let listen_port = flag("--listen").rsplit(':').next().unwrap();
    assert_eq!(
        injector["ports"][0]["containerPort"].to_string(),
        listen_port
    );
    let env: BTreeMap<&str, &str> = injector["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    assert_eq!(env["WARD_INJECT_IMAGE"], ward::inject::DEFAULT_IMAGE);
    assert_eq!(
        env["WARD_INJECT_TRUST_DOMAIN"],
        ward::inject::DEFAULT_TRUST_DOMAIN
    );
    assert_eq!(env["WARD_INJECT_CA_URL"], ward::inject::DEFAULT_CA_URL);
    assert_eq!(env["WARD_INJECT_AUDIENCE"], ward::inject::DEFAULT_AUDIENCE);
}

#[test]
fn the_example_policy_checks_clean_and_decides_as_documented() {
    let mesh = deploy().join("examples/namespace/mesh.yaml");
    let mesh = mesh.to_str().unwrap();
    let out = ward(&["policy", "check", mesh]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(": ok (") && text.contains("; 0 warnings)"),
        "{text}"
    );
    let explain = |to: &str, port: &str, extra: &[&str]| {
        let web = "spiffe://cluster.local/ns/shop/sa/web";
        let args = [
            &[
                "policy", "explain", mesh, "--from", web, "--to", to, "--port", port,
            ],
            extra,
        ]
        .concat();
        String::from_utf8_lossy(&ward(&args).stdout).into_owned()
    };
    let get = explain(
        "orders",
        "8080",
        &["--method", "GET", "--path", "/orders/42"],
    );
    assert!(
        get.contains("decision: allow") && get.contains("rule: web-reads-orders"),
        "{get}"
    );
    // mode: audit: what enforce would deny passes, counted as audit_deny.
    let delete = explain(
        "orders",
        "8080",
        &["--method", "DELETE", "--path", "/orders/42"],
    );
    assert!(delete.contains("decision: audit_deny"), "{delete}");
    let db = explain("db", "5432", &[]);
    assert!(
        db.contains("audit_deny") && db.contains("web-never-db"),
        "{db}"
    );
}

/// SPIFFE IDs anywhere in a mesh file.
fn spiffe_ids(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) if s.starts_with("spiffe://") => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| spiffe_ids(v, out)),
        Value::Object(fields) => fields.values().for_each(|v| spiffe_ids(v, out)),
        _ => {}
    }
}

/// A sidecar's identity names its Pod's ServiceAccount: the example ships
/// one for each identity its mesh file gives the namespace, and no other.
#[test]
fn every_identity_of_the_example_mesh_has_its_service_account() {
    let dir = deploy().join("examples/namespace");
    let namespace = docs(&dir.join("kustomization.yaml"))[0]["namespace"]
        .as_str()
        .unwrap()
        .to_string();
    let mut accounts = BTreeSet::new();
    for sa in resources(&dir).iter().flat_map(|f| docs(f)) {
        if sa["kind"] != "ServiceAccount" {
            continue;
        }
        let ns = &sa["metadata"]["namespace"];
        assert!(ns.is_null() || *ns == namespace.as_str(), "{sa}");
        assert_eq!(sa["automountServiceAccountToken"], false, "{sa}");
        accounts.insert(sa["metadata"]["name"].as_str().unwrap().to_string());
    }
    let mesh = &docs(&dir.join("mesh.yaml"))[0];
    let prefix = format!(
        "spiffe://{}/ns/{namespace}/sa/",
        ward::inject::DEFAULT_TRUST_DOMAIN
    );
    for (name, service) in mesh["services"].as_object().unwrap() {
        let id = service["identity"].as_str().unwrap();
        assert!(id.starts_with(&prefix), "{name}: {id}");
    }
    let mut ids = Vec::new();
    spiffe_ids(mesh, &mut ids);
    let own: BTreeSet<String> = ids
        .iter()
        .filter_map(|id| id.strip_prefix(&prefix))
        .map(String::from)
        .collect();
    assert_eq!(accounts, own);
}
