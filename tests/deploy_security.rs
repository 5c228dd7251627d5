//! deploy/'s guards, checked offline: the ValidatingAdmissionPolicy that
//! keeps ward's Secrets to their ServiceAccounts (its CEL evaluated on
//! sample Pods), and the Pod Security levels of ward's and injected Pods.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde_json::{Value, json};
use support::deploy::*;
use support::tools;

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
