//! Sidecar injection: add ward's init container, its proxy (a native
//! sidecar), their volumes and annotations to a Kubernetes object's pod
//! template.
//!
//! [`inject`] works on one object as `serde_json::Value` and is pure (no
//! files, no clock, no cluster), so that `ward inject` (YAML files, see
//! [`manifests`]) and the admission webhook (`crate::injector`:
//! AdmissionReview in, JSONPatch out) share one code path. Injection is
//! idempotent: an object that already carries ward's sidecar is rebuilt
//! from the same settings and so comes out equal to its input
//! ([`Outcome::Unchanged`]).

mod annotations;
mod config;
pub mod manifests;
mod pod;
mod quantity;
mod sidecar;

#[cfg(test)]
mod tests;

use serde_json::{Map, Value};

pub use annotations::{ANNOTATIONS, INJECT, INJECTED};
pub use config::{
    Config, ConfigError, DEFAULT_AUDIENCE, DEFAULT_CA_URL, DEFAULT_EGRESS, DEFAULT_IMAGE,
    DEFAULT_TRUST_DOMAIN,
};

/// What [`inject`] did with one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The object with ward's sidecar added (or updated to these settings);
    /// `warnings` are things the operator should know but that did not stop
    /// injection.
    Injected {
        object: Value,
        warnings: Vec<String>,
    },
    /// The object already carries exactly what injection would add.
    Unchanged,
    /// Left as it was, on purpose.
    Skipped(SkipReason),
}

/// Why an object was left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Not a kind that holds a pod template (Service, ConfigMap, a CRD...).
    NotAWorkload,
    /// `ward.dev/inject: "false"`.
    OptedOut,
    /// `hostNetwork: true`: `ward init` would rewrite the node's own iptables.
    HostNetwork,
}

impl SkipReason {
    /// True when the operator probably expected injection and should be told.
    pub fn is_warning(&self) -> bool {
        matches!(self, SkipReason::HostNetwork)
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SkipReason::NotAWorkload => "not a workload kind",
            SkipReason::OptedOut => "opted out with ward.dev/inject: \"false\"",
            SkipReason::HostNetwork => {
                "hostNetwork: true, so ward init would change the node's own iptables; \
                 not injected (set ward.dev/inject: \"false\" to silence this)"
            }
        })
    }
}

/// Why an object could not be injected. The caller says which object.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    #[error("{field} is missing; a {kind} needs one to be injected")]
    Missing { kind: String, field: String },
    #[error("{field} must be a {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
    #[error("annotation {name} must be a string (quote it: {name}: \"...\")")]
    AnnotationNotString { name: String },
    #[error("annotation {name}: {value:?}: {reason}")]
    BadAnnotation {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("unknown annotation {name}; ward reads {}", ANNOTATIONS.join(", "))]
    UnknownAnnotation { name: String },
    #[error(
        "the pod already has a {what} named {name:?} but no {INJECTED} annotation: \
         ward reserves that name for its sidecar; rename yours"
    )]
    ReservedName { what: &'static str, name: String },
    #[error(
        "{field}: container {container} uses port {port}, which ward's sidecar needs \
         (the pod's containers share one network namespace)"
    )]
    PortClash {
        field: String,
        container: String,
        port: u16,
    },
    #[error(
        "the proxy's {resource} request {request} is more than its limit {limit} \
         (set ward.dev/proxy-{resource}-limit too)"
    )]
    RequestAboveLimit {
        resource: &'static str,
        request: String,
        limit: String,
    },
}

/// Adds ward's sidecar to one object, if it is a workload that wants it.
pub fn inject(config: &Config, object: &Value) -> Result<Outcome, InjectError> {
    match template_path(object) {
        Some((kind, template_path)) => inject_template(config, object, kind, template_path),
        None => Ok(Outcome::Skipped(SkipReason::NotAWorkload)),
    }
}

/// Adds ward's sidecar to `object` as a Pod, whatever its own `kind` and
/// `apiVersion` say, if anything: the admission webhook knows the kind
/// from the API server's request, not from the object.
pub fn inject_pod(config: &Config, object: &Value) -> Result<Outcome, InjectError> {
    inject_template(config, object, "Pod", "")
}

/// Injects the pod template at `template_path` of `object`, a `kind`.
fn inject_template(
    config: &Config,
    object: &Value,
    kind: &str,
    template_path: &str,
) -> Result<Outcome, InjectError> {
    let mut injected = object.clone();
    let template = match injected.pointer_mut(template_path) {
        Some(Value::Object(template)) => template,
        Some(_) => {
            return Err(InjectError::WrongType {
                field: dotted(template_path, ""),
                expected: "map",
            });
        }
        None => {
            return Err(InjectError::Missing {
                kind: kind.to_string(),
                field: dotted(template_path, ""),
            });
        }
    };
    let field = |name: &str| dotted(template_path, name);
    match pod::inject_pod(config, template, kind, &field)? {
        pod::PodOutcome::Skipped(reason) => Ok(Outcome::Skipped(reason)),
        pod::PodOutcome::Injected { warnings } if injected != *object => Ok(Outcome::Injected {
            object: injected,
            warnings,
        }),
        pod::PodOutcome::Injected { .. } => Ok(Outcome::Unchanged),
    }
}

/// The kind of an object ward injects and where its pod template sits:
/// the JSON pointer of the map holding the pod's `metadata` and `spec`.
fn template_path(object: &Value) -> Option<(&str, &'static str)> {
    let kind = object.get("kind")?.as_str()?;
    let api_version = object.get("apiVersion")?.as_str()?;
    // "v1" is the core group; "apps/v1" is group "apps". A CRD that reuses a
    // built-in kind name in its own group is not ours to change.
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    let path = match (group, kind) {
        ("", "Pod") => "",
        ("apps" | "extensions", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => {
            "/spec/template"
        }
        ("batch", "Job") => "/spec/template",
        ("batch", "CronJob") => "/spec/jobTemplate/spec/template",
        _ => return None,
    };
    Some((kind, path))
}

/// A field's dotted name for messages (`spec.template.spec.volumes`), from
/// the template's JSON pointer and a dotted path below it.
fn dotted(template_path: &str, below: &str) -> String {
    template_path
        .split('/')
        .chain(below.split('.'))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(".")
}

/// The map under `key`, created empty when absent or null; `path` names
/// that field in errors.
fn child_map<'a>(
    parent: &'a mut Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a mut Map<String, Value>, InjectError> {
    let slot = parent.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(map) => Ok(map),
        _ => Err(InjectError::WrongType {
            field: path.to_string(),
            expected: "map",
        }),
    }
}

/// The list under `key`, created empty when absent or null.
fn child_list<'a>(
    parent: &'a mut Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a mut Vec<Value>, InjectError> {
    let slot = parent.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    match slot {
        Value::Array(list) => Ok(list),
        _ => Err(InjectError::WrongType {
            field: path.to_string(),
            expected: "list",
        }),
    }
}
