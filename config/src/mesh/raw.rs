//! The mesh file as YAML says it, before validation: plain serde structs
//! whose leaves carry their source position ([`Spanned`]) so validation can
//! point at the line to fix.
//!
//! Everything the parser can enforce is enforced here, through serde-saphyr
//! options rather than by hand: unknown fields (`deny_unknown_fields` on every
//! struct), duplicate keys (`DuplicateKeyPolicy::Error`, also for service
//! names), unknown tags, and resource budgets. The budgets are checked while
//! the stream is deserialized, including replayed aliases, so an alias bomb or
//! deep nesting stops at the limit instead of after expansion.

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_saphyr::{DuplicateKeyPolicy, Spanned};

use super::{MeshError, Protocol};

/// Nesting depth (mappings + lists). The schema needs 5 (services) and 5
/// (`allow[].http.paths[]`). Far below anything that could exhaust a stack.
pub(super) const MAX_DEPTH: usize = 32;
/// YAML values (scalars, lists, mappings), aliases included. ~10k services.
pub(super) const MAX_NODES: usize = 250_000;
/// Bytes of scalar text, aliases counted at every use: bounds the strings an
/// alias can make out of one anchor.
pub(super) const MAX_SCALAR_BYTES: usize = 8 * 1024 * 1024;
/// Events replayed from aliases. Sharing a port list between services is
/// fine; exponential "billion laughs" nesting is not.
pub(super) const MAX_REPLAYED_EVENTS: usize = 100_000;
/// Alias uses (`*name`) in the whole file.
pub(super) const MAX_ALIASES: usize = 10_000;

/// The top level of the mesh file. New top-level keys go here as fields
/// with `#[serde(default)]` when optional; `deny_unknown_fields` keeps typos
/// from being silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMesh {
    pub trust_domain: Spanned<String>,
    pub services: RawServices,
    /// The policy keys (docs/policy.md); all optional, absent = empty.
    #[serde(default)]
    pub mode: Option<RawMode>,
    #[serde(default)]
    pub roles: RawRoles,
    #[serde(default)]
    pub probes: Vec<Spanned<RawProbe>>,
    #[serde(default)]
    pub allow: Vec<Spanned<RawRule>>,
    #[serde(default)]
    pub deny: Vec<Spanned<RawRule>>,
}

/// The policy keys of [`RawMesh`], split off for their own validation step.
pub(super) struct RawPolicy {
    pub mode: Option<RawMode>,
    pub roles: RawRoles,
    pub probes: Vec<Spanned<RawProbe>>,
    pub allow: Vec<Spanned<RawRule>>,
    pub deny: Vec<Spanned<RawRule>>,
}

impl RawMesh {
    /// The registry keys and the policy keys, which are validated in turn.
    pub fn split(self) -> (Spanned<String>, RawServices, RawPolicy) {
        let policy = RawPolicy {
            mode: self.mode,
            roles: self.roles,
            probes: self.probes,
            allow: self.allow,
            deny: self.deny,
        };
        (self.trust_domain, self.services, policy)
    }
}

/// `mode:` globally or on a rule. Mirrors [`crate::policy::Mode`], which
/// does not depend on serde.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawMode {
    Enforce,
    Audit,
}

/// `roles:` in file order: role name to identity patterns.
#[derive(Debug, Default)]
pub(super) struct RawRoles(pub Vec<(Spanned<String>, Vec<Spanned<String>>)>);

/// One `allow:` or `deny:` entry. `name` is optional here only so that a
/// missing name gets a message naming the rule's position and kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// Defaulted so a missing list and an empty one get the same message.
    #[serde(default)]
    pub from: Vec<Spanned<String>>,
    pub to: Spanned<String>,
    #[serde(default)]
    pub ports: Vec<Spanned<u16>>,
    #[serde(default)]
    pub http: Option<Spanned<RawHttp>>,
    #[serde(default)]
    pub mode: Option<RawMode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub paths: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    pub port: Spanned<u16>,
    #[serde(default)]
    pub paths: Vec<Spanned<String>>,
}

/// `services:` in file order, each name with its position. A custom visitor
/// instead of a map type because `Spanned` keys are not `Ord`, and file order
/// makes "the first error in the file" the one reported.
#[derive(Debug, Default)]
pub(super) struct RawServices(pub Vec<(Spanned<String>, RawService)>);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub identity: Spanned<String>,
    /// Defaulted so a missing list and an empty one get the same message.
    #[serde(default)]
    pub endpoints: Vec<Spanned<String>>,
    #[serde(default)]
    pub ports: Vec<RawPort>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPort {
    pub port: Spanned<u16>,
    #[serde(default)]
    pub protocol: Protocol,
}

impl<'de> Deserialize<'de> for RawServices {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ServicesVisitor;
        impl<'de> Visitor<'de> for ServicesVisitor {
            type Value = RawServices;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping of service names to services")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawServices, A::Error> {
                let mut services = Vec::new();
                while let Some(name) = map.next_key::<Spanned<String>>()? {
                    services.push((name, map.next_value()?));
                }
                Ok(RawServices(services))
            }
        }
        deserializer.deserialize_map(ServicesVisitor)
    }
}

impl<'de> Deserialize<'de> for RawRoles {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RolesVisitor;
        impl<'de> Visitor<'de> for RolesVisitor {
            type Value = RawRoles;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping of role names to lists of SPIFFE IDs")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRoles, A::Error> {
                let mut roles = Vec::new();
                while let Some(name) = map.next_key::<Spanned<String>>()? {
                    roles.push((name, map.next_value()?));
                }
                Ok(RawRoles(roles))
            }
        }
        deserializer.deserialize_map(RolesVisitor)
    }
}

/// serde-saphyr options for operator-written files: strict and bounded.
pub(super) fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 1,
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
            max_nodes: MAX_NODES,
            max_aliases: MAX_ALIASES,
            max_total_scalar_bytes: MAX_SCALAR_BYTES,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_REPLAYED_EVENTS,
        },
        // YAML requires unique keys; the default already errors, but this is
        // a security property, so it is stated rather than inherited.
        duplicate_keys: DuplicateKeyPolicy::Error,
        // `!include`, `!!python/...` and friends mean nothing here; refuse
        // them instead of ignoring them.
        reject_unsupported_tags: true,
        reject_tagged_field_names: true,
        // Comments are checked as syntax but never needed as values.
        emit_comments: false,
        // Messages are rendered by `MeshError`; no source snippets retained.
        with_snippet: false,
    }
}

/// Parses the text into raw structs; every failure becomes a positioned
/// [`MeshError`].
pub(super) fn parse(text: &str, file: &str) -> Result<RawMesh, MeshError> {
    if is_blank(text) {
        return Err(MeshError::Empty {
            file: file.to_string(),
        });
    }
    serde_saphyr::from_str_with_options(text, options())
        .map_err(|error| super::error::from_yaml(&error, file))
}

/// True when the text holds no YAML content at all: only whitespace,
/// comments and document markers. The parser would report "unexpected end
/// of input", which does not tell an operator their ConfigMap key is empty.
fn is_blank(text: &str) -> bool {
    text.trim_start_matches('\u{feff}').lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}
