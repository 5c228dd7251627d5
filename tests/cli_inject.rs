//! `ward inject` as an operator runs it: on the sample manifests in
//! tests/data/inject/, from a file and from stdin, twice in a row, and on
//! broken input. Optionally checks the output against the Kubernetes
//! schemas with `kubernetes-validate` when it is installed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/inject")
        .join(name)
}

fn ward(args: &[&str], stdin: Option<&str>) -> Output {
    ward_with_env(args, &[], stdin)
}

fn ward_with_env(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(args)
        .env_remove("WARD_INJECT_EGRESS")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ward");
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin.unwrap_or_default().as_bytes())
        .expect("write stdin");
    drop(pipe);
    child.wait_with_output().expect("wait for ward")
}

fn inject_file(name: &str) -> (String, String) {
    let path = sample(name);
    let out = ward(&["inject", "-f", path.to_str().unwrap()], None);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "ward inject {name} failed: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(yaml).expect("ward inject printed valid YAML")
}

fn init_names(pod_spec: &Value) -> Vec<&str> {
    pod_spec["initContainers"]
        .as_array()
        .map(|l| l.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

#[test]
fn a_deployment_gets_the_sidecar_before_its_own_init_containers() {
    let (yaml, stderr) = inject_file("deployment.yaml");
    let docs = documents(&yaml);
    assert_eq!(docs.len(), 1);
    let spec = &docs[0]["spec"]["template"]["spec"];
    assert_eq!(
        init_names(spec),
        ["ward-init", "ward-proxy", "wait-for-orders"]
    );
    assert_eq!(spec["initContainers"][1]["restartPolicy"], "Always");
    assert_eq!(
        spec["initContainers"][1]["resources"]["limits"]["memory"],
        "512Mi"
    );
    assert_eq!(spec["volumes"][0]["configMap"]["defaultMode"], 0o644);
    assert!(
        stderr.contains("document 1 (line 2): Deployment shop/web: injected"),
        "{stderr}"
    );
}

#[test]
fn a_cronjob_is_injected_in_its_job_template() {
    let (yaml, _) = inject_file("cronjob.yaml");
    let docs = documents(&yaml);
    let pod = &docs[0]["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(init_names(&pod["spec"]), ["ward-init", "ward-proxy"]);
    let args = pod["spec"]["initContainers"][0]["args"].as_array().unwrap();
    let tail: Vec<&str> = args[args.len() - 2..]
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(tail, ["--exclude-outbound-ports", "5432"]);
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        "15020"
    );
}

#[test]
fn a_list_has_its_workloads_injected_and_the_rest_kept() {
    let (yaml, _) = inject_file("list.yaml");
    let docs = documents(&yaml);
    let items = docs[0]["items"].as_array().unwrap();
    assert_eq!(
        init_names(&items[0]["spec"]["template"]["spec"]),
        ["ward-init", "ward-proxy"]
    );
    let input = documents(&std::fs::read_to_string(sample("list.yaml")).unwrap());
    assert_eq!(items[1], input[0]["items"][1]);
}

#[test]
fn a_multi_document_stream_keeps_order_skips_and_warns() {
    let (yaml, stderr) = inject_file("multi.yaml");
    let docs = documents(&yaml);
    let input = documents(&std::fs::read_to_string(sample("multi.yaml")).unwrap());
    assert_eq!(docs.len(), 5);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "DaemonSet",
            "Dashboard",
            "Deployment",
            "Job"
        ]
    );
    // hostNetwork, an unknown kind, an opt-out: untouched.
    for i in [0, 1, 2, 4] {
        assert_eq!(docs[i], input[i], "document {}", i + 1);
    }
    assert_eq!(docs[2]["spec"]["enabled"], "yes");
    assert_eq!(
        init_names(&docs[3]["spec"]["template"]["spec"]),
        ["ward-init", "ward-proxy"]
    );
    assert!(
        stderr.contains(
            "multi.yaml: document 2 (line 8): DaemonSet monitoring/node-agent: \
             skipped: hostNetwork: true"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("ward inject: warning: "), "{stderr}");
    assert!(
        stderr.contains("Job shop/migrate: skipped: opted out"),
        "{stderr}"
    );
}

#[test]
fn inject_then_inject_again_is_the_same() {
    for name in ["deployment.yaml", "cronjob.yaml", "list.yaml", "multi.yaml"] {
        let (once, _) = inject_file(name);
        let out = ward(&["inject", "-f", "-"], Some(&once));
        assert!(out.status.success(), "{name}");
        let twice = String::from_utf8(out.stdout).unwrap();
        assert_eq!(twice, once, "{name}: a second injection changed the output");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("already injected; unchanged"),
            "{name}"
        );
    }
}

/// Every injected proxy's `--egress` value, in document order.
fn egress_values(yaml: &str) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) if map.get("name") == Some(&Value::from("ward-proxy")) => {
                let args: Vec<&str> = map["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                let egress = args.windows(2).find(|w| w[0] == "--egress");
                out.push(egress.expect("the proxy has --egress")[1].to_string());
            }
            Value::Object(map) => map.values().for_each(|v| walk(v, out)),
            Value::Array(list) => list.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    documents(yaml).iter().for_each(|d| walk(d, &mut out));
    out
}

#[test]
fn egress_comes_from_the_flag_or_its_variable_unless_the_pod_says_otherwise() {
    let deployment = sample("deployment.yaml");
    let deployment = deployment.to_str().unwrap();
    let cronjob = sample("cronjob.yaml");
    let cronjob = cronjob.to_str().unwrap();
    let egress = |args: &[&str], env: &[(&str, &str)]| {
        let out = ward_with_env(args, env, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?} {env:?}: {stderr}");
        egress_values(&String::from_utf8(out.stdout).unwrap())
    };
    let passthrough = [("WARD_INJECT_EGRESS", "passthrough")];
    assert_eq!(egress(&["inject", "-f", deployment], &[]), ["deny"]);
    assert_eq!(
        egress(
            &["inject", "--egress", "passthrough", "-f", deployment],
            &[]
        ),
        ["passthrough"]
    );
    assert_eq!(
        egress(&["inject", "-f", deployment], &passthrough),
        ["passthrough"]
    );
    // The flag wins over the variable, as for every flag.
    assert_eq!(
        egress(
            &["inject", "--egress", "deny", "-f", deployment],
            &passthrough
        ),
        ["deny"]
    );
    // cronjob.yaml says `ward.dev/egress: passthrough` itself.
    assert_eq!(egress(&["inject", "-f", cronjob], &[]), ["passthrough"]);
    assert_eq!(
        egress(&["inject", "--egress", "deny", "-f", cronjob], &[]),
        ["passthrough"]
    );

    // Injecting twice with the setting is injecting once.
    let out = ward(
        &["inject", "--egress", "passthrough", "-f", deployment],
        None,
    );
    let once = String::from_utf8(out.stdout).unwrap();
    let out = ward(&["inject", "--egress", "passthrough"], Some(&once));
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), once);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already injected; unchanged"));

    // A bad value: the flag is refused with the values it takes; the
    // annotation with the workload, once.
    let out = ward(&["inject", "--egress", "allow"], Some(""));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("[possible values: deny, passthrough]"),
        "{stderr}"
    );
    let bad = std::fs::read_to_string(cronjob)
        .unwrap()
        .replace("ward.dev/egress: passthrough", "ward.dev/egress: allow");
    let out = ward(&["inject"], Some(&bad));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr.trim_end(),
        "error: stdin: document 1 (line 1): CronJob shop/report: annotation \
         ward.dev/egress: \"allow\": must be \"deny\" or \"passthrough\""
    );
}

#[test]
fn stdin_works_like_a_file() {
    let (from_file, _) = inject_file("deployment.yaml");
    let text = std::fs::read_to_string(sample("deployment.yaml")).unwrap();
    let out = ward(&["inject", "-f", "-"], Some(&text));
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), from_file);
    let out = ward(&["inject"], Some(&text));
    assert!(out.status.success(), "stdin is the default");
}

#[test]
fn broken_input_fails_with_the_document_and_position() {
    let broken = "apiVersion: v1\nkind: Service\n---\napiVersion: apps/v1\nkind: Deployment\nspec: [a, b\nx: 1\n";
    let out = ward(&["inject", "-f", "-"], Some(broken));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing is printed on error");
    assert!(
        stderr.starts_with("error: stdin: document 2, line 7, column 2: "),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let bad_annotation = std::fs::read_to_string(sample("cronjob.yaml"))
        .unwrap()
        .replace("\"5432\"", "\"5432,postgres\"");
    let out = ward(&["inject"], Some(&bad_annotation));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "document 1 (line 1): CronJob shop/report: annotation \
             ward.dev/exclude-outbound-ports: \"5432,postgres\": \"postgres\" is not a port"
        ),
        "{stderr}"
    );

    let out = ward(&["inject", "-f", "/nonexistent/ward.yaml"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read /nonexistent/ward.yaml"),
        "{stderr}"
    );
    let out = ward(&["inject", "--trust-domain", "Not Valid"], Some(""));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trust-domain"));
}

/// A Pod with every annotation that changes the sidecar's arguments or
/// resources.
const ANNOTATED_POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: api
  namespace: shop
  annotations:
    ward.dev/exclude-inbound-ports: "22,9090"
    ward.dev/exclude-outbound-ports: "5432"
    ward.dev/exclude-outbound-cidrs: "169.254.169.254,10.96.0.0/12"
    ward.dev/proxy-cpu-request: 100m
    ward.dev/proxy-memory-request: 96Mi
    ward.dev/proxy-cpu-limit: "2"
    ward.dev/proxy-memory-limit: 256Mi
spec:
  serviceAccountName: api
  containers:
  - name: api
    image: example.com/api:1
"#;

/// `args` as the kubelet passes them: each `$(NAME)` of a variable in the
/// container's `env` replaced by its value, a `fieldRef` read from `pod`
/// (the downward API). A reference left over would reach ward verbatim.
fn expand(pod: &Value, container: &Value) -> Vec<String> {
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .map(|env| {
            env.iter()
                .map(|var| {
                    let name = var["name"].as_str().unwrap().to_string();
                    let value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                        Some(path) => pod.pointer(&format!("/{}", path.replace('.', "/"))),
                        None => var.get("value"),
                    };
                    let value = value
                        .and_then(Value::as_str)
                        .unwrap_or_else(|| panic!("{name} has no value in {var}"));
                    (name, value.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let args = container["args"].as_array().expect("args");
    args.iter()
        .map(|arg| {
            let arg = arg.as_str().expect("each arg is a string");
            let expanded = env.iter().fold(arg.to_string(), |arg, (name, value)| {
                arg.replace(&format!("$({name})"), value)
            });
            assert!(!expanded.contains("$("), "unresolved reference in {arg}");
            expanded
        })
        .collect()
}

/// The args `ward inject` gives `ward init` and `ward proxy`, exclusions
/// included, are ones the real binary accepts: parsing stops at the first
/// unknown flag or bad value, before `--help`.
#[test]
fn injected_args_parse_with_the_real_binary() {
    let out = ward(&["inject"], Some(ANNOTATED_POD));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod = &documents(&String::from_utf8(out.stdout).unwrap())[0];
    let containers = pod["spec"]["initContainers"].as_array().unwrap();
    let container = |name: &str| {
        containers
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {containers:?}"))
    };
    let help = |args: &[String]| {
        let mut args = args.to_vec();
        args.push("--help".into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ward(&refs, None)
    };
    for (name, subcommand) in [("ward-init", "init"), ("ward-proxy", "proxy")] {
        let c = container(name);
        assert_eq!(c["command"], serde_json::json!(["ward"]), "{name}");
        let args = expand(pod, c);
        assert_eq!(args[0], subcommand, "{name}");
        let out = help(&args);
        assert!(
            out.status.success(),
            "{name}: {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The check has teeth: a value ward refuses fails it.
        let mut broken = args.clone();
        let port = broken.iter().position(|a| a == "--inbound-port").unwrap();
        broken[port + 1] = "not-a-port".into();
        assert!(!help(&broken).status.success(), "{name}: {broken:?}");
    }
    let init = expand(pod, container("ward-init"));
    for (flag, value) in [
        ("--exclude-inbound-ports", "22,9090"),
        ("--exclude-outbound-ports", "5432"),
        (
            "--exclude-outbound-cidrs",
            "10.96.0.0/12,169.254.169.254/32",
        ),
    ] {
        let at = init.iter().position(|a| a == flag);
        assert_eq!(at.map(|i| init[i + 1].as_str()), Some(value), "{init:?}");
    }
    // clap takes --identity as text; the expanded one must be an SVID's ID.
    let proxy = expand(pod, container("ward-proxy"));
    let at = proxy.iter().position(|a| a == "--identity").unwrap();
    let id = ward_config::SpiffeId::parse(&proxy[at + 1]).expect("a SPIFFE ID");
    assert_eq!(id.as_str(), "spiffe://cluster.local/ns/shop/sa/api");
}

/// Schema validation with `kubernetes-validate` (pip install
/// kubernetes-validate), when installed; otherwise says why it skipped.
#[test]
fn output_matches_the_kubernetes_schemas_when_a_validator_is_installed() {
    let tool = std::env::var("WARD_KUBERNETES_VALIDATE")
        .unwrap_or_else(|_| "kubernetes-validate".to_string());
    let probe = Command::new(&tool).arg("--version").output();
    if !probe.is_ok_and(|o| o.status.success()) {
        let reason = format!(
            "{tool} is not installed (pip install kubernetes-validate, \
             or point WARD_KUBERNETES_VALIDATE at it)"
        );
        // CI installs it and sets this, so there the check cannot be skipped.
        if std::env::var_os("WARD_REQUIRE_K8S_SCHEMA").is_some_and(|v| v == "1") {
            panic!("WARD_REQUIRE_K8S_SCHEMA=1 but {reason}");
        }
        eprintln!("skipping: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for name in ["deployment.yaml", "cronjob.yaml", "list.yaml", "multi.yaml"] {
        let (yaml, _) = inject_file(name);
        let path = dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        // --strict refuses unknown fields; kinds without a schema (the
        // CRD in multi.yaml, List) are a warning, not a failure.
        let out = Command::new(&tool)
            .args(["--strict", "--kubernetes-version", "1.33.0", "--quiet"])
            .arg(&path)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}:\n{report}");
    }
}
