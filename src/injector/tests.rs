//! The webhook's decision on real AdmissionReview v1 documents
//! (tests/data/admission/): the patch is applied with the `json-patch`
//! crate (not ward's code) and must give exactly `ward::inject`'s result.

use base64::Engine;
use serde_json::{Value, json};

use super::patch::diff;
use super::review::Verdict;
use super::{ReviewError, review};
use crate::inject::{self, Config, Outcome};

fn load(name: &str) -> String {
    let path = format!("{}/tests/data/admission/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // pod-injected.json was written by ward 0.1.0; injection is exact only
    // for the same version (annotation and default image).
    text.replace("0.1.0", env!("CARGO_PKG_VERSION"))
}

fn answer(name: &str) -> (Value, Value) {
    let body = load(name);
    let request: Value = serde_json::from_str(&body).unwrap();
    let (answer, _) = review(&Config::default(), body.as_bytes()).expect("a valid review");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], request["request"]["uid"]);
    (request, answer["response"].clone())
}

/// Decodes the response's patch (checking its type and encoding).
fn patch_of(response: &Value) -> Vec<Value> {
    assert_eq!(response["patchType"], "JSONPatch");
    let encoded = response["patch"].as_str().expect("patch is a string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("patch is base64");
    match serde_json::from_slice(&bytes).expect("patch is JSON") {
        Value::Array(ops) => ops,
        other => panic!("patch is not an array: {other}"),
    }
}

/// `document` with `ops` applied by the `json-patch` crate: an RFC 6902
/// implementation independent of `patch::diff`, strict about every
/// operation (a `replace` or `remove` of a missing member fails).
fn apply(document: &Value, ops: &[Value]) -> Value {
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(ops.to_vec())).expect("RFC 6902 operations");
    let mut doc = document.clone();
    json_patch::patch(&mut doc, &patch).unwrap_or_else(|e| panic!("{e}: {ops:?}"));
    doc
}

#[test]
fn a_pod_create_gets_a_patch_that_gives_exactly_the_injected_pod() {
    let (request, response) = answer("pod-create.json");
    assert_eq!(response["allowed"], true);
    let pod = &request["request"]["object"];
    let Ok(Outcome::Injected { object, .. }) = inject::inject(&Config::default(), pod) else {
        panic!("the sample pod should be injected");
    };
    let ops = patch_of(&response);
    assert_eq!(apply(pod, &ops), object);
    // Only what injection touches is in the patch, with ~ and / escaped.
    let paths: Vec<&str> = ops.iter().filter_map(|op| op["path"].as_str()).collect();
    assert!(
        paths.contains(&"/metadata/annotations/ward.dev~1injected"),
        "{paths:?}"
    );
    assert!(paths.contains(&"/spec/initContainers"), "{paths:?}");
    assert!(paths.contains(&"/spec/volumes"), "{paths:?}");
    assert!(paths.iter().all(|p| !p.contains("team")), "{paths:?}");
}

#[test]
fn an_already_injected_pod_is_admitted_without_a_patch() {
    let (_, response) = answer("pod-injected.json");
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
    assert!(response.get("patchType").is_none(), "{response}");
}

#[test]
fn an_opted_out_pod_is_admitted_without_a_patch_or_warning() {
    let (_, response) = answer("pod-opted-out.json");
    assert_eq!(response, json!({"uid": response["uid"], "allowed": true}));
}

#[test]
fn a_host_network_pod_is_admitted_with_a_warning_naming_it() {
    let (_, response) = answer("pod-host-network.json");
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
    let warning = response["warnings"][0].as_str().expect("a warning");
    assert!(
        warning.contains("Pod shop/web-7d9f6c5b8-*") && warning.contains("hostNetwork"),
        "{warning}"
    );
}

#[test]
fn a_bad_annotation_refuses_the_pod_with_a_400_status_and_the_reason() {
    let (_, response) = answer("pod-bad-annotation.json");
    assert_eq!(response["allowed"], false);
    assert!(response.get("patch").is_none());
    assert_eq!(response["status"]["code"], 400);
    let message = response["status"]["message"].as_str().expect("a message");
    assert!(
        message.contains("Pod shop/web-7d9f6c5b8-*")
            && message.contains("ward.dev/exclude-inbound-ports")
            && message.contains("ssh"),
        "{message}"
    );
}

/// The sample review with `edit` applied to its request.
fn edited(edit: impl FnOnce(&mut Value)) -> Value {
    let mut doc: Value = serde_json::from_str(&load("pod-create.json")).unwrap();
    edit(&mut doc["request"]);
    let (answer, _) = review(&Config::default(), doc.to_string().as_bytes()).unwrap();
    answer["response"].clone()
}

#[test]
fn only_a_pod_creation_is_mutated() {
    let update = edited(|r| r["operation"] = json!("UPDATE"));
    let subresource = edited(|r| r["subResource"] = json!("ephemeralcontainers"));
    let deployment = edited(|r| {
        r["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
        r["resource"] = json!({"group": "apps", "version": "v1", "resource": "deployments"});
        r["object"] = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"template": {"spec": {"containers": []}}}});
    });
    let deleted = edited(|r| {
        r["operation"] = json!("DELETE");
        r["object"] = Value::Null;
    });
    for response in [update, subresource, deployment, deleted] {
        assert_eq!(response["allowed"], true, "{response}");
        assert!(response.get("patch").is_none(), "{response}");
    }
}

/// Whether the request is a Pod's is what the API server says about the
/// request, not what the object says about itself: a Pod whose object
/// lacks (or misstates) `kind` and `apiVersion` is still injected.
#[test]
fn a_pod_is_known_by_the_request_not_by_its_object() {
    let (request, _) = answer("pod-create.json");
    let pod = &request["request"]["object"];
    let Ok(Outcome::Injected { object: full, .. }) = inject::inject(&Config::default(), pod) else {
        panic!("the sample pod should be injected");
    };
    let bare = |v: &Value| {
        let mut v = v.clone();
        let map = v.as_object_mut().expect("a map");
        map.remove("kind");
        map.remove("apiVersion");
        v
    };
    let unkinded = edited(|r| r["object"] = bare(&r["object"]));
    assert_eq!(unkinded["allowed"], true, "{unkinded}");
    assert_eq!(apply(&bare(pod), &patch_of(&unkinded)), bare(&full));
    // Either of request.kind and request.resource is enough to say "Pod".
    let mislabelled = |edit: fn(&mut Value)| {
        edited(|r| {
            r["object"]["kind"] = json!("ConfigMap");
            edit(r);
        })
    };
    for response in [
        mislabelled(|_| {}),
        mislabelled(|r| r["kind"] = json!({"group": "", "version": "v1", "kind": "Binding"})),
        mislabelled(|r| r["resource"] = json!({"group": "", "version": "v1", "resource": "x"})),
        mislabelled(|r| r["kind"]["version"] = json!("v2")),
    ] {
        assert_eq!(response["patchType"], "JSONPatch", "{response}");
    }
}

/// A Pod CREATE with no Pod in it cannot be injected: it is refused, not
/// admitted as "not a Pod" (a pod without its sidecar, whatever the
/// webhook's `failurePolicy`).
#[test]
fn a_pod_creation_without_a_pod_object_is_refused() {
    let missing = edited(|r| {
        r.as_object_mut().unwrap().remove("object");
    });
    let null = edited(|r| r["object"] = Value::Null);
    let list = edited(|r| r["object"] = json!([{"kind": "Pod"}]));
    let text = edited(|r| r["object"] = json!("a pod"));
    for response in [missing, null, list, text] {
        assert_eq!(response["allowed"], false, "{response}");
        assert!(response.get("patch").is_none(), "{response}");
        assert_eq!(response["status"]["code"], 400, "{response}");
        let message = response["status"]["message"].as_str().expect("a message");
        assert!(
            message.starts_with("ward: Pod shop/(unnamed): request.object is missing"),
            "{message}"
        );
    }
    let mut doc: Value = serde_json::from_str(&load("pod-create.json")).unwrap();
    doc["request"]["object"] = Value::Null;
    let (_, decision) = review(&Config::default(), doc.to_string().as_bytes()).unwrap();
    assert_eq!(decision.verdict, Verdict::Refused);
}

#[test]
fn the_namespace_in_messages_is_the_pods_own_when_it_has_one() {
    let mut doc: Value = serde_json::from_str(&load("pod-host-network.json")).unwrap();
    doc["request"]["object"]["metadata"]["namespace"] = json!("own");
    doc["request"]["object"]["metadata"]["name"] = json!("db-0");
    let (_, decision) = review(&Config::default(), doc.to_string().as_bytes()).unwrap();
    assert_eq!(decision.object, "Pod own/db-0");
}

#[test]
fn each_decision_has_the_verdict_its_metric_counts() {
    let verdict = |body: &str| {
        review(&Config::default(), body.as_bytes())
            .unwrap()
            .1
            .verdict
    };
    for (name, expected) in [
        ("pod-create.json", Verdict::Injected),
        ("pod-injected.json", Verdict::Unchanged),
        ("pod-opted-out.json", Verdict::Skipped),
        ("pod-host-network.json", Verdict::Skipped),
        ("pod-bad-annotation.json", Verdict::Refused),
    ] {
        assert_eq!(verdict(&load(name)), expected, "{name}");
    }
    let mut update: Value = serde_json::from_str(&load("pod-create.json")).unwrap();
    update["request"]["operation"] = json!("UPDATE");
    assert_eq!(verdict(&update.to_string()), Verdict::Unchanged);
}

#[test]
fn malformed_reviews_are_errors_not_panics() {
    let review_of = |body: &str| review(&Config::default(), body.as_bytes());
    assert!(matches!(
        review_of("{not json"),
        Err(ReviewError::NotJson(_))
    ));
    assert!(matches!(review_of("[]"), Err(ReviewError::ApiVersion(_))));
    let v1beta1 = r#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}"#;
    assert_eq!(
        review_of(v1beta1),
        Err(ReviewError::ApiVersion(
            "admission.k8s.io/v1beta1".to_string()
        ))
    );
    let kind = r#"{"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}"#;
    assert!(matches!(review_of(kind), Err(ReviewError::Kind(_))));
    let no_request = r#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#;
    assert_eq!(review_of(no_request), Err(ReviewError::NoRequest));
    for uid in [r#"{}"#, r#"{"uid": ""}"#, r#"{"uid": 7}"#] {
        let body = format!(
            r#"{{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {uid}}}"#
        );
        assert_eq!(review_of(&body), Err(ReviewError::NoUid), "{body}");
    }
    // Without request.kind or request.resource, nothing says what the
    // object is: an error, not "not a Pod".
    for (field, value) in [("kind", Value::Null), ("resource", json!("pods"))] {
        let mut doc: Value = serde_json::from_str(&load("pod-create.json")).unwrap();
        doc["request"][field] = value;
        assert_eq!(
            review_of(&doc.to_string()),
            Err(ReviewError::NoTarget(field))
        );
        doc["request"].as_object_mut().unwrap().remove(field);
        assert_eq!(
            review_of(&doc.to_string()),
            Err(ReviewError::NoTarget(field))
        );
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(review_of(&deep), Err(ReviewError::NotJson(_))));
}

#[test]
fn diff_adds_replaces_removes_and_escapes() {
    let from = json!({"a": {"x/y": 1, "t~": [1, 2], "gone": true}, "same": {"k": "v"}});
    let to = json!({"a": {"x/y": 2, "t~": [2, 1], "new": null}, "same": {"k": "v"}});
    let ops = diff(&from, &to);
    assert_eq!(
        ops,
        vec![
            json!({"op": "remove", "path": "/a/gone"}),
            json!({"op": "replace", "path": "/a/x~1y", "value": 2}),
            json!({"op": "replace", "path": "/a/t~0", "value": [2, 1]}),
            json!({"op": "add", "path": "/a/new", "value": null}),
        ]
    );
    assert_eq!(apply(&from, &ops), to);
    assert!(diff(&to, &to).is_empty());
    assert_eq!(
        diff(&json!(1), &json!([1])),
        vec![json!({"op": "replace", "path": "", "value": [1]})]
    );
}
