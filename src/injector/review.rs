//! One `admission.k8s.io/v1` AdmissionReview in, its answer out: the
//! webhook's whole decision, kept free of HTTP so it can be tested on
//! documents alone.
//!
//! | the request                                  | the answer                                        |
//! |----------------------------------------------|---------------------------------------------------|
//! | a Pod CREATE that `ward::inject` changes     | `allowed`, `patchType: JSONPatch`, `patch`        |
//! | already injected, opted out, not a Pod, not a CREATE, a subresource | `allowed`, no patch    |
//! | `hostNetwork: true`                          | `allowed`, no patch, a `warnings` entry           |
//! | a Pod ward cannot inject (bad annotation...) | `allowed: false`, `status: {code: 400, message}`  |
//! | a Pod CREATE whose `object` is missing or not a map | `allowed: false`, `status: {code: 400, message}` |
//! | not an AdmissionReview v1 with a `request.uid`, `request.kind` and `request.resource` | [`ReviewError`] (the server answers HTTP 400) |
//!
//! Refusing a Pod ward cannot inject, rather than letting it through bare,
//! matches `ward inject` (which fails on the same manifest) and holds
//! whatever the webhook's `failurePolicy`: the operator sees the message in
//! `kubectl` instead of finding a pod without its sidecar later.
//!
//! Whether the request is for a Pod is what the API server says in
//! `request.kind` (`{group: "", kind: "Pod"}`) or `request.resource`
//! (`{group: "", resource: "pods"}`), either one enough, never what the
//! object says about itself: a Pod whose object lacks `kind` or
//! `apiVersion` is still injected (as a Pod), not admitted bare as "not a
//! Pod". Any version counts: the core group has only `v1` Pods, and a Pod
//! of a version this webhook does not know is refused, not let through.
//!
//! Only a core Pod's CREATE without a subresource is mutated: the
//! containers of an existing Pod cannot be changed, `pods/ephemeralcontainers`
//! or `pods/binding` requests are not the Pod's creation, and a Deployment
//! (say) sent by a too-wide webhook rule is left alone because its Pods
//! will be injected when they are created; changing templates would also
//! make every `kubectl apply` or GitOps sync see a diff.

use std::fmt::Display;

use base64::Engine;
use serde_json::{Value, json};

use super::patch;
use crate::inject::{self, Config, Outcome};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// Why a body is not an AdmissionReview this webhook can answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("apiVersion must be {API_VERSION} (got {0})")]
    ApiVersion(String),
    #[error("kind must be {KIND} (got {0})")]
    Kind(String),
    #[error("request is missing or not a map")]
    NoRequest,
    #[error("request.uid is missing or not a non-empty string")]
    NoUid,
    #[error("request.{0} is missing or not a map (the API server always sends it)")]
    NoTarget(&'static str),
}

/// What the webhook decided, for its log line and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub uid: String,
    /// `Pod shop/web-7d9f-*`: what was admitted, for messages and logs.
    pub object: String,
    /// The decision in a few words, with the reason (for the log).
    pub result: String,
    pub verdict: Verdict,
}

/// The decision without its reason: few values, so a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted with a patch.
    Injected,
    /// Admitted as it was: already injected, not a Pod, not a creation.
    Unchanged,
    /// Admitted as it was because the Pod opts out or cannot have a
    /// sidecar (`hostNetwork`).
    Skipped,
    /// Not admitted: ward cannot inject this Pod.
    Refused,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::Injected,
        Verdict::Unchanged,
        Verdict::Skipped,
        Verdict::Refused,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Injected => "injected",
            Verdict::Unchanged => "unchanged",
            Verdict::Skipped => "skipped",
            Verdict::Refused => "refused",
        }
    }
}

/// Answers one AdmissionReview (the request body, as sent by the API server).
pub fn review(config: &Config, body: &[u8]) -> Result<(Value, Decision), ReviewError> {
    let document: Value =
        serde_json::from_slice(body).map_err(|e| ReviewError::NotJson(e.to_string()))?;
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    if document.get("apiVersion").and_then(Value::as_str) != Some(API_VERSION) {
        return Err(ReviewError::ApiVersion(text(&document["apiVersion"])));
    }
    if document.get("kind").and_then(Value::as_str) != Some(KIND) {
        return Err(ReviewError::Kind(text(&document["kind"])));
    }
    let Some(request) = document.get("request").filter(|r| r.is_object()) else {
        return Err(ReviewError::NoRequest);
    };
    let uid = match request.get("uid").and_then(Value::as_str) {
        Some(uid) if !uid.is_empty() => uid.to_string(),
        _ => return Err(ReviewError::NoUid),
    };
    let [kind, resource] = ["kind", "resource"].map(|field| {
        request
            .get(field)
            .filter(|v| v.is_object())
            .ok_or(ReviewError::NoTarget(field))
    });
    let (kind, resource) = (kind?, resource?);
    let pod = core(kind, "kind", "Pod") || core(resource, "resource", "pods");
    let object = request.get("object");
    let kind = if pod {
        "Pod"
    } else {
        kind.get("kind").and_then(Value::as_str).unwrap_or("object")
    };
    let described = describe(
        kind,
        object,
        request.get("namespace").and_then(Value::as_str),
    );
    let mut response = json!({"uid": uid, "allowed": true});
    let creates = request.get("operation").and_then(Value::as_str) == Some("CREATE")
        && request
            .get("subResource")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
    let (verdict, result) = if !pod {
        (
            Verdict::Unchanged,
            "not a Pod; admitted unchanged".to_string(),
        )
    } else if !creates {
        (
            Verdict::Unchanged,
            "not a creation; admitted unchanged".to_string(),
        )
    } else {
        match object.filter(|o| o.is_object()) {
            Some(pod) => inject_pod(config, pod, &described, &mut response),
            None => refuse(&mut response, &described, &NO_OBJECT),
        }
    };
    let answer = json!({"apiVersion": API_VERSION, "kind": KIND, "response": response});
    let decision = Decision {
        uid,
        object: described,
        result,
        verdict,
    };
    Ok((answer, decision))
}

/// Injects a Pod being created; fills in `response` and says what it did.
fn inject_pod(
    config: &Config,
    pod: &Value,
    described: &str,
    response: &mut Value,
) -> (Verdict, String) {
    match inject::inject_pod(config, pod) {
        Ok(Outcome::Injected {
            object: injected,
            warnings,
        }) => {
            let ops = Value::Array(patch::diff(pod, &injected));
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(ops.to_string().as_bytes());
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(encoded);
            if !warnings.is_empty() {
                response["warnings"] = json!(
                    warnings
                        .iter()
                        .map(|w| format!("ward: {w}"))
                        .collect::<Vec<_>>()
                );
            }
            (Verdict::Injected, "injected".to_string())
        }
        Ok(Outcome::Unchanged) => (
            Verdict::Unchanged,
            "already injected; unchanged".to_string(),
        ),
        Ok(Outcome::Skipped(reason)) => {
            if reason.is_warning() {
                response["warnings"] = json!([format!("ward: {described}: {reason}")]);
            }
            (Verdict::Skipped, format!("skipped: {reason}"))
        }
        Err(e) => refuse(response, described, &e),
    }
}

/// Not admitted: `allowed: false` with the reason for `kubectl`.
fn refuse(response: &mut Value, described: &str, reason: &dyn Display) -> (Verdict, String) {
    response["allowed"] = json!(false);
    response["status"] = json!({"code": 400, "message": format!("ward: {described}: {reason}")});
    (Verdict::Refused, format!("refused: {reason}"))
}

/// Why a Pod CREATE without a Pod in it is refused.
const NO_OBJECT: &str = "request.object is missing or not a map, so there is no Pod to inject; \
                         refused rather than admitted without ward's sidecar";

/// Whether a request's `kind` or `resource` (`field`) is `name` in the core
/// group, in any version. A missing group counts as the core group, so
/// that a Pod is never taken for something else.
fn core(target: &Value, field: &str, name: &str) -> bool {
    let group = target.get("group").and_then(Value::as_str).unwrap_or("");
    group.is_empty() && target.get(field).and_then(Value::as_str) == Some(name)
}

/// `Pod shop/web`, from the request's kind and the object's name (or
/// `generateName*`, which is all a ReplicaSet's Pod has at admission) and
/// its namespace, or the request's when the object names none.
fn describe(kind: &str, object: Option<&Value>, request_namespace: Option<&str>) -> String {
    let field = |pointer: &str| object?.pointer(pointer)?.as_str();
    let name = match (field("/metadata/name"), field("/metadata/generateName")) {
        (Some(name), _) => name.to_string(),
        (None, Some(prefix)) => format!("{prefix}*"),
        (None, None) => "(unnamed)".to_string(),
    };
    match field("/metadata/namespace").or(request_namespace) {
        Some(namespace) => format!("{kind} {namespace}/{name}"),
        None => format!("{kind} {name}"),
    }
}
