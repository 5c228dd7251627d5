//! Applies the sidecar to one pod template (`metadata` + `spec`): decides
//! whether to, removes a previous injection, and adds the current one.
//! Rebuilding from scratch every time is what makes injection idempotent
//! and lets a re-run with new flags update an injected manifest.

use serde_json::{Map, Value};

use super::annotations::{self, INJECTED};
use super::sidecar::{self, ADMIN_PORT, CONTAINERS, VOLUMES};
use super::{Config, InjectError, SkipReason, child_list, child_map};
use crate::intercept::Settings;

pub(super) enum PodOutcome {
    Injected { warnings: Vec<String> },
    Skipped(SkipReason),
}

/// `field` turns a path below the template (`spec.volumes`) into the
/// object's full field name for messages.
pub(super) fn inject_pod(
    config: &Config,
    template: &mut Map<String, Value>,
    kind: &str,
    field: &dyn Fn(&str) -> String,
) -> Result<PodOutcome, InjectError> {
    let annotations = match template.get("metadata").map(|m| (m, m.get("annotations"))) {
        None | Some((Value::Object(_), None | Some(Value::Null))) => Map::new(),
        Some((Value::Object(_), Some(Value::Object(annotations)))) => annotations.clone(),
        Some((Value::Object(_), Some(_))) => {
            return Err(wrong(field("metadata.annotations"), "map"));
        }
        Some(_) => return Err(wrong(field("metadata"), "map")),
    };
    if annotations::opted_out(&annotations)? {
        return Ok(PodOutcome::Skipped(SkipReason::OptedOut));
    }
    let spec = match template.get_mut("spec") {
        Some(Value::Object(spec)) => spec,
        Some(_) => return Err(wrong(field("spec"), "map")),
        None => {
            return Err(InjectError::Missing {
                kind: kind.to_string(),
                field: field("spec"),
            });
        }
    };
    if spec.get("hostNetwork") == Some(&Value::Bool(true)) {
        return Ok(PodOutcome::Skipped(SkipReason::HostNetwork));
    }
    let options = annotations::read(&annotations, config.egress())?;
    remove_previous(spec, annotations.contains_key(INJECTED), field)?;
    let warnings = check_app(spec, &options.intercept, field)?;

    let init = child_list(spec, "initContainers", &field("spec.initContainers"))?;
    // ward-init first, so every later container (the app's init containers
    // too) is intercepted; the proxy next, so those init containers already
    // have the mesh.
    init.insert(0, sidecar::init_container(config, &options));
    init.insert(1, sidecar::proxy_container(config, &options));
    child_list(spec, "volumes", &field("spec.volumes"))?.extend(sidecar::volumes(config));

    let metadata = child_map(template, "metadata", &field("metadata"))?;
    let annotations = child_map(metadata, "annotations", &field("metadata.annotations"))?;
    let mut warnings = warnings;
    let mut theirs = Vec::new();
    for (key, value) in sidecar::prometheus_annotations() {
        match annotations.get(key) {
            None => {
                annotations.insert(key.to_string(), Value::String(value));
            }
            Some(Value::String(current)) if *current == value => {}
            Some(current) => theirs.push(format!("{key}: {current}")),
        }
    }
    if !theirs.is_empty() {
        warnings.push(format!(
            "kept the pod's own {}; Prometheus will not scrape ward's metrics on :{ADMIN_PORT} \
             through these annotations",
            theirs.join(", ")
        ));
    }
    annotations.insert(
        INJECTED.to_string(),
        Value::String(env!("CARGO_PKG_VERSION").to_string()),
    );
    Ok(PodOutcome::Injected { warnings })
}

/// Takes out what an earlier injection added (it carries the `INJECTED`
/// annotation); without that annotation, ward's names are refused rather
/// than overwritten, since they belong to someone else.
fn remove_previous(
    spec: &mut Map<String, Value>,
    injected: bool,
    field: &dyn Fn(&str) -> String,
) -> Result<(), InjectError> {
    for (key, what, names) in [
        ("initContainers", "container", &CONTAINERS[..]),
        ("containers", "container", &CONTAINERS[..]),
        ("volumes", "volume", &VOLUMES[..]),
    ] {
        let Some(list) = spec.get_mut(key) else {
            continue;
        };
        let Value::Array(list) = list else {
            if list.is_null() {
                continue;
            }
            return Err(wrong(field(&format!("spec.{key}")), "list"));
        };
        let ours = |item: &Value| {
            item.get("name")
                .and_then(Value::as_str)
                .filter(|name| names.contains(name))
                .map(str::to_string)
        };
        if let Some(name) = list.iter().find_map(ours).filter(|_| !injected) {
            return Err(InjectError::ReservedName { what, name });
        }
        list.retain(|item| ours(item).is_none());
    }
    Ok(())
}

/// Refuses app ports that would collide with the sidecar's (one network
/// namespace per pod), and warns about app containers running as the
/// proxy's UID, whose traffic `ward init` would let bypass the mesh.
fn check_app(
    spec: &Map<String, Value>,
    intercept: &Settings,
    field: &dyn Fn(&str) -> String,
) -> Result<Vec<String>, InjectError> {
    let proxy_uid = intercept.proxy_uid;
    let ward_ports = [
        intercept.admin_port,
        intercept.inbound_port,
        intercept.outbound_port,
    ];
    let mut warnings = Vec::new();
    let uid_of = |v: Option<&Value>| v?.get("securityContext")?.get("runAsUser")?.as_u64();
    let pod_uid = uid_of(Some(&Value::Object(spec.clone())));
    for key in ["initContainers", "containers"] {
        let Some(list) = spec.get(key).and_then(Value::as_array) else {
            continue;
        };
        for container in list {
            let name = container
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("(unnamed)");
            let ports = container.get("ports").and_then(Value::as_array);
            for port in ports.into_iter().flatten() {
                let number = port.get("containerPort").and_then(Value::as_u64);
                if let Some(clash) = ward_ports.iter().find(|&&p| Some(u64::from(p)) == number) {
                    return Err(InjectError::PortClash {
                        field: field(&format!("spec.{key}")),
                        container: name.to_string(),
                        port: *clash,
                    });
                }
            }
            if uid_of(Some(container)).or(pod_uid) == Some(u64::from(proxy_uid)) {
                warnings.push(format!(
                    "container {name} runs as UID {proxy_uid}, the proxy's: \
                     its connections bypass the mesh"
                ));
            }
        }
    }
    Ok(warnings)
}

fn wrong(field: String, expected: &'static str) -> InjectError {
    InjectError::WrongType { field, expected }
}
