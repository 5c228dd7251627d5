//! The mesh file: which services exist, the SPIFFE ID each one's sidecars
//! present, where those sidecars accept mesh connections, and the application
//! ports and protocols behind them. The reference for operators is
//! `docs/mesh.md`.
//!
//! Loading is two steps on purpose. `raw` reads the YAML into span-carrying
//! serde structs, so the parser alone decides syntax, unknown fields,
//! duplicate keys and resource budgets. `validate` then turns those into the
//! typed structs below and checks everything the types cannot say, pointing
//! each error at the offending line. Callers only ever see a fully validated
//! [`MeshConfig`]: the proxy keeps its last good one when a reload fails.
//!
//! The same file carries the access policy (`mode`, `roles`, `allow`,
//! `deny`, `probes`; `docs/policy.md`), validated by `validate_policy`
//! against the services into [`crate::policy::Policy`]. What is legal but
//! probably wrong comes back as [`MeshWarning`]s from the `*_with_warnings`
//! functions.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;

use crate::policy::Policy;
use crate::spiffe::{SpiffeId, TrustDomain};

mod error;
mod raw;
mod validate;
mod validate_policy;

#[cfg(test)]
mod tests;

pub use error::{MeshError, Position};

/// Largest mesh file accepted, in bytes. A mesh file lists services, not
/// data; the cap bounds memory before the YAML parser sees a single byte.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;

/// A validated mesh file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// Every identity in the file belongs to this trust domain.
    pub trust_domain: TrustDomain,
    /// Services by name (a DNS-1123 label).
    pub services: BTreeMap<String, Service>,
    /// The access policy (`mode`, `roles`, `allow`, `deny`, `probes`;
    /// docs/policy.md). `Policy::default()` when the file has none of those
    /// keys: enforce mode, no rules, so every request is denied.
    pub policy: Policy,
}

/// One service of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The key it has under `services:`, repeated here for messages and metrics.
    pub name: String,
    /// The SPIFFE ID its sidecars present; outbound TLS requires exactly this peer.
    pub identity: SpiffeId,
    /// Where its sidecars accept mesh connections, in file order. Never empty.
    pub endpoints: Vec<SocketAddr>,
    /// Its application ports, in file order. Never empty, no port twice.
    pub ports: Vec<PortSpec>,
}

/// An application port and how the proxy treats its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    /// 1-65535.
    pub port: u16,
    pub protocol: Protocol,
}

/// How the proxy treats a port's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Opaque bytes, never sniffed: for databases and anything server-first.
    Tcp,
    /// HTTP/1.1 or h2.
    Http,
    /// Sniff the first bytes and fall back to [`Protocol::Tcp`]. The default,
    /// because it is right for most ports; server-first protocols (MySQL,
    /// SMTP) must say `tcp` or they wait for the sniffing timeout.
    #[default]
    Detect,
}

impl Protocol {
    /// The spelling used in the mesh file, also fit for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Detect => "detect",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl MeshConfig {
    /// Parses and validates mesh-file text. `source` names the file in error
    /// messages (`mesh.yaml:7:15: ...`). Warnings are dropped; see
    /// [`MeshConfig::parse_with_warnings`].
    pub fn parse(text: &str, source: &str) -> Result<MeshConfig, MeshError> {
        Self::parse_with_warnings(text, source).map(|(config, _)| config)
    }

    /// [`MeshConfig::parse`], also returning what is legal but probably
    /// wrong (shadowed or duplicate rules, ...), in file order.
    pub fn parse_with_warnings(
        text: &str,
        source: &str,
    ) -> Result<(MeshConfig, Vec<MeshWarning>), MeshError> {
        if text.len() > MAX_FILE_BYTES {
            return Err(MeshError::TooLarge {
                file: source.to_string(),
                limit: MAX_FILE_BYTES,
            });
        }
        let raw = raw::parse(text, source)?;
        validate::validate(raw, source)
    }

    /// Reads the file at `path` (at most [`MAX_FILE_BYTES`]) and parses it.
    /// Reading stops one byte past the cap, so a huge or endless file costs
    /// no more memory than a valid one. Warnings are dropped; see
    /// [`MeshConfig::load_with_warnings`].
    pub fn load(path: &Path) -> Result<MeshConfig, MeshError> {
        Self::load_with_warnings(path).map(|(config, _)| config)
    }

    /// [`MeshConfig::load`], also returning the warnings, as
    /// `ward policy check` prints them.
    pub fn load_with_warnings(path: &Path) -> Result<(MeshConfig, Vec<MeshWarning>), MeshError> {
        let file = path.display().to_string();
        let read_error = |error: std::io::Error| MeshError::Read {
            file: file.clone(),
            error,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(read_error)?
            // Widening usize -> u64 is lossless on every supported target.
            .take(MAX_FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() > MAX_FILE_BYTES {
            return Err(MeshError::TooLarge {
                file,
                limit: MAX_FILE_BYTES,
            });
        }
        let text =
            String::from_utf8(bytes).map_err(|_| MeshError::NotUtf8 { file: file.clone() })?;
        Self::parse_with_warnings(&text, &file)
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name)
    }

    /// The service and port an outbound connection to `dst` is for: `dst`
    /// equals one of a service's endpoints (exact ip:port), or dst's ip is an
    /// endpoint ip and dst's port is one of the service's ports.
    ///
    /// For an exact endpoint match the port is the service port equal to
    /// dst's port if there is one, else the service's first port (explicit
    /// endpoints such as `127.0.0.1:15006` usually front a single port).
    /// IPv4-mapped IPv6 destinations (`::ffff:10.1.0.7`) match IPv4 endpoints,
    /// since a dual-stack socket reports IPv4 peers that way. Validation
    /// guarantees at most one service matches, so the answer does not depend
    /// on iteration order. The scan is linear in the number of endpoints;
    /// the proxy indexes services by IP and calls [`match_destination`].
    pub fn by_destination(&self, dst: SocketAddr) -> Option<(&Service, &PortSpec)> {
        match_destination(self.services.values(), dst)
    }
}

/// [`MeshConfig::by_destination`] over `candidates` only: callers with an
/// index (services by endpoint IP) pass the few services it names, and get
/// the same answer as a scan of the whole mesh would.
pub fn match_destination<'a>(
    candidates: impl Iterator<Item = &'a Service> + Clone,
    dst: SocketAddr,
) -> Option<(&'a Service, &'a PortSpec)> {
    let (ip, port) = (dst.ip().to_canonical(), dst.port());
    let exact = candidates.clone().find(|service| {
        let mut endpoints = service.endpoints.iter();
        endpoints.any(|e| e.ip() == ip && e.port() == port)
    });
    if let Some(service) = exact {
        let spec = service.port(port).or_else(|| service.ports.first())?;
        return Some((service, spec));
    }
    candidates
        .filter(|service| service.endpoints.iter().any(|e| e.ip() == ip))
        .find_map(|service| service.port(port).map(|spec| (service, spec)))
}

impl Service {
    pub fn port(&self, port: u16) -> Option<&PortSpec> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// What a valid mesh file probably gets wrong: returned next to the
/// [`MeshConfig`] by `parse_with_warnings`/`load_with_warnings`, and
/// printed by `ward policy check`. Same one-line format as [`MeshError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeshWarning {
    #[error(
        "{at}: role {role:?}: member {member:?} is listed twice, first at line {first_line} \
         (hint: remove one; the second changes nothing)"
    )]
    DuplicateRoleMember {
        at: Position,
        role: String,
        member: String,
        first_line: u32,
    },
    #[error(
        "{at}: probes: no service declares port {port} \
         (hint: check the number against the pod's probe; a probe port is reachable without mTLS)"
    )]
    UndeclaredProbePort { at: Position, port: u16 },
    #[error(
        "{at}: deny rule {rule:?} has `mode: audit`: it blocks nothing, it only logs and counts \
         what it would deny (hint: fine while trying the rule out; remove `mode: audit` to enforce it)"
    )]
    AuditDeny { at: Position, rule: String },
    #[error(
        "{at}: allow rule {rule:?} allows the same as allow rule {other:?} at line {other_line} \
         (hint: remove one of the two)"
    )]
    DuplicateAllow {
        at: Position,
        rule: String,
        other: String,
        other_line: u32,
    },
    #[error(
        "{at}: allow rule {rule:?} can never allow anything: deny rule {deny:?} at line \
         {deny_line} covers all it matches, and deny wins (hint: narrow the deny rule, or \
         remove the allow rule)"
    )]
    ShadowedAllow {
        at: Position,
        rule: String,
        deny: String,
        deny_line: u32,
    },
}

impl MeshWarning {
    /// Where the warning points, for sorting and for tools that annotate.
    pub fn at(&self) -> &Position {
        match self {
            MeshWarning::DuplicateRoleMember { at, .. }
            | MeshWarning::UndeclaredProbePort { at, .. }
            | MeshWarning::AuditDeny { at, .. }
            | MeshWarning::DuplicateAllow { at, .. }
            | MeshWarning::ShadowedAllow { at, .. } => at,
        }
    }
}
