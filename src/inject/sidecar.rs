//! What injection adds to a pod, as data: the `ward-init` container, the
//! `ward-proxy` native sidecar and their volumes. Kept as `json!` literals
//! so a reviewer reads the pod spec itself, with the reasons next to it.
//! docs/inject.md explains each security setting.

use serde_json::{Value, json};

use super::Config;
use super::annotations::PodOptions;

pub(super) const INIT: &str = "ward-init";
pub(super) const PROXY: &str = "ward-proxy";
/// Container names ward owns in an injected pod.
pub(super) const CONTAINERS: [&str; 2] = [INIT, PROXY];
/// Volume names ward owns in an injected pod.
pub(super) const VOLUMES: [&str; 4] = ["ward-token", "ward-bundle", "ward-mesh", "ward-run"];

/// The admin port: probes and Prometheus. `ward init` never redirects it.
pub(super) const ADMIN_PORT: u16 = 15020;

const TOKEN_DIR: &str = "/var/run/ward/token";
const BUNDLE_DIR: &str = "/var/run/ward/bundle";
const MESH_DIR: &str = "/etc/ward/mesh";

/// Pod annotations that let a stock Prometheus scrape the sidecar.
pub(super) fn prometheus_annotations() -> [(&'static str, String); 3] {
    [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", ADMIN_PORT.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
    ]
}

/// `ward init`: programs the pod's iptables once, before anything else runs.
pub(super) fn init_container(config: &Config, options: &PodOptions) -> Value {
    let s = &options.intercept;
    let mut args = vec![
        "init".to_string(),
        "--inbound-port".to_string(),
        s.inbound_port.to_string(),
        "--outbound-port".to_string(),
        s.outbound_port.to_string(),
        "--admin-port".to_string(),
        s.admin_port.to_string(),
        "--proxy-uid".to_string(),
        s.proxy_uid.to_string(),
    ];
    let join = |items: Vec<String>| items.join(",");
    let exclusions = [
        (
            "--exclude-inbound-ports",
            join(s.exclude_inbound_ports.iter().map(u16::to_string).collect()),
        ),
        (
            "--exclude-outbound-ports",
            join(
                s.exclude_outbound_ports
                    .iter()
                    .map(u16::to_string)
                    .collect(),
            ),
        ),
        (
            "--exclude-outbound-cidrs",
            join(
                s.exclude_outbound_cidrs
                    .iter()
                    .map(|c| c.to_string())
                    .collect(),
            ),
        ),
    ];
    for (flag, value) in exclusions {
        if !value.is_empty() {
            args.extend([flag.to_string(), value]);
        }
    }
    json!({
        "name": INIT,
        "image": config.image(),
        "imagePullPolicy": "IfNotPresent",
        "command": ["ward"],
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        // iptables-legacy takes its lock in /run; the root stays read-only.
        "volumeMounts": [{"name": "ward-run", "mountPath": "/run"}],
        "securityContext": {
            // Root in the pod's network namespace with exactly the two
            // capabilities iptables needs (NET_RAW: legacy iptables talks to
            // the kernel through a raw socket), nothing else.
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    })
}

/// `ward proxy --transparent` as a native sidecar (an init container with
/// `restartPolicy: Always`): it starts before the app's init containers and
/// containers, and stops after them.
pub(super) fn proxy_container(config: &Config, options: &PodOptions) -> Value {
    let s = &options.intercept;
    let r = &options.resources;
    // Kubernetes expands $(VAR) in args from the container's env, so the
    // identity always names the namespace and service account the pod
    // really runs as, even when the manifest names no namespace.
    let identity = format!(
        "spiffe://{}/ns/$(WARD_POD_NAMESPACE)/sa/$(WARD_SERVICE_ACCOUNT)",
        config.trust_domain()
    );
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": ADMIN_PORT},
            "periodSeconds": period,
            "timeoutSeconds": 1,
            "failureThreshold": failures,
        })
    };
    json!({
        "name": PROXY,
        "image": config.image(),
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "command": ["ward"],
        "args": [
            "proxy",
            "--transparent",
            "--identity", identity,
            "--ca", config.ca_url(),
            "--ca-bundle", format!("{BUNDLE_DIR}/ca.pem"),
            "--token-file", format!("{TOKEN_DIR}/token"),
            "--mesh", format!("{MESH_DIR}/mesh.yaml"),
            "--admin", format!("0.0.0.0:{ADMIN_PORT}"),
            "--inbound-port", s.inbound_port.to_string(),
            "--outbound-port", s.outbound_port.to_string(),
            "--egress", options.egress.as_str(),
        ],
        "env": [
            {"name": "WARD_POD_NAMESPACE",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "WARD_SERVICE_ACCOUNT",
             "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "WARD_LOG_FORMAT", "value": "json"},
        ],
        "ports": [{"name": "ward-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": r.cpu_request, "memory": r.memory_request},
            "limits": {"cpu": r.cpu_limit, "memory": r.memory_limit},
        },
        // The app starts only once the proxy holds an SVID (2 minutes at most),
        // so its first connections do not fail.
        "startupProbe": probe("/ready", 1, 120),
        "readinessProbe": probe("/ready", 5, 3),
        "livenessProbe": probe("/live", 10, 3),
        "volumeMounts": [
            {"name": "ward-token", "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": "ward-bundle", "mountPath": BUNDLE_DIR, "readOnly": true},
            {"name": "ward-mesh", "mountPath": MESH_DIR, "readOnly": true},
        ],
        "securityContext": {
            // The UID `ward init` exempts from redirection.
            "runAsUser": s.proxy_uid,
            "runAsGroup": s.proxy_uid,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    })
}

/// The volumes both containers mount. Directories, not `subPath`, so that
/// ConfigMap updates reach the proxy (it reloads the mesh file on change).
pub(super) fn volumes(config: &Config) -> [Value; 4] {
    [
        json!({
            "name": "ward-token",
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": config.audience(),
                "expirationSeconds": 3600,
                "path": "token",
            }}]},
        }),
        json!({
            "name": "ward-bundle",
            "configMap": {"name": "ward-trust-bundle", "items": [{"key": "ca.pem", "path": "ca.pem"}]},
        }),
        json!({
            "name": "ward-mesh",
            "configMap": {"name": "ward-mesh", "items": [{"key": "mesh.yaml", "path": "mesh.yaml"}]},
        }),
        json!({"name": "ward-run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
    ]
}
