//! From raw YAML structs to a [`MeshConfig`]: every check the types cannot
//! express. Errors point at the item to fix and are reported in file order,
//! so the first message is the first problem an operator would meet reading
//! down the file.

use crate::spiffe::is_dns_label;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use serde_saphyr::{Location, Spanned};

use super::error::clamp;
use super::raw::{RawMesh, RawService};
use super::{MeshConfig, MeshError, MeshWarning, PortSpec, Position, Service};
use crate::spiffe::{SpiffeId, SpiffeIdError, TrustDomain};

/// Port insertions the overlap check may spend. Only services that share an
/// IP address cost anything; real meshes stay orders of magnitude below.
const MAX_OVERLAP_WORK: usize = 1 << 20;

/// A validated service with the positions the cross-service checks report.
struct Checked {
    service: Service,
    endpoint_lines: Vec<Location>,
}

/// Validates the registry, then the policy against it (`validate_policy`).
pub(super) fn validate(
    raw: RawMesh,
    file: &str,
) -> Result<(MeshConfig, Vec<MeshWarning>), MeshError> {
    let (raw_trust_domain, raw_services, raw_policy) = raw.split();
    let trust_domain =
        TrustDomain::new(&raw_trust_domain.value).map_err(|error| MeshError::TrustDomain {
            at: Position::at(file, raw_trust_domain.referenced),
            error,
        })?;
    let mut owners: HashMap<SocketAddr, (String, u32)> = HashMap::new();
    let mut names = HashSet::new();
    let mut checked = Vec::with_capacity(raw_services.0.len());
    for (name, service) in raw_services.0 {
        // The parser refuses duplicate keys; this catches spellings it might
        // see as different but that name the same service.
        if !names.insert(name.value.clone()) {
            return Err(MeshError::DuplicateKey {
                at: Position::at(file, name.referenced),
                key: name.value,
            });
        }
        checked.push(check_service(
            name,
            service,
            &trust_domain,
            file,
            &mut owners,
        )?);
    }
    check_overlaps(&checked, file)?;

    let services = checked
        .into_iter()
        .map(|c| (c.service.name.clone(), c.service))
        .collect();
    let (policy, warnings) =
        super::validate_policy::validate(raw_policy, &trust_domain, &services, file)?;
    let config = MeshConfig {
        trust_domain,
        services,
        policy,
    };
    Ok((config, warnings))
}

fn check_service(
    name: Spanned<String>,
    raw: RawService,
    trust_domain: &TrustDomain,
    file: &str,
    owners: &mut HashMap<SocketAddr, (String, u32)>,
) -> Result<Checked, MeshError> {
    let at = |location: Location| Position::at(file, location);
    let service = name.value;
    if !is_dns_label(&service) {
        return Err(MeshError::ServiceName {
            at: at(name.referenced),
            name: service,
        });
    }

    let identity =
        check_identity(&raw.identity.value, trust_domain).map_err(|error| MeshError::Identity {
            at: at(raw.identity.referenced),
            service: service.clone(),
            error,
        })?;

    if raw.endpoints.is_empty() {
        return Err(MeshError::NoEndpoints {
            at: at(name.referenced),
            service,
        });
    }
    let mut endpoints = Vec::with_capacity(raw.endpoints.len());
    let mut endpoint_lines = Vec::with_capacity(raw.endpoints.len());
    for text in &raw.endpoints {
        let addr = parse_endpoint(&text.value).map_err(|(reason, hint)| MeshError::Endpoint {
            at: at(text.referenced),
            service: service.clone(),
            endpoint: text.value.clone(),
            reason,
            hint,
        })?;
        if let Some((other, other_line)) = owners.get(&addr) {
            return Err(MeshError::DuplicateEndpoint {
                at: at(text.referenced),
                service,
                endpoint: addr,
                other: other.clone(),
                other_line: *other_line,
            });
        }
        owners.insert(addr, (service.clone(), clamp(text.referenced.line())));
        endpoints.push(addr);
        endpoint_lines.push(text.referenced);
    }

    if raw.ports.is_empty() {
        return Err(MeshError::NoPorts {
            at: at(name.referenced),
            service,
        });
    }
    let mut ports = Vec::with_capacity(raw.ports.len());
    let mut first_seen: HashMap<u16, u32> = HashMap::new();
    for spec in &raw.ports {
        let port = spec.port.value;
        if port == 0 {
            return Err(MeshError::PortZero {
                at: at(spec.port.referenced),
                service,
            });
        }
        if let Some(first_line) = first_seen.insert(port, clamp(spec.port.referenced.line())) {
            return Err(MeshError::DuplicatePort {
                at: at(spec.port.referenced),
                service,
                port,
                first_line,
            });
        }
        ports.push(PortSpec {
            port,
            protocol: spec.protocol,
        });
    }

    Ok(Checked {
        service: Service {
            name: service,
            identity,
            endpoints,
            ports,
        },
        endpoint_lines,
    })
}

/// A workload identity in the file's trust domain. The trust domain's own ID
/// (`spiffe://cluster.local`) is refused: the SPIFFE X.509-SVID standard
/// forbids it in workload certificates, so no sidecar could ever present it.
pub(super) fn check_identity(
    text: &str,
    trust_domain: &TrustDomain,
) -> Result<SpiffeId, SpiffeIdError> {
    let id = SpiffeId::parse(text)?;
    id.require_trust_domain(trust_domain)?;
    if id.path().is_empty() {
        return Err(SpiffeIdError::NotWorkloadForm(id.to_string()));
    }
    Ok(id)
}

/// `ip:port` or `[ipv6]:port`, nothing else: the proxy matches connections
/// against these addresses and never resolves names on the data path.
/// Errors are `(reason, hint)` for [`MeshError::Endpoint`].
fn parse_endpoint(text: &str) -> Result<SocketAddr, (&'static str, &'static str)> {
    const FORM: &str = "write ip:port, e.g. 10.1.0.7:15006, and IPv6 as \"[fd00::7]:15006\"";
    let Ok(addr) = text.parse::<SocketAddr>() else {
        if text.parse::<IpAddr>().is_ok() {
            return Err(("has no port", FORM));
        }
        let host = text.rsplit_once(':').map_or(text, |(host, _)| host);
        if !host.starts_with('[') && host.bytes().any(|b| b.is_ascii_alphabetic()) {
            return Err((
                "is a hostname, and the proxy does not resolve DNS on the data path",
                "write the IP address and port, e.g. 10.1.0.7:15006",
            ));
        }
        return Err(("is not ip:port", FORM));
    };
    if addr.port() == 0 {
        return Err((
            "has port 0",
            "write the port the sidecar accepts mesh connections on, e.g. 15006",
        ));
    }
    if addr.ip().is_unspecified() {
        return Err((
            "is the unspecified address, which no connection is made to",
            "write the address the sidecar is reached at",
        ));
    }
    if let IpAddr::V6(v6) = addr.ip()
        && v6.to_ipv4_mapped().is_some()
    {
        // Refused, not normalized: one spelling per endpoint keeps the
        // duplicate and overlap checks exact.
        return Err((
            "is an IPv4-mapped IPv6 address",
            "write it as plain IPv4, e.g. 10.1.0.7:15006",
        ));
    }
    Ok(addr)
}

/// Every destination must name at most one service, or `by_destination`
/// would route by file order. Services sharing an IP address must therefore
/// not share a port (nor have one's endpoint port be the other's service
/// port). Only shared IPs are examined, so the usual one-IP-per-pod mesh
/// costs one map insertion per endpoint; the work on shared IPs is capped.
fn check_overlaps(checked: &[Checked], file: &str) -> Result<(), MeshError> {
    // Every endpoint by IP, in file order: (service index, port, position).
    let mut by_ip: HashMap<IpAddr, Vec<(usize, u16, Location)>> = HashMap::new();
    let mut ip_order = Vec::new();
    for (index, c) in checked.iter().enumerate() {
        for (addr, location) in c.service.endpoints.iter().zip(&c.endpoint_lines) {
            by_ip
                .entry(addr.ip())
                .or_insert_with(|| {
                    ip_order.push(addr.ip());
                    Vec::new()
                })
                .push((index, addr.port(), *location));
        }
    }

    let mut work = 0usize;
    for ip in ip_order {
        let Some(entries) = by_ip.get(&ip) else {
            continue;
        };
        if entries.windows(2).all(|w| w[0].0 == w[1].0) {
            continue; // one service only
        }
        // The service each port on this IP leads to.
        let mut claimed: HashMap<u16, usize> = HashMap::new();
        let mut ports_claimed: HashSet<usize> = HashSet::new();
        for &(index, endpoint_port, location) in entries {
            let service = &checked[index].service;
            let service_ports: &[PortSpec] = if ports_claimed.insert(index) {
                &service.ports
            } else {
                &[]
            };
            let ports = service_ports.iter().map(|p| p.port);
            for port in ports.chain([endpoint_port]) {
                work += 1;
                if work > MAX_OVERLAP_WORK {
                    return Err(MeshError::Limit {
                        at: Position::file(file),
                        what: "too many services share IP addresses to check their ports"
                            .to_string(),
                    });
                }
                if let Some(other) = claimed.insert(port, index)
                    && other != index
                {
                    return Err(MeshError::AmbiguousDestination {
                        at: Position::at(file, location),
                        service: service.name.clone(),
                        other: checked[other].service.name.clone(),
                        destination: SocketAddr::new(ip, port),
                    });
                }
            }
        }
    }
    Ok(())
}
