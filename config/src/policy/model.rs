//! The policy as operators write it, validated: roles, allow and deny rules,
//! health probes and the enforcement mode. Loaded from the mesh file's
//! `mode`, `roles`, `allow`, `deny` and `probes` keys (docs/policy.md);
//! compiled into an index by `engine`.
//!
//! Semantics, in one place:
//! - Default deny: a request no allow rule matches is denied.
//! - Deny rules win over allow rules, whatever their order.
//! - A rule matches when its `from` roles contain the caller's identity, its
//!   `to` names the destination service (or a role containing the
//!   destination's identity), its `ports` (all, if empty) contain the port,
//!   and, if it has `http`, the method (any, if empty) and the normalized path
//!   (any, if empty) match.
//! - `mode: audit` (globally or on a rule) lets what that rule or the default
//!   would deny through, but logs and counts it as `audit_deny`.
//! - Probes: declared ports/paths that kubelet reaches without mTLS.

use std::collections::BTreeMap;

use crate::mesh::Position;
use crate::spiffe::SpiffeId;

/// Whether denials block (`enforce`) or are only logged and counted (`audit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

/// The whole validated policy. An empty policy denies everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    pub mode: Mode,
    pub roles: BTreeMap<String, Role>,
    /// In file order.
    pub allow: Vec<Rule>,
    /// In file order.
    pub deny: Vec<Rule>,
    pub probes: Vec<Probe>,
}

/// A named set of identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub members: Vec<IdentityPattern>,
    pub at: Position,
}

/// One member of a role.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentityPattern {
    /// Exactly this SPIFFE ID.
    Exact(SpiffeId),
    /// Every ID below this prefix, written `spiffe://td/ns/shop/sa/*`: the
    /// `*` stands for exactly the last path segment, so the stored prefix
    /// always ends with `/` (here `spiffe://td/ns/shop/sa/`).
    Segment(String),
}

impl IdentityPattern {
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            IdentityPattern::Exact(exact) => exact == id,
            IdentityPattern::Segment(prefix) => id
                .as_str()
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/')),
        }
    }
}

/// Where a rule applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A service of the registry, by name.
    Service(String),
    /// Every service whose identity is in this role.
    Role(String),
}

/// An allow or deny rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    /// Role names; the caller must be in at least one.
    pub from: Vec<String>,
    pub to: Target,
    /// Empty: every port of the target.
    pub ports: Vec<u16>,
    /// `None`: any traffic on the port (the rule also applies at L4).
    pub http: Option<HttpMatch>,
    /// Overrides the policy's mode for what this rule decides.
    pub mode: Option<Mode>,
    /// Where the rule starts in the file, for `explain` and logs.
    pub at: Position,
}

/// HTTP conditions of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpMatch {
    /// Uppercase method names; empty: any method.
    pub methods: Vec<String>,
    /// Empty: any path.
    pub paths: Vec<PathPattern>,
}

/// A path condition, matched against the normalized request path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathPattern {
    /// `/status`: exactly this path.
    Exact(String),
    /// `/api/*`: this prefix followed by anything (stored as `/api/`).
    Prefix(String),
}

impl PathPattern {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => p == path,
            PathPattern::Prefix(prefix) => path.starts_with(prefix.as_str()),
        }
    }
}

/// What kubelet may reach without mTLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub port: u16,
    /// Empty: the whole port (TCP probes); otherwise only these HTTP paths.
    pub paths: Vec<PathPattern>,
    pub at: Position,
}
