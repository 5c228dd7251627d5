//! deploy/'s manifests as data, shared by the deploy_* tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

pub fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The directories under deploy/ holding a kustomization.yaml.
pub fn kustomization_dirs() -> Vec<PathBuf> {
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
pub fn resources(dir: &Path) -> Vec<PathBuf> {
    let k = &docs(&dir.join("kustomization.yaml"))[0];
    strs(&k["resources"]).iter().map(|r| dir.join(r)).collect()
}

/// Every manifest under deploy/: the resources of every kustomization.
pub fn manifests() -> Vec<PathBuf> {
    kustomization_dirs()
        .iter()
        .flat_map(|d| resources(d))
        .collect()
}

pub fn base() -> Vec<Value> {
    resources(&deploy().join("base"))
        .iter()
        .flat_map(|f| docs(f))
        .collect()
}

pub fn find<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/base"))
}

pub fn of_kind<'a>(all: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
    all.iter().filter(move |d| d["kind"] == kind)
}

/// Whether `labels` satisfy a LabelSelector (matchLabels and
/// matchExpressions with In, NotIn, Exists, DoesNotExist).
pub fn selects(selector: &Value, labels: &Value) -> bool {
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

pub fn ward(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(args)
        .output()
        .expect("run ward")
}

/// A Namespace's labels as the API server sees them (with
/// `kubernetes.io/metadata.name`).
pub fn namespace_labels(ns: &Value) -> Value {
    let mut labels = ns["metadata"]["labels"].clone();
    labels["kubernetes.io/metadata.name"] = ns["metadata"]["name"].clone();
    labels
}

/// deploy/grafana/ward.json.
pub fn dashboard() -> Value {
    let text = std::fs::read_to_string(deploy().join("grafana/ward.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

pub fn yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The jobs of prometheus.yml, by name.
pub fn jobs() -> BTreeMap<String, Value> {
    let config = yaml(&deploy().join("prometheus/prometheus.yml"));
    config["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["job_name"].as_str().unwrap().to_string(), j.clone()))
        .collect()
}

pub fn alerts() -> Vec<Value> {
    let rules = yaml(&deploy().join("prometheus/alerts.yaml"));
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}
