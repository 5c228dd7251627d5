//! Injection on hand-built objects: every kind, the annotations, the
//! refusals, idempotence, and the YAML stream around it.

use serde_json::{Value, json};
use ward_proxy::settings::Egress;

use super::manifests::{ManifestError, inject_manifests};
use super::{Config, InjectError, Outcome, SkipReason, inject};

fn pod_spec() -> Value {
    json!({"containers": [{"name": "app", "image": "example/app:1", "ports": [{"containerPort": 8080}]}]})
}

fn template(annotations: Value) -> Value {
    json!({
        "metadata": {"labels": {"app": "web"}, "annotations": annotations},
        "spec": pod_spec(),
    })
}

fn deployment(annotations: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": template(annotations),
        },
    })
}

fn injected(object: &Value) -> Value {
    match inject(&Config::default(), object) {
        Ok(Outcome::Injected { object, .. }) => object,
        other => panic!("expected injection, got {other:?}"),
    }
}

fn error(object: &Value) -> String {
    match inject(&Config::default(), object) {
        Err(e) => e.to_string(),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|l| l.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

fn container<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    pod_spec["initContainers"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no init container {name} in {pod_spec}"))
}

fn args(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn every_workload_kind_gets_the_sidecar_in_its_pod_template() {
    let cases = [
        ("v1", "Pod", ""),
        ("apps/v1", "Deployment", "/spec/template"),
        ("apps/v1", "StatefulSet", "/spec/template"),
        ("apps/v1", "DaemonSet", "/spec/template"),
        ("apps/v1", "ReplicaSet", "/spec/template"),
        ("batch/v1", "Job", "/spec/template"),
        ("batch/v1", "CronJob", "/spec/jobTemplate/spec/template"),
    ];
    for (api_version, kind, path) in cases {
        let mut object =
            json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}});
        match path {
            "" => object["spec"] = pod_spec(),
            "/spec/template" => object["spec"] = json!({"template": template(json!({}))}),
            _ => {
                object["spec"] = json!({"schedule": "* * * * *",
                    "jobTemplate": {"spec": {"template": template(json!({}))}}})
            }
        }
        let out = injected(&object);
        let pod = out.pointer(path).unwrap();
        assert_eq!(
            names(&pod["spec"]["initContainers"]),
            ["ward-init", "ward-proxy"],
            "{kind}"
        );
        assert_eq!(names(&pod["spec"]["containers"]), ["app"], "{kind}");
        assert_eq!(
            names(&pod["spec"]["volumes"]),
            ["ward-token", "ward-bundle", "ward-mesh", "ward-run"],
            "{kind}"
        );
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(annotations["ward.dev/injected"], env!("CARGO_PKG_VERSION"));
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], "15020");
        assert_eq!(annotations["prometheus.io/path"], "/metrics");
    }
}

#[test]
fn other_kinds_and_other_groups_are_not_touched() {
    for object in [
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}),
        json!({"apiVersion": "example.com/v1", "kind": "Deployment", "spec": {"template": template(json!({}))}}),
        json!(["a", "list"]),
        json!("text"),
        json!({"no": "kind"}),
    ] {
        assert_eq!(
            inject(&Config::default(), &object),
            Ok(Outcome::Skipped(SkipReason::NotAWorkload))
        );
    }
}

#[test]
fn the_proxy_is_a_hardened_native_sidecar() {
    let out = injected(&deployment(json!({})));
    let spec = &out["spec"]["template"]["spec"];
    let proxy = container(spec, "ward-proxy");
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["image"], super::DEFAULT_IMAGE);
    assert_eq!(proxy["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        args(proxy),
        [
            "proxy",
            "--transparent",
            "--identity",
            "spiffe://cluster.local/ns/$(WARD_POD_NAMESPACE)/sa/$(WARD_SERVICE_ACCOUNT)",
            "--ca",
            "https://ward-ca.ward-system.svc:8443",
            "--ca-bundle",
            "/var/run/ward/bundle/ca.pem",
            "--token-file",
            "/var/run/ward/token/token",
            "--mesh",
            "/etc/ward/mesh/mesh.yaml",
            "--admin",
            "0.0.0.0:15020",
            "--inbound-port",
            "15006",
            "--outbound-port",
            "15001",
            "--egress",
            "deny",
        ]
    );
    let env = &proxy["env"];
    assert_eq!(
        env[0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env[1]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.serviceAccountName"
    );
    assert_eq!(
        proxy["securityContext"],
        json!({
            "runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": true,
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    assert_eq!(
        proxy["resources"],
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}})
    );
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["livenessProbe"]["httpGet"]["path"], "/live");
    assert_eq!(proxy["livenessProbe"]["httpGet"]["port"], 15020);
    assert_eq!(
        proxy["ports"],
        json!([{"name": "ward-admin", "containerPort": 15020, "protocol": "TCP"}])
    );
    let mounts = proxy["volumeMounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 3);
    assert!(mounts.iter().all(|m| m["readOnly"] == true));

    let init = container(spec, "ward-init");
    assert!(init.get("restartPolicy").is_none());
    let sc = &init["securityContext"];
    assert_eq!(
        sc["capabilities"],
        json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]})
    );
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["runAsNonRoot"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        args(init),
        [
            "init",
            "--inbound-port",
            "15006",
            "--outbound-port",
            "15001",
            "--admin-port",
            "15020",
            "--proxy-uid",
            "1337"
        ]
    );

    let token = &spec["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(
        *token,
        json!({"audience": "ward", "expirationSeconds": 3600, "path": "token"})
    );
    assert_eq!(spec["volumes"][1]["configMap"]["name"], "ward-trust-bundle");
    assert_eq!(spec["volumes"][2]["configMap"]["name"], "ward-mesh");
}

#[test]
fn flags_reach_the_pod_spec() {
    let config = Config::new(
        "registry.local/ward:dev",
        "prod.example",
        "https://ca.example:9443",
        "ward-prod",
        Egress::Passthrough,
    )
    .unwrap();
    let Ok(Outcome::Injected { object, .. }) = inject(&config, &deployment(json!({}))) else {
        panic!("not injected");
    };
    let spec = &object["spec"]["template"]["spec"];
    let proxy = container(spec, "ward-proxy");
    assert_eq!(proxy["image"], "registry.local/ward:dev");
    assert_eq!(
        container(spec, "ward-init")["image"],
        "registry.local/ward:dev"
    );
    let a = args(proxy);
    assert_eq!(
        a[3],
        "spiffe://prod.example/ns/$(WARD_POD_NAMESPACE)/sa/$(WARD_SERVICE_ACCOUNT)"
    );
    assert_eq!(a[5], "https://ca.example:9443");
    assert_eq!(a[a.len() - 2..], ["--egress", "passthrough"]);
    assert_eq!(
        spec["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "ward-prod"
    );
    let new = |image, trust_domain, ca_url, audience| {
        Config::new(image, trust_domain, ca_url, audience, Egress::Deny)
    };
    for (bad, field) in [
        (new("", "a", "https://x", "w"), "--image"),
        (new("i", "Bad_Domain!", "https://x", "w"), "--trust-domain"),
        (new("i", "a", "http://x", "w"), "--ca-url"),
        (new("i", "a", "https://", "w"), "--ca-url"),
        (new("i", "a", "https://x", ""), "--audience"),
    ] {
        assert!(bad.unwrap_err().to_string().starts_with(field), "{field}");
    }
}

#[test]
fn injecting_twice_is_injecting_once() {
    let once = injected(&deployment(json!({"ward.dev/exclude-inbound-ports": "22"})));
    assert_eq!(inject(&Config::default(), &once), Ok(Outcome::Unchanged));
    let pod =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod_spec()});
    let once = injected(&pod);
    assert_eq!(inject(&Config::default(), &once), Ok(Outcome::Unchanged));
}

#[test]
fn a_reinjection_with_other_settings_replaces_the_old_sidecar() {
    let once = injected(&deployment(json!({})));
    let other = Config::new(
        "ward:next",
        "cluster.local",
        super::DEFAULT_CA_URL,
        "ward",
        Egress::Passthrough,
    )
    .unwrap();
    let Ok(Outcome::Injected { object: twice, .. }) = inject(&other, &once) else {
        panic!("not re-injected");
    };
    let spec = &twice["spec"]["template"]["spec"];
    assert_eq!(names(&spec["initContainers"]), ["ward-init", "ward-proxy"]);
    assert_eq!(names(&spec["volumes"]).len(), 4);
    let proxy = args(container(spec, "ward-proxy"));
    assert_eq!(proxy[proxy.len() - 2..], ["--egress", "passthrough"]);
    assert_eq!(container(spec, "ward-proxy")["image"], "ward:next");
    // And back: the same as a fresh injection.
    assert_eq!(injected(&twice), once);
}

#[test]
fn existing_init_containers_run_after_ward_init_and_the_proxy() {
    let mut object = deployment(json!({}));
    object["spec"]["template"]["spec"]["initContainers"] =
        json!([{"name": "migrate", "image": "example/migrate:1"}]);
    object["spec"]["template"]["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let out = injected(&object);
    let spec = &out["spec"]["template"]["spec"];
    assert_eq!(
        names(&spec["initContainers"]),
        ["ward-init", "ward-proxy", "migrate"]
    );
    assert_eq!(
        names(&spec["volumes"]),
        ["data", "ward-token", "ward-bundle", "ward-mesh", "ward-run"]
    );
}

#[test]
fn opting_out_and_host_network_leave_the_object_alone() {
    let out = inject(
        &Config::default(),
        &deployment(json!({"ward.dev/inject": "false", "ward.dev/exclude-inbound-ports": "bad"})),
    );
    assert_eq!(out, Ok(Outcome::Skipped(SkipReason::OptedOut)));
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"hostNetwork": true, "containers": []}});
    let out = inject(&Config::default(), &pod);
    assert_eq!(out, Ok(Outcome::Skipped(SkipReason::HostNetwork)));
    assert!(SkipReason::HostNetwork.is_warning());
    // A Pod's own annotations count.
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "annotations": {"ward.dev/inject": "false"}}, "spec": pod_spec()});
    assert_eq!(
        inject(&Config::default(), &pod),
        Ok(Outcome::Skipped(SkipReason::OptedOut))
    );
    // An explicit "true" injects.
    injected(&deployment(json!({"ward.dev/inject": "true"})));
}

#[test]
fn annotations_set_exclusions_and_resources() {
    let out = injected(&deployment(json!({
        "ward.dev/exclude-inbound-ports": "9100, 22,22",
        "ward.dev/exclude-outbound-ports": "5432",
        "ward.dev/exclude-outbound-cidrs": "fd00::/8,169.254.169.254",
        "ward.dev/proxy-cpu-request": "100m",
        "ward.dev/proxy-memory-request": "128Mi",
        "ward.dev/proxy-cpu-limit": "2",
        "ward.dev/proxy-memory-limit": "1Gi",
    })));
    let spec = &out["spec"]["template"]["spec"];
    let init_args = args(container(spec, "ward-init"));
    assert_eq!(
        init_args[9..],
        [
            "--exclude-inbound-ports",
            "22,9100",
            "--exclude-outbound-ports",
            "5432",
            "--exclude-outbound-cidrs",
            "169.254.169.254/32,fd00::/8",
        ]
    );
    assert_eq!(
        container(spec, "ward-proxy")["resources"],
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}})
    );
}

/// The proxy's `--egress` value in an injected deployment.
fn egress_of(object: &Value) -> &str {
    let proxy = args(container(&object["spec"]["template"]["spec"], "ward-proxy"));
    match proxy.windows(2).find(|w| w[0] == "--egress") {
        Some(w) => w[1],
        None => panic!("no --egress in {proxy:?}"),
    }
}

#[test]
fn egress_comes_from_the_flag_unless_the_pod_says_otherwise() {
    let passthrough = Config::new(
        super::DEFAULT_IMAGE,
        super::DEFAULT_TRUST_DOMAIN,
        super::DEFAULT_CA_URL,
        super::DEFAULT_AUDIENCE,
        Egress::Passthrough,
    )
    .unwrap();
    let inject_with =
        |config: &Config, annotations: Value| match inject(config, &deployment(annotations)) {
            Ok(Outcome::Injected { object, .. }) => object,
            other => panic!("expected injection, got {other:?}"),
        };
    let cases = [
        (&Config::default(), json!({}), "deny"),
        (&passthrough, json!({}), "passthrough"),
        (
            &Config::default(),
            json!({"ward.dev/egress": "passthrough"}),
            "passthrough",
        ),
        (&passthrough, json!({"ward.dev/egress": "deny"}), "deny"),
    ];
    for (config, annotations, expected) in cases {
        let once = inject_with(config, annotations.clone());
        assert_eq!(egress_of(&once), expected, "{annotations} {config:?}");
        assert_eq!(
            inject(config, &once),
            Ok(Outcome::Unchanged),
            "{annotations}"
        );
    }
    // The pod's own choice stays on the pod, so it outlives a change of the
    // default; without one, re-injecting with the other default updates it.
    let pinned = inject_with(&passthrough, json!({"ward.dev/egress": "passthrough"}));
    assert_eq!(inject(&Config::default(), &pinned), Ok(Outcome::Unchanged));
    let unpinned = inject_with(&passthrough, json!({}));
    match inject(&Config::default(), &unpinned) {
        Ok(Outcome::Injected { object, .. }) => assert_eq!(egress_of(&object), "deny"),
        other => panic!("expected re-injection, got {other:?}"),
    }
    // The ward-init container is the same either way: egress is the proxy's.
    let init = |object: &Value| container(&object["spec"]["template"]["spec"], "ward-init").clone();
    assert_eq!(
        init(&inject_with(&passthrough, json!({}))),
        init(&injected(&deployment(json!({}))))
    );
}

#[test]
fn bad_annotations_are_refused_with_a_reason() {
    let cases = [
        (
            json!({"ward.dev/exclude-inbound-ports": "22,ssh"}),
            "annotation ward.dev/exclude-inbound-ports: \"22,ssh\": \"ssh\" is not a port",
        ),
        (
            json!({"ward.dev/exclude-outbound-ports": "0"}),
            "annotation ward.dev/exclude-outbound-ports: \"0\": ports must be from 1 to 65535",
        ),
        (
            json!({"ward.dev/exclude-outbound-cidrs": "10.1.0.0/8"}),
            "did you mean 10.0.0.0/8?",
        ),
        (
            json!({"ward.dev/proxy-memory-limit": "256MB"}),
            "annotation ward.dev/proxy-memory-limit: \"256MB\": \"256MB\" is not a Kubernetes quantity",
        ),
        (
            json!({"ward.dev/proxy-cpu-request": "2"}),
            "the proxy's cpu request 2 is more than its limit 1",
        ),
        (
            json!({"ward.dev/egress": "allow"}),
            "annotation ward.dev/egress: \"allow\": must be \"deny\" or \"passthrough\"",
        ),
        (
            json!({"ward.dev/egress": "Passthrough"}),
            "annotation ward.dev/egress: \"Passthrough\": must be \"deny\" or \"passthrough\"",
        ),
        (
            json!({"ward.dev/egress": true}),
            "annotation ward.dev/egress must be a string",
        ),
        (
            json!({"ward.dev/inject": "no"}),
            "annotation ward.dev/inject: \"no\": must be \"true\" or \"false\"",
        ),
        (
            json!({"ward.dev/inject": false}),
            "annotation ward.dev/inject must be a string",
        ),
        (
            json!({"ward.dev/exclude-inbound-port": "22"}),
            "unknown annotation ward.dev/exclude-inbound-port; ward reads ward.dev/inject",
        ),
    ];
    for (annotations, expected) in cases {
        let message = error(&deployment(annotations));
        assert!(message.contains(expected), "{message}\nwanted: {expected}");
    }
}

#[test]
fn malformed_objects_and_clashes_are_refused() {
    let mut object = deployment(json!({}));
    object["spec"]["template"]["spec"]["volumes"] = json!({"not": "a list"});
    assert_eq!(error(&object), "spec.template.spec.volumes must be a list");
    let mut object = deployment(json!({}));
    object["spec"]["template"]["metadata"]["annotations"] = json!(["x"]);
    assert_eq!(
        error(&object),
        "spec.template.metadata.annotations must be a map"
    );
    let object = json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {}});
    assert_eq!(
        inject(&Config::default(), &object),
        Err(InjectError::Missing {
            kind: "Deployment".into(),
            field: "spec.template".into()
        })
    );
    let mut object = deployment(json!({}));
    object["spec"]["template"]["spec"]["containers"][0]["ports"] =
        json!([{"containerPort": 15020}]);
    assert!(error(&object).contains("container app uses port 15020"));
    let mut object = deployment(json!({}));
    object["spec"]["template"]["spec"]["containers"][0]["name"] = json!("ward-proxy");
    assert!(error(&object).contains("already has a container named \"ward-proxy\""));
}

#[test]
fn an_app_running_as_the_proxy_uid_is_warned_about() {
    let mut object = deployment(json!({}));
    object["spec"]["template"]["spec"]["securityContext"] = json!({"runAsUser": 1337});
    let Ok(Outcome::Injected { warnings, .. }) = inject(&Config::default(), &object) else {
        panic!("not injected");
    };
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("container app runs as UID 1337"));
}

#[test]
fn existing_prometheus_annotations_are_kept_with_a_warning() {
    let object = deployment(json!({"prometheus.io/port": "8080"}));
    let Ok(Outcome::Injected { object, warnings }) = inject(&Config::default(), &object) else {
        panic!("not injected");
    };
    assert_eq!(
        object["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
        "8080"
    );
    assert!(
        warnings[0].contains("prometheus.io/port: \"8080\""),
        "{warnings:?}"
    );
}

const STREAM: &str = "\
# a Service, a Deployment, an unknown kind, a List
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: example/web:1
        volumeMounts: [{name: cfg, mountPath: /cfg}]
      volumes:
      - name: cfg
        configMap: {name: web, defaultMode: 0644}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
zeta: 1
alpha: {yes_string: \"yes\", number_string: \"15020\"}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: p}
  spec:
    containers: [{name: app, image: example/app:1}]
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: c}
  data: {k: v}
";

fn parse(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(yaml).unwrap()
}

#[test]
fn a_stream_keeps_its_documents_order_and_unknown_kinds() {
    let out = inject_manifests(&Config::default(), STREAM).unwrap();
    let docs = parse(&out.yaml);
    assert_eq!(docs.len(), 4);
    let input = parse(STREAM);
    assert_eq!(docs[0], input[0]);
    assert_eq!(docs[2], input[2]);
    // Key order survives, and strings that look like other scalars stay strings.
    let widget: Vec<&String> = docs[2].as_object().unwrap().keys().collect();
    assert_eq!(widget, ["apiVersion", "kind", "metadata", "zeta", "alpha"]);
    assert_eq!(docs[2]["alpha"]["yes_string"], "yes");
    assert_eq!(docs[2]["alpha"]["number_string"], "15020");
    // YAML 1.1 octal, as Kubernetes reads it.
    assert_eq!(
        docs[1]["spec"]["template"]["spec"]["volumes"][0]["configMap"]["defaultMode"],
        0o644
    );
    assert_eq!(
        names(&docs[1]["spec"]["template"]["spec"]["initContainers"]),
        ["ward-init", "ward-proxy"]
    );
    let items = &docs[3]["items"];
    assert_eq!(
        names(&items[0]["spec"]["initContainers"]),
        ["ward-init", "ward-proxy"]
    );
    assert_eq!(items[1], input[3]["items"][1]);
    let notes: Vec<String> = out
        .notes
        .iter()
        .map(|n| format!("{}: {}: {}", n.place, n.object, n.message))
        .collect();
    assert_eq!(
        notes,
        [
            "document 2 (line 8): Deployment shop/web: injected",
            "document 4 (line 33), List item 1: Pod p: injected",
        ]
    );
    // And the whole stream is idempotent, byte for byte.
    let twice = inject_manifests(&Config::default(), &out.yaml).unwrap();
    assert_eq!(twice.yaml, out.yaml);
}

#[test]
fn errors_name_the_document_and_position() {
    let yaml = "a: 1\n---\n---\nb: [1, 2\nc: 3\n";
    let Err(ManifestError::Yaml {
        document,
        line,
        column,
        ..
    }) = inject_manifests(&Config::default(), yaml)
    else {
        panic!("expected a YAML error");
    };
    assert_eq!((document, line, column), (3, 5, 2));

    let dup = "kind: A\n---\nkind: B\nkind: C\n";
    let message = inject_manifests(&Config::default(), dup)
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("document 2, line 4, column 1: duplicate mapping key"),
        "{message}"
    );

    let bad = STREAM.replace(
        "      labels: {app: web}\n",
        "      labels: {app: web}\n      annotations: {ward.dev/exclude-outbound-ports: \"x\"}\n",
    );
    let message = inject_manifests(&Config::default(), &bad)
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with(
            "document 2 (line 8): Deployment shop/web: annotation ward.dev/exclude-outbound-ports"
        ),
        "{message}"
    );
}

#[test]
fn hostile_input_hits_a_budget_not_the_stack() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(inject_manifests(&Config::default(), &deep).is_err());
    let deep_block: String = (0..500).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
    assert!(inject_manifests(&Config::default(), &deep_block).is_err());
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n\
                b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n\
                d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n\
                f: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
    assert!(inject_manifests(&Config::default(), bomb).is_err());
    assert!(inject_manifests(&Config::default(), "!include /etc/passwd\n").is_err());
    assert_eq!(inject_manifests(&Config::default(), "").unwrap().yaml, "");
}
