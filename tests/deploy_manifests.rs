//! deploy/'s Kubernetes manifests, checked offline: every manifest against
//! the Kubernetes schemas (kubernetes-validate --strict), kustomizations
//! that list exactly their files, the hardening every ward pod must have,
//! and the cross-references a typo would break silently in a cluster
//! (Service selectors and ports, the webhook's Service and path, the CA's
//! and the injector's flags against the real binary).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use support::tools;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The directories under deploy/ holding a kustomization.yaml.
fn kustomization_dirs() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![deploy()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
                found.push(dir.clone());
            }
        }
    }
    found.sort();
    found
}

/// The files a kustomization's `resources` name.
fn resources(dir: &Path) -> Vec<PathBuf> {
    let k = &docs(&dir.join("kustomization.yaml"))[0];
    strs(&k["resources"]).iter().map(|r| dir.join(r)).collect()
}

/// Every manifest under deploy/: the resources of every kustomization.
fn manifests() -> Vec<PathBuf> {
    kustomization_dirs()
        .iter()
        .flat_map(|d| resources(d))
        .collect()
}

fn base() -> Vec<Value> {
    resources(&deploy().join("base"))
        .iter()
        .flat_map(|f| docs(f))
        .collect()
}

fn find<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/base"))
}

fn of_kind<'a>(all: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
    all.iter().filter(move |d| d["kind"] == kind)
}

/// Whether `labels` satisfy a LabelSelector (matchLabels and
/// matchExpressions with In, NotIn, Exists, DoesNotExist).
fn selects(selector: &Value, labels: &Value) -> bool {
    let label = |k: &str| labels[k].as_str();
    let by_label = selector["matchLabels"]
        .as_object()
        .map(|m| m.iter().all(|(k, v)| label(k) == v.as_str()))
        .unwrap_or(true);
    let by_expression = selector["matchExpressions"]
        .as_array()
        .map(|exprs| {
            exprs.iter().all(|e| {
                let key = e["key"].as_str().unwrap();
                let values = strs(&e["values"]);
                match e["operator"].as_str().unwrap() {
                    "In" => label(key).is_some_and(|v| values.contains(&v)),
                    "NotIn" => label(key).is_none_or(|v| !values.contains(&v)),
                    "Exists" => label(key).is_some(),
                    "DoesNotExist" => label(key).is_none(),
                    other => panic!("unknown selector operator {other}"),
                }
            })
        })
        .unwrap_or(true);
    by_label && by_expression
}

fn ward(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(args)
        .output()
        .expect("run ward")
}

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
fn namespace_labels(ns: &Value) -> Value {
    let mut labels = ns["metadata"]["labels"].clone();
    labels["kubernetes.io/metadata.name"] = ns["metadata"]["name"].clone();
    labels
}

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

/// What the API server does with a ValidatingAdmissionPolicy for an object
/// it matches: the variables in order (each visible to the next as
/// `variables.<name>`), then each validation; one that is false denies
/// with its messageExpression, and an error denies too (deploy/'s policy
/// has failurePolicy Fail). The CEL is the `cel` crate's, Kubernetes' is
/// cel-go: the policy keeps to the standard macros both implement.
fn admits(policy: &Value, object: &Value) -> Result<(), String> {
    let eval = |ctx: &cel::Context, expr: &Value| -> Result<cel::Value, String> {
        let expr = expr.as_str().unwrap();
        let program = cel::Program::compile(expr).map_err(|e| format!("{expr}: {e}"))?;
        program.execute(ctx).map_err(|e| format!("{expr}: {e}"))
    };
    let spec = &policy["spec"];
    let mut ctx = cel::Context::default();
    ctx.add_variable("object", object).unwrap();
    let mut variables = HashMap::new();
    for var in spec["variables"].as_array().unwrap() {
        let value = eval(&ctx, &var["expression"])?;
        variables.insert(var["name"].as_str().unwrap().to_string(), value);
        ctx.add_variable_from_value("variables", variables.clone());
    }
    for validation in spec["validations"].as_array().unwrap() {
        match eval(&ctx, &validation["expression"])? {
            cel::Value::Bool(true) => {}
            cel::Value::Bool(false) => {
                return match eval(&ctx, &validation["messageExpression"])? {
                    cel::Value::String(message) => Err(message.to_string()),
                    other => panic!("a message that is no string: {other:?}"),
                };
            }
            other => return Err(format!("a validation that is no bool: {other:?}")),
        }
    }
    Ok(())
}

/// A Pod in ward-system with `spec`, running as ServiceAccount `sa`.
fn ward_system_pod(spec: &Value, sa: &str) -> Value {
    let mut spec = spec.clone();
    spec["serviceAccountName"] = json!(sa);
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "p", "namespace": "ward-system"}, "spec": spec})
}

/// A place in a PodSpec that names a Secret: the fields leading to it
/// (`field[]` a list, `field{}` a map), and the field of the last object
/// that holds the name (none: the last field is the name itself).
#[derive(Debug)]
struct SecretRef {
    path: Vec<String>,
    name_field: Option<&'static str>,
}

impl SecretRef {
    /// A PodSpec that names `secret` here and nowhere else.
    fn spec_naming(&self, secret: &str) -> Value {
        let mut value = match self.name_field {
            Some(field) => json!({ field: secret }),
            None => json!(secret),
        };
        for step in self.path.iter().rev() {
            value = if let Some(field) = step.strip_suffix("[]") {
                json!({ field: [value] })
            } else if let Some(field) = step.strip_suffix("{}") {
                json!({ field: {"key": value} })
            } else {
                json!({ step.as_str(): value })
            };
        }
        value
    }
}

/// String fields whose name says secret but that name no Secret.
const NOT_SECRET_NAMES: [(&str, &str); 1] = [
    // A key ring's path on the node.
    ("io.k8s.api.core.v1.CephFSVolumeSource", "secretFile"),
];

/// Every place a PodSpec names a Secret, from the Kubernetes schemas
/// (`$defs` of kubernetes-validate's `_definitions.json`): the fields
/// whose name says secret or whose type is a Secret reference, through
/// every nested type.
fn secret_references(defs: &Value) -> Vec<SecretRef> {
    fn walk(defs: &Value, ty: &str, path: &mut Vec<String>, out: &mut Vec<SecretRef>) {
        let fields = defs[ty]["properties"].as_object().into_iter().flatten();
        for (field, schema) in fields {
            let (step, target) = if schema["items"].is_object() {
                (format!("{field}[]"), &schema["items"])
            } else if schema["additionalProperties"].is_object() {
                (format!("{field}{{}}"), &schema["additionalProperties"])
            } else {
                (field.clone(), schema)
            };
            let target = target["$ref"]
                .as_str()
                .map(|r| r.rsplit('/').next().unwrap());
            let named = field.to_lowercase().contains("secret")
                || target.is_some_and(|t| t.contains("Secret"));
            path.push(step);
            match target {
                _ if NOT_SECRET_NAMES.contains(&(ty, field.as_str())) => {}
                Some(t) if named => {
                    let holder = ["secretName", "name"]
                        .into_iter()
                        .find(|f| defs[t]["properties"][f].is_object())
                        .unwrap_or_else(|| panic!("{t}: where is the Secret's name?"));
                    out.push(SecretRef {
                        path: path.clone(),
                        name_field: Some(holder),
                    });
                }
                None if named => out.push(SecretRef {
                    path: path.clone(),
                    name_field: None,
                }),
                // Types nest without cycles in a PodSpec; the guard is cheap.
                Some(t) if path.len() < 16 => walk(defs, t, path, out),
                _ => {}
            }
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(
        defs,
        "io.k8s.api.core.v1.PodSpec",
        &mut Vec::new(),
        &mut out,
    );
    out
}

/// deploy/base/secrets-policy.yaml: a Pod in ward-system may name the CA's
/// Secrets only as the CA's ServiceAccount, the webhook's only as the
/// injector's, wherever in the Pod it names them.
#[test]
fn only_their_service_accounts_may_use_wards_secrets() {
    let all = base();
    let policy = find(&all, "ValidatingAdmissionPolicy", "ward-secrets");
    let binding = find(&all, "ValidatingAdmissionPolicyBinding", "ward-secrets");
    assert_eq!(binding["spec"]["policyName"], "ward-secrets");
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    assert!(binding["spec"]["matchResources"].is_null(), "{binding}");
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    let constraints = &policy["spec"]["matchConstraints"];
    assert_eq!(
        constraints["resourceRules"],
        json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                "resources": ["pods", "pods/ephemeralcontainers"], "scope": "Namespaced"}])
    );
    let in_scope = |ns: &Value| selects(&constraints["namespaceSelector"], &namespace_labels(ns));
    assert!(in_scope(find(&all, "Namespace", "ward-system")));
    let shop = &docs(&deploy().join("examples/namespace/namespace.yaml"))[0];
    assert!(
        !in_scope(shop),
        "Secrets of the same names elsewhere are not ward's"
    );

    // What the policy must protect, and for whom: the Secrets each ward
    // Deployment mounts, with its ServiceAccount. Each Pod is admitted, the
    // CA's also with the API token volume the API server adds to it.
    let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
    for d in of_kind(&all, "Deployment") {
        let spec = &d["spec"]["template"]["spec"];
        let sa = spec["serviceAccountName"].as_str().unwrap();
        for volume in spec["volumes"].as_array().unwrap() {
            owners.insert(volume["secret"]["secretName"].as_str().unwrap(), sa);
        }
        let mut pod = ward_system_pod(spec, sa);
        assert_eq!(admits(policy, &pod), Ok(()), "{sa}");
        pod["spec"]["volumes"].as_array_mut().unwrap().push(json!({
            "name": "kube-api-access-x1b2c",
            "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}
        }));
        assert_eq!(admits(policy, &pod), Ok(()), "{sa} with its API token");
    }
    assert_eq!(
        owners.keys().copied().collect::<Vec<_>>(),
        ["ward-ca", "ward-ca-passphrase", "ward-injector-tls"]
    );
    // Under any other ServiceAccount, or none (`default`), they are refused.
    let accounts: BTreeSet<&str> = owners.values().copied().chain(["default"]).collect();
    let volume =
        |secret: &str| json!({"volumes": [{"name": "v", "secret": {"secretName": secret}}]});
    for (secret, owner) in &owners {
        for sa in &accounts {
            let verdict = admits(policy, &ward_system_pod(&volume(secret), sa));
            if sa == owner {
                assert_eq!(verdict, Ok(()), "{secret} as {sa}");
            } else {
                assert_eq!(
                    verdict,
                    Err(format!(
                        "Secret ward-system/{secret} may only be used by Pods running as ServiceAccount {owner}, not {sa}"
                    ))
                );
            }
        }
        let mut unnamed = ward_system_pod(&volume(secret), "x");
        unnamed["spec"]
            .as_object_mut()
            .unwrap()
            .remove("serviceAccountName");
        assert!(
            admits(policy, &unnamed).is_err(),
            "{secret}: no ServiceAccount is `default`"
        );
    }
    assert_eq!(
        admits(policy, &ward_system_pod(&volume("app-config"), "default")),
        Ok(())
    );

    // Every place the Kubernetes schemas let a Pod name a Secret.
    for version in ["1.33.0", "1.37.0"] {
        let Some(schemas) = tools::kubernetes_schemas(version) else {
            return;
        };
        let text = std::fs::read_to_string(schemas.join("_definitions.json")).unwrap();
        let defs: Value = serde_json::from_str(&text).unwrap();
        let places = secret_references(&defs["$defs"]);
        let shown: Vec<String> = places.iter().map(|p| p.path.join(".")).collect();
        for known in [
            "imagePullSecrets[]",
            "volumes[].secret",
            "volumes[].projected.sources[].secret",
            "volumes[].csi.nodePublishSecretRef",
            "containers[].env[].valueFrom.secretKeyRef",
            "initContainers[].envFrom[].secretRef",
            "ephemeralContainers[].env[].valueFrom.secretKeyRef",
        ] {
            assert!(
                shown.iter().any(|s| s == known),
                "{version}: {known} in {shown:?}"
            );
        }
        for place in &places {
            for (secret, owner) in &owners {
                let spec = place.spec_naming(secret);
                let at = format!("{version}: {} naming {secret}", place.path.join("."));
                assert_eq!(
                    admits(policy, &ward_system_pod(&spec, owner)),
                    Ok(()),
                    "{at}"
                );
                let refused = admits(policy, &ward_system_pod(&spec, "default"));
                assert!(refused.is_err(), "{at} is admitted as default");
            }
        }
    }
}

/// Capabilities the baseline Pod Security Standard lets a container add.
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Volume types the restricted Pod Security Standard allows.
const RESTRICTED_VOLUMES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Where a PodSpec breaks a Pod Security Standard level, `baseline` or
/// `restricted`, as Pod Security Admission judges the whole Pod: host
/// namespaces, ports and paths, privileged containers, capabilities,
/// seccomp, and for restricted also volume types, privilege escalation,
/// non-root users. Not AppArmor, SELinux, /proc mounts, sysctls or Windows
/// options, which no Pod here sets.
fn pod_security_violations(level: &str, spec: &Value) -> Vec<String> {
    let restricted = match level {
        "baseline" => false,
        "restricted" => true,
        other => panic!("no level {other}"),
    };
    let mut found = Vec::new();
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[host] == true {
            found.push(format!("pod: {host}"));
        }
    }
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        let at = &volume["name"];
        if volume["hostPath"].is_object() {
            found.push(format!("pod: hostPath volume {at}"));
        }
        if restricted && !RESTRICTED_VOLUMES.iter().any(|t| volume[t].is_object()) {
            found.push(format!("pod: volume {at} of a restricted type"));
        }
    }
    let pod = &spec["securityContext"];
    let containers = ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(|list| spec[list].as_array().into_iter().flatten());
    for c in containers {
        let ctx = &c["securityContext"];
        let mut breaks =
            |what: String| found.push(format!("{}: {what}", c["name"].as_str().unwrap()));
        if ctx["privileged"] == true {
            breaks("privileged".into());
        }
        let added = strs(&ctx["capabilities"]["add"]);
        for cap in &added {
            if !BASELINE_CAPABILITIES.contains(cap) || (restricted && *cap != "NET_BIND_SERVICE") {
                breaks(format!("adds {cap}"));
            }
        }
        let host_ports = c["ports"].as_array().into_iter().flatten();
        for port in host_ports.filter(|p| p["hostPort"].as_u64().is_some_and(|h| h > 0)) {
            breaks(format!("hostPort {}", port["hostPort"]));
        }
        let seccomp = ctx["seccompProfile"]["type"]
            .as_str()
            .or(pod["seccompProfile"]["type"].as_str());
        if seccomp == Some("Unconfined") {
            breaks("seccomp Unconfined".into());
        }
        if !restricted {
            continue;
        }
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            breaks("no seccomp profile".into());
        }
        if ctx["allowPrivilegeEscalation"] != false {
            breaks("allowPrivilegeEscalation not false".into());
        }
        if !strs(&ctx["capabilities"]["drop"]).contains(&"ALL") {
            breaks("does not drop ALL capabilities".into());
        }
        if ctx["runAsNonRoot"]
            .as_bool()
            .or(pod["runAsNonRoot"].as_bool())
            != Some(true)
        {
            breaks("runAsNonRoot not true".into());
        }
        if ctx["runAsUser"].as_u64().or(pod["runAsUser"].as_u64()) == Some(0) {
            breaks("runAsUser 0".into());
        }
    }
    found
}

/// The strictest Pod Security Standard level that admits a PodSpec.
fn strictest_admitting(spec: &Value) -> &'static str {
    ["restricted", "baseline"]
        .into_iter()
        .find(|level| pod_security_violations(level, spec).is_empty())
        .unwrap_or("privileged")
}

/// Pod Security Admission judges Pods after the webhook injected them, per
/// namespace: ward-system's restricted level admits ward's own Pods, and
/// an application namespace must be privileged for ward-init, which the
/// baseline level refuses (it adds NET_ADMIN and NET_RAW) and nothing
/// else in the injected Pod does.
#[test]
fn pod_security_levels_admit_wards_pods_and_injected_ones() {
    let labels = |ns: &Value, mode: &str| {
        ns["metadata"]["labels"][format!("pod-security.kubernetes.io/{mode}")].clone()
    };
    let all = base();
    let ward_system = find(&all, "Namespace", "ward-system");
    assert_eq!(labels(ward_system, "enforce"), "restricted");
    for d in of_kind(&all, "Deployment") {
        let spec = &d["spec"]["template"]["spec"];
        let violations = pod_security_violations("restricted", spec);
        assert_eq!(
            violations,
            Vec::<String>::new(),
            "{}",
            d["metadata"]["name"]
        );
    }

    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/inject/deployment.yaml");
    let out = ward(&["inject", "-f", sample.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected: Value = serde_saphyr::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let spec = &injected["spec"]["template"]["spec"];
    let baseline = pod_security_violations("baseline", spec);
    assert_eq!(
        baseline,
        ["ward-init: adds NET_ADMIN", "ward-init: adds NET_RAW"],
        "only ward-init needs more than baseline"
    );
    let shop = &docs(&deploy().join("examples/namespace/namespace.yaml"))[0];
    assert_eq!(labels(shop, "enforce"), strictest_admitting(spec));
    assert_eq!(labels(shop, "enforce"), "privileged");
    for mode in ["warn", "audit"] {
        assert_eq!(
            labels(shop, mode),
            "restricted",
            "{mode}: the apps' own lacks"
        );
    }
    for mode in ["enforce", "warn", "audit"] {
        assert_eq!(labels(shop, &format!("{mode}-version")), "latest");
    }
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
