//! The compiled policy: an immutable index built once per policy version,
//! so a decision costs about the same with 10 or 10,000 rules.
//!
//! Index: destination service -> caller identity -> candidate rules. A role
//! member is an exact ID or a one-segment wildcard, so the candidates for a
//! caller are found with two hash lookups (its ID, and its ID minus the last
//! segment). Rule numbers put every deny rule before every allow rule, so
//! scanning the sorted candidates once implements "deny wins, then the first
//! allow, else default deny".
//!
//! L4 vs L7: at connection time (no HTTP request yet) deny rules with HTTP
//! conditions cannot apply, and an allow rule with HTTP conditions admits the
//! connection only for HTTP: the decision then says `requires_http`, and
//! every request is decided again with its method and normalized path.

use std::collections::HashMap;

use super::model::{Mode, PathPattern, Policy, Rule, Target};
use crate::mesh::{Position, Protocol, Service};
use crate::spiffe::SpiffeId;

/// What to do with a connection or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    /// Would be denied; let through because of audit mode, logged and counted.
    AuditDeny,
}

impl Verdict {
    /// Label for `ward_authz_decisions_total{decision}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::AuditDeny => "audit_deny",
        }
    }

    /// Whether the traffic goes through.
    pub fn passes(self) -> bool {
        self != Verdict::Deny
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Allow,
    Deny,
}

/// A rule as the decision names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub kind: RuleKind,
    pub name: String,
    pub at: Position,
}

/// An HTTP request, with its path already normalized (`path::normalize`).
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
}

/// What is being decided.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub from: &'a SpiffeId,
    pub service: &'a str,
    pub port: u16,
    /// `None`: the L4 decision at connection time.
    pub http: Option<HttpRequest<'a>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    pub verdict: Verdict,
    /// The deciding rule; `None` means no rule matched (default deny).
    pub rule: Option<&'a RuleRef>,
    /// L4 only: admitted by HTTP-conditioned rules, so non-HTTP traffic on
    /// this connection must be refused and each request decided again.
    pub requires_http: bool,
}

impl Decision<'_> {
    /// Label for `ward_authz_decisions_total{rule}`: the rule name, or
    /// `default` when no rule matched.
    pub fn rule_label(&self) -> &str {
        self.rule.map_or("default", |r| r.name.as_str())
    }
}

/// One condition of a rule, for `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    From,
    To,
    Port,
    Method,
    Path,
}

struct Compiled {
    rule: RuleRef,
    ports: Vec<u16>,
    methods: Vec<String>,
    paths: Vec<PathPattern>,
    has_http: bool,
    /// Effective mode of a deny rule.
    audit: bool,
    source: Rule,
}

#[derive(Default)]
struct ServiceIndex {
    exact: HashMap<String, Vec<u32>>,
    parent: HashMap<String, Vec<u32>>,
}

/// Upper bound on index entries (rule x target service x role member): a
/// hostile policy within the YAML budgets could otherwise ask for billions.
pub const MAX_INDEX_ENTRIES: usize = 4_000_000;

/// A policy whose compiled index would be too large.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the policy expands to {0} index entries (rules x target services x role members), more than \
     {MAX_INDEX_ENTRIES}: use namespace wildcards or fewer, larger roles"
)]
pub struct PolicyTooLarge(pub usize);

pub struct Engine {
    rules: Vec<Compiled>,
    services: HashMap<String, ServiceIndex>,
    /// Ports each service declares `tcp`: HTTP conditions never apply there.
    tcp_ports: HashMap<String, Vec<u16>>,
    identities: HashMap<String, SpiffeId>,
    probes: HashMap<u16, Vec<PathPattern>>,
    audit: bool,
    policy: Policy,
}

impl Engine {
    pub fn compile(
        policy: &Policy,
        services: &std::collections::BTreeMap<String, Service>,
    ) -> Result<Self, PolicyTooLarge> {
        let audit = policy.mode == Mode::Audit;
        let members = |rule: &Rule| -> usize {
            rule.from
                .iter()
                .filter_map(|r| policy.roles.get(r))
                .map(|r| r.members.len())
                .sum()
        };
        let entries: usize = policy
            .deny
            .iter()
            .chain(&policy.allow)
            .map(|r| {
                members(r).saturating_mul(if matches!(r.to, Target::Role(_)) {
                    services.len()
                } else {
                    1
                })
            })
            .fold(0usize, usize::saturating_add);
        if entries > MAX_INDEX_ENTRIES {
            return Err(PolicyTooLarge(entries));
        }
        let ordered = policy
            .deny
            .iter()
            .map(|r| (RuleKind::Deny, r))
            .chain(policy.allow.iter().map(|r| (RuleKind::Allow, r)));
        let mut engine = Engine {
            rules: Vec::new(),
            services: HashMap::new(),
            identities: services
                .iter()
                .map(|(n, s)| (n.clone(), s.identity.clone()))
                .collect(),
            probes: policy
                .probes
                .iter()
                .map(|p| (p.port, p.paths.clone()))
                .collect(),
            tcp_ports: services
                .iter()
                .map(|(n, s)| {
                    let tcp = s
                        .ports
                        .iter()
                        .filter(|p| p.protocol == Protocol::Tcp)
                        .map(|p| p.port);
                    (n.clone(), tcp.collect())
                })
                .collect(),
            audit,
            policy: policy.clone(),
        };
        for (id, (kind, rule)) in ordered.enumerate() {
            let id = id as u32;
            let targets: Vec<&String> = match &rule.to {
                Target::Service(name) => services.keys().filter(|k| *k == name).collect(),
                Target::Role(role) => services
                    .iter()
                    .filter(|(_, s)| role_matches(policy, role, &s.identity))
                    .map(|(n, _)| n)
                    .collect(),
            };
            for svc in targets {
                let index = engine.services.entry(svc.clone()).or_default();
                for member in rule
                    .from
                    .iter()
                    .filter_map(|r| policy.roles.get(r))
                    .flat_map(|r| &r.members)
                {
                    match member {
                        super::IdentityPattern::Exact(id_) => {
                            index.exact.entry(id_.to_string()).or_default().push(id)
                        }
                        super::IdentityPattern::Segment(prefix) => {
                            index.parent.entry(prefix.clone()).or_default().push(id)
                        }
                    }
                }
            }
            let http = rule.http.clone().unwrap_or_default();
            engine.rules.push(Compiled {
                rule: RuleRef {
                    kind,
                    name: rule.name.clone(),
                    at: rule.at.clone(),
                },
                ports: rule.ports.clone(),
                methods: http.methods,
                paths: http.paths,
                has_http: rule.http.is_some(),
                audit: rule.mode.map_or(audit, |m| m == Mode::Audit),
                source: rule.clone(),
            });
        }
        for index in engine.services.values_mut() {
            for ids in index.exact.values_mut().chain(index.parent.values_mut()) {
                ids.sort_unstable();
                ids.dedup();
            }
        }
        Ok(engine)
    }

    /// Decides one connection (`http: None`) or request.
    ///
    /// Enforcing deny rules win outright. Audit-mode deny rules never let
    /// anything through that would otherwise be denied: they only turn an
    /// allow into `audit_deny` (logged, counted, passed). HTTP conditions
    /// never apply on ports declared `tcp`. At L4, a connection admitted
    /// while an HTTP-conditioned deny could still apply (or admitted only by
    /// HTTP-conditioned allows) `requires_http`: non-HTTP bytes are refused.
    pub fn decide(&self, req: &Request<'_>) -> Decision<'_> {
        let opaque = self
            .tcp_ports
            .get(req.service)
            .is_some_and(|p| p.contains(&req.port));
        let mut audit_deny: Option<&RuleRef> = None;
        let mut http_deny_pending = false;
        let mut http_allow: Option<&RuleRef> = None;
        for &id in &self.candidates(req) {
            let c = &self.rules[id as usize];
            if (!c.ports.is_empty() && !c.ports.contains(&req.port)) || (c.has_http && opaque) {
                continue;
            }
            let applies = match (req.http, c.has_http) {
                (Some(http), true) => http_matches(c, http),
                (None, true) => {
                    match c.rule.kind {
                        RuleKind::Deny => http_deny_pending = true,
                        RuleKind::Allow => {
                            http_allow.get_or_insert(&c.rule);
                        }
                    }
                    false
                }
                _ => true,
            };
            if !applies {
                continue;
            }
            match c.rule.kind {
                RuleKind::Deny if !c.audit => {
                    return Decision {
                        verdict: Verdict::Deny,
                        rule: Some(&c.rule),
                        requires_http: false,
                    };
                }
                RuleKind::Deny => {
                    audit_deny.get_or_insert(&c.rule);
                }
                RuleKind::Allow => return self.admit(audit_deny, &c.rule, http_deny_pending),
            }
        }
        if let Some(rule) = http_allow {
            return self.admit(audit_deny, rule, true);
        }
        let verdict = if self.audit {
            Verdict::AuditDeny
        } else {
            Verdict::Deny
        };
        Decision {
            verdict,
            rule: None,
            requires_http: false,
        }
    }

    /// An allow, unless an audit-mode deny matched too.
    fn admit<'a>(
        &'a self,
        audit_deny: Option<&'a RuleRef>,
        allow: &'a RuleRef,
        requires_http: bool,
    ) -> Decision<'a> {
        match audit_deny {
            Some(deny) => Decision {
                verdict: Verdict::AuditDeny,
                rule: Some(deny),
                requires_http,
            },
            None => Decision {
                verdict: Verdict::Allow,
                rule: Some(allow),
                requires_http,
            },
        }
    }

    /// Whether kubelet may reach `port` (and `path`, for HTTP) without mTLS.
    pub fn is_probe(&self, port: u16, path: Option<&str>) -> bool {
        match (self.probes.get(&port), path) {
            (Some(paths), _) if paths.is_empty() => true,
            (Some(paths), Some(path)) => paths.iter().any(|p| p.matches(path)),
            _ => false,
        }
    }

    /// Whether `port` has probes limited to HTTP paths.
    pub fn has_probe_paths(&self, port: u16) -> bool {
        self.probes
            .get(&port)
            .is_some_and(|paths| !paths.is_empty())
    }

    /// Every rule with the conditions it fails for `req` (empty: it
    /// matches), fewest failures first.
    pub fn explain(&self, req: &Request<'_>) -> Vec<(&RuleRef, Vec<Condition>)> {
        let mut out: Vec<(&RuleRef, Vec<Condition>)> = self
            .rules
            .iter()
            .map(|c| (&c.rule, self.failed_conditions(c, req)))
            .collect();
        // At equal distance, allow rules first: "what nearly let this through".
        out.sort_by_key(|(r, failed)| (failed.len(), r.kind == RuleKind::Deny));
        out
    }

    fn failed_conditions(&self, c: &Compiled, req: &Request<'_>) -> Vec<Condition> {
        let mut failed = Vec::new();
        let from_ok = c
            .source
            .from
            .iter()
            .any(|r| role_matches(&self.policy, r, req.from));
        if !from_ok {
            failed.push(Condition::From);
        }
        let to_ok = match &c.source.to {
            Target::Service(name) => name == req.service,
            Target::Role(role) => self
                .identities
                .get(req.service)
                .is_some_and(|id| role_matches(&self.policy, role, id)),
        };
        if !to_ok {
            failed.push(Condition::To);
        }
        if !c.ports.is_empty() && !c.ports.contains(&req.port) {
            failed.push(Condition::Port);
        }
        if let (Some(http), true) = (req.http, c.has_http) {
            if !c.methods.is_empty() && !c.methods.iter().any(|m| m == http.method) {
                failed.push(Condition::Method);
            }
            if !c.paths.is_empty() && !c.paths.iter().any(|p| p.matches(http.path)) {
                failed.push(Condition::Path);
            }
        }
        failed
    }

    fn candidates(&self, req: &Request<'_>) -> Vec<u32> {
        let Some(index) = self.services.get(req.service) else {
            return Vec::new();
        };
        let id = req.from.as_str();
        let exact = index.exact.get(id).map(Vec::as_slice).unwrap_or_default();
        let parent = id
            .rfind('/')
            .and_then(|i| index.parent.get(&id[..=i]))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut all = Vec::with_capacity(exact.len() + parent.len());
        all.extend_from_slice(exact);
        all.extend_from_slice(parent);
        all.sort_unstable();
        all.dedup();
        all
    }
}

fn http_matches(c: &Compiled, http: HttpRequest<'_>) -> bool {
    (c.methods.is_empty() || c.methods.iter().any(|m| m == http.method))
        && (c.paths.is_empty() || c.paths.iter().any(|p| p.matches(http.path)))
}

fn role_matches(policy: &Policy, role: &str, id: &SpiffeId) -> bool {
    policy
        .roles
        .get(role)
        .is_some_and(|r| r.members.iter().any(|m| m.matches(id)))
}

#[cfg(test)]
mod tests;
