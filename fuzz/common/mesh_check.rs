//! The property the `mesh_yaml` fuzz target checks, shared with the root
//! test `tests/fuzz_corpus.rs` (included there with `#[path]`), so an input
//! the fuzzer flagged fails `cargo test` for the same reason.
//!
//! For any bytes: `MeshConfig::parse` returns instead of panicking, an error
//! renders as one line starting with the file name (docs/mesh.md: "Every
//! message is one line"), and a config it accepts satisfies the cheap
//! invariants below, each of which validation promises.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use ward_config::MeshConfig;
use ward_config::policy::{IdentityPattern, PathPattern, Target};

/// The file name the loader is given; every error message starts with it.
pub const SOURCE: &str = "mesh.yaml";

/// Destinations up to which `by_destination` is checked for each (a linear
/// scan over all endpoints each, so quadratic in the count).
const MAX_ROUTES: usize = 512;

/// Runs the loader on `data` (non-UTF-8 bytes replaced, so every input
/// reaches the parser) and panics if any property fails.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match MeshConfig::parse(&text, SOURCE) {
        Ok(config) => {
            check_config(&config);
            // Same config with warnings: parsing is deterministic, and the
            // warnings render like errors.
            let (again, warnings) = MeshConfig::parse_with_warnings(&text, SOURCE)
                .expect("parse_with_warnings refused what parse accepted");
            assert_eq!(again, config, "two parses of one text differ");
            for warning in &warnings {
                check_message(&warning.to_string());
                assert_eq!(warning.at().file, SOURCE);
            }
        }
        Err(error) => check_message(&error.to_string()),
    }
}

fn check_message(message: &str) {
    assert!(
        message.starts_with(SOURCE),
        "message does not start with the file name: {message:?}"
    );
    assert!(
        !message.contains(['\n', '\r']),
        "message is not one line: {message:?}"
    );
}

fn is_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn check_path(path: &PathPattern) {
    let text = match path {
        PathPattern::Exact(p) => p,
        PathPattern::Prefix(p) => {
            assert!(p.ends_with('/'), "prefix pattern {p:?} does not end in /");
            p
        }
    };
    assert!(text.starts_with('/'), "path pattern {text:?} not absolute");
    assert!(
        !text.contains(['*', '%', '?', '#']),
        "path pattern {text:?}"
    );
}

fn check_config(config: &MeshConfig) {
    let td = config.trust_domain.as_str();
    let td_prefix = format!("{}/", config.trust_domain.id());

    // Services: named by their key, identity in the trust domain, at least
    // one endpoint and one port, no port twice, no endpoint in two services.
    let mut owner = HashMap::new();
    for (name, service) in &config.services {
        assert_eq!(&service.name, name);
        assert!(is_label(name), "service name {name:?} is not a DNS label");
        let id = &service.identity;
        assert_eq!(id.trust_domain_name(), td, "{id} outside trust domain");
        assert!(id.as_str().starts_with(&td_prefix), "{id} has no path");
        assert!(!service.endpoints.is_empty(), "{name} has no endpoints");
        assert!(!service.ports.is_empty(), "{name} has no ports");
        let mut ports = BTreeSet::new();
        for spec in &service.ports {
            assert_ne!(spec.port, 0, "{name} has port 0");
            assert!(ports.insert(spec.port), "{name} lists {} twice", spec.port);
        }
        for endpoint in &service.endpoints {
            assert_ne!(endpoint.port(), 0, "{name}: endpoint {endpoint}");
            assert!(!endpoint.ip().is_unspecified(), "{name}: {endpoint}");
            if let IpAddr::V6(v6) = endpoint.ip() {
                assert!(v6.to_ipv4_mapped().is_none(), "{name}: {endpoint}");
            }
            let previous = owner.insert(*endpoint, name);
            assert!(
                previous.is_none(),
                "{endpoint} is in {previous:?} and {name}"
            );
        }
    }
    // Routing never depends on file order: every endpoint, and every port
    // of a service on each of its endpoints' addresses, leads to that
    // service, also when the address comes IPv4-mapped.
    let routes: usize = config
        .services
        .values()
        .map(|s| s.endpoints.len() * (s.ports.len() + 1))
        .sum();
    if routes <= MAX_ROUTES {
        for service in config.services.values() {
            for endpoint in &service.endpoints {
                let ports = service.ports.iter().map(|p| p.port);
                for port in ports.chain([endpoint.port()]) {
                    let dst = SocketAddr::new(endpoint.ip(), port);
                    let name = &service.name;
                    let (found, spec) = config
                        .by_destination(dst)
                        .unwrap_or_else(|| panic!("{dst} of {name} routes nowhere"));
                    assert_eq!(&found.name, name, "{dst} of {name} routes elsewhere");
                    assert!(found.port(spec.port).is_some(), "{dst}: port not declared");
                    if let IpAddr::V4(v4) = dst.ip() {
                        let mapped = SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), port);
                        let again = config.by_destination(mapped).map(|(s, p)| (&s.name, p));
                        assert_eq!(again, Some((name, spec)), "{mapped} routes differently");
                    }
                }
            }
        }
    }

    // Roles: named by their key, non-empty, members in the trust domain.
    let policy = &config.policy;
    for (name, role) in &policy.roles {
        assert_eq!(&role.name, name);
        assert!(is_label(name), "role name {name:?} is not a DNS label");
        assert!(!role.members.is_empty(), "role {name} has no members");
        for member in &role.members {
            match member {
                IdentityPattern::Exact(id) => {
                    assert_eq!(id.trust_domain_name(), td, "role {name}: {id}");
                    assert!(id.as_str().starts_with(&td_prefix), "role {name}: {id}");
                }
                IdentityPattern::Segment(prefix) => {
                    assert!(prefix.starts_with(&td_prefix), "role {name}: {prefix}");
                    assert!(prefix.ends_with('/'), "role {name}: {prefix}");
                    assert!(!prefix.contains('*'), "role {name}: {prefix}");
                }
            }
        }
    }

    // Rules: unique non-empty names, `from` and `to` roles defined, `to`
    // services defined and declaring every listed port.
    let mut names = BTreeSet::new();
    for rule in policy.allow.iter().chain(&policy.deny) {
        let r = &rule.name;
        assert!(!r.is_empty(), "rule with empty name");
        assert!(names.insert(r), "rule name {r:?} used twice");
        assert!(!rule.from.is_empty(), "rule {r:?} has no from");
        for role in &rule.from {
            assert!(policy.roles.contains_key(role), "rule {r:?}: from {role:?}");
        }
        let service = match &rule.to {
            Target::Role(role) => {
                assert!(policy.roles.contains_key(role), "rule {r:?}: to {role:?}");
                None
            }
            Target::Service(name) => Some(
                config
                    .service(name)
                    .unwrap_or_else(|| panic!("rule {r:?}: to unknown service {name:?}")),
            ),
        };
        for &port in &rule.ports {
            assert_ne!(port, 0, "rule {r:?} has port 0");
            if let Some(service) = service {
                assert!(service.port(port).is_some(), "rule {r:?}: port {port}");
            }
        }
        if let Some(http) = &rule.http {
            for method in &http.methods {
                let upper = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
                assert!(upper, "rule {r:?}: method {method:?}");
            }
            http.paths.iter().for_each(check_path);
        }
    }

    // Probes: each port once, never 0, paths normalized.
    let mut probe_ports = BTreeSet::new();
    for probe in &policy.probes {
        assert_ne!(probe.port, 0, "probe on port 0");
        assert!(
            probe_ports.insert(probe.port),
            "probe port {} twice",
            probe.port
        );
        probe.paths.iter().for_each(check_path);
    }
}
