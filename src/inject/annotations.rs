//! The `ward.dev/*` annotations a pod (template) may carry, read and checked
//! before anything is built. Exclusions go through the same parsers and
//! checks as `ward init`'s flags, so a value that injects is a value the
//! init container accepts; unknown `ward.dev/*` keys are refused, because a
//! misspelt exclusion silently ignored would send traffic where the operator
//! said it must not go.

use serde_json::{Map, Value};
use ward_proxy::settings::Egress;

use super::sidecar::ADMIN_PORT;
use super::{InjectError, quantity};
use crate::intercept::Settings;
use crate::intercept::settings::{CidrList, PortList};

/// `"false"` opts the pod out of injection.
pub const INJECT: &str = "ward.dev/inject";
/// Set by injection to the version of ward that injected the pod.
pub const INJECTED: &str = "ward.dev/injected";
const EXCLUDE_INBOUND_PORTS: &str = "ward.dev/exclude-inbound-ports";
const EXCLUDE_OUTBOUND_PORTS: &str = "ward.dev/exclude-outbound-ports";
const EXCLUDE_OUTBOUND_CIDRS: &str = "ward.dev/exclude-outbound-cidrs";
const EGRESS: &str = "ward.dev/egress";
const CPU_REQUEST: &str = "ward.dev/proxy-cpu-request";
const MEMORY_REQUEST: &str = "ward.dev/proxy-memory-request";
const CPU_LIMIT: &str = "ward.dev/proxy-cpu-limit";
const MEMORY_LIMIT: &str = "ward.dev/proxy-memory-limit";

/// Every `ward.dev/*` annotation ward reads or writes.
pub const ANNOTATIONS: [&str; 10] = [
    INJECT,
    INJECTED,
    EXCLUDE_INBOUND_PORTS,
    EXCLUDE_OUTBOUND_PORTS,
    EXCLUDE_OUTBOUND_CIDRS,
    EGRESS,
    CPU_REQUEST,
    MEMORY_REQUEST,
    CPU_LIMIT,
    MEMORY_LIMIT,
];

/// Defaults sized for an L4/L7 proxy at modest load: small enough to pack,
/// with a limit high enough that TLS handshake bursts are not throttled.
const DEFAULT_CPU_REQUEST: &str = "50m";
const DEFAULT_MEMORY_REQUEST: &str = "64Mi";
const DEFAULT_CPU_LIMIT: &str = "1";
const DEFAULT_MEMORY_LIMIT: &str = "256Mi";

/// What the annotations ask of one pod.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PodOptions {
    /// `ward init`'s settings, validated; exclusions sorted and de-duplicated.
    pub intercept: Settings,
    /// The proxy's `--egress`.
    pub egress: Egress,
    pub resources: Resources,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Resources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
}

/// True when the pod opted out with `ward.dev/inject: "false"`.
pub(super) fn opted_out(annotations: &Map<String, Value>) -> Result<bool, InjectError> {
    match string(annotations, INJECT)? {
        None | Some("true") => Ok(false),
        Some("false") => Ok(true),
        Some(other) => Err(bad(INJECT, other, "must be \"true\" or \"false\"")),
    }
}

/// Reads and checks everything else the annotations ask of the pod;
/// `egress` is what the pod gets without `ward.dev/egress`.
pub(super) fn read(
    annotations: &Map<String, Value>,
    egress: Egress,
) -> Result<PodOptions, InjectError> {
    let get = |name: &'static str| string(annotations, name);
    if let Some(unknown) = annotations
        .keys()
        .find(|k| k.starts_with("ward.dev/") && !ANNOTATIONS.contains(&k.as_str()))
    {
        return Err(InjectError::UnknownAnnotation {
            name: unknown.clone(),
        });
    }
    let ports = |name: &'static str| -> Result<Vec<u16>, InjectError> {
        let value = get(name)?.unwrap_or_default();
        value
            .parse::<PortList>()
            .map(|list| list.0)
            .map_err(|reason| bad(name, value, &reason))
    };
    let cidrs = get(EXCLUDE_OUTBOUND_CIDRS)?.unwrap_or_default();
    let settings = Settings {
        exclude_inbound_ports: ports(EXCLUDE_INBOUND_PORTS)?,
        exclude_outbound_ports: ports(EXCLUDE_OUTBOUND_PORTS)?,
        exclude_outbound_cidrs: cidrs
            .parse::<CidrList>()
            .map_err(|reason| bad(EXCLUDE_OUTBOUND_CIDRS, cidrs, &reason))?
            .0,
        admin_port: ADMIN_PORT,
        ..Settings::default()
    };
    // Only the exclusion lists can be wrong here (the ports are ward's own),
    // and only by holding port 0.
    let intercept = settings.clone().validated().map_err(|_| {
        let name = if settings.exclude_inbound_ports.contains(&0) {
            EXCLUDE_INBOUND_PORTS
        } else {
            EXCLUDE_OUTBOUND_PORTS
        };
        let value = get(name).ok().flatten().unwrap_or_default();
        bad(name, value, "ports must be from 1 to 65535, not 0")
    })?;
    let egress = match get(EGRESS)? {
        None => egress,
        Some(value) => value
            .parse::<Egress>()
            .map_err(|reason| bad(EGRESS, value, &reason))?,
    };

    let quantity = |name: &'static str, default: &str| -> Result<(String, f64), InjectError> {
        let text = get(name)?.unwrap_or(default);
        quantity::parse(text)
            .map(|value| (text.to_string(), value))
            .map_err(|reason| bad(name, text, &reason))
    };
    let cpu_request = quantity(CPU_REQUEST, DEFAULT_CPU_REQUEST)?;
    let memory_request = quantity(MEMORY_REQUEST, DEFAULT_MEMORY_REQUEST)?;
    let cpu_limit = quantity(CPU_LIMIT, DEFAULT_CPU_LIMIT)?;
    let memory_limit = quantity(MEMORY_LIMIT, DEFAULT_MEMORY_LIMIT)?;
    for (resource, request, limit) in [
        ("cpu", &cpu_request, &cpu_limit),
        ("memory", &memory_request, &memory_limit),
    ] {
        if request.1 > limit.1 {
            return Err(InjectError::RequestAboveLimit {
                resource,
                request: request.0.clone(),
                limit: limit.0.clone(),
            });
        }
    }
    Ok(PodOptions {
        intercept,
        egress,
        resources: Resources {
            cpu_request: cpu_request.0,
            memory_request: memory_request.0,
            cpu_limit: cpu_limit.0,
            memory_limit: memory_limit.0,
        },
    })
}

/// An annotation's value; Kubernetes only has string annotations, so an
/// unquoted `false` or `22` is refused with a hint to quote it.
fn string<'a>(
    annotations: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, InjectError> {
    match annotations.get(name) {
        None => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.as_str())),
        Some(_) => Err(InjectError::AnnotationNotString {
            name: name.to_string(),
        }),
    }
}

fn bad(name: &'static str, value: &str, reason: &str) -> InjectError {
    InjectError::BadAnnotation {
        name,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}
