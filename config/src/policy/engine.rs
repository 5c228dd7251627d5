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
use crate::mesh::{Position, Service};
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

pub struct Engine {
    rules: Vec<Compiled>,
    services: HashMap<String, ServiceIndex>,
    identities: HashMap<String, SpiffeId>,
    probes: HashMap<u16, Vec<PathPattern>>,
    audit: bool,
    policy: Policy,
}

impl Engine {
    pub fn compile(
        policy: &Policy,
        services: &std::collections::BTreeMap<String, Service>,
    ) -> Self {
        let audit = policy.mode == Mode::Audit;
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
        engine
    }

    /// Decides one connection (`http: None`) or request.
    pub fn decide(&self, req: &Request<'_>) -> Decision<'_> {
        let candidates = self.candidates(req);
        let mut requires_http = false;
        let mut allowed_by_http_rule = None;
        for &id in &candidates {
            let c = &self.rules[id as usize];
            if !c.ports.is_empty() && !c.ports.contains(&req.port) {
                continue;
            }
            match (req.http, c.has_http) {
                (Some(http), true) if !http_matches(c, http) => continue,
                (None, true) => {
                    // L4: an HTTP-conditioned deny cannot apply yet; an
                    // HTTP-conditioned allow admits HTTP only.
                    if c.rule.kind == RuleKind::Allow && allowed_by_http_rule.is_none() {
                        allowed_by_http_rule = Some(&c.rule);
                        requires_http = true;
                    }
                    continue;
                }
                _ => {}
            }
            return match c.rule.kind {
                RuleKind::Deny => Decision {
                    verdict: if c.audit {
                        Verdict::AuditDeny
                    } else {
                        Verdict::Deny
                    },
                    rule: Some(&c.rule),
                    requires_http: false,
                },
                RuleKind::Allow => Decision {
                    verdict: Verdict::Allow,
                    rule: Some(&c.rule),
                    requires_http: false,
                },
            };
        }
        if let Some(rule) = allowed_by_http_rule {
            return Decision {
                verdict: Verdict::Allow,
                rule: Some(rule),
                requires_http,
            };
        }
        Decision {
            verdict: if self.audit {
                Verdict::AuditDeny
            } else {
                Verdict::Deny
            },
            rule: None,
            requires_http: false,
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
