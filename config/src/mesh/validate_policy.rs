//! From the raw policy keys (`mode`, `roles`, `probes`, `allow`, `deny`) to
//! a [`Policy`], checked against the already validated services. Like
//! `validate`, the first error in file order wins; what is legal but
//! probably a mistake becomes a [`MeshWarning`] instead.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_saphyr::{Location, Spanned};

use super::error::{clamp, suggest};
use super::raw::{RawMode, RawPolicy, RawProbe, RawRule};
use super::validate::check_identity;
use super::{MeshError, MeshWarning, Position, Protocol, Service};
use crate::policy::{
    HttpMatch, IdentityPattern, Mode, PathPattern, Policy, Probe, Role, Rule, Target,
};
use crate::spiffe::{SpiffeId, SpiffeIdError, TrustDomain, is_dns_label};

/// `to: role:NAME` targets a role instead of a service.
const ROLE_TARGET: &str = "role:";

/// Path segments a wildcard member needs before its `/*`: enough to name at
/// least a namespace (`spiffe://td/ns/shop/*`), never the whole trust domain.
const MIN_WILDCARD_PREFIX_SEGMENTS: usize = 2;

/// Rule pairs the duplicate and shadow warnings may compare (allow rules
/// times allow and deny rules); beyond it those warnings are skipped.
const MAX_WARNING_PAIRS: usize = 1 << 20;

/// What validating rules needs to look up.
struct Ctx<'a> {
    file: &'a str,
    services: &'a BTreeMap<String, Service>,
    roles: &'a BTreeMap<String, Role>,
}

impl Ctx<'_> {
    fn at(&self, location: Location) -> Position {
        Position::at(self.file, location)
    }
}

pub(super) fn validate(
    raw: RawPolicy,
    trust_domain: &TrustDomain,
    services: &BTreeMap<String, Service>,
    file: &str,
) -> Result<(Policy, Vec<MeshWarning>), MeshError> {
    let mut warnings = Vec::new();
    let roles = check_roles(raw.roles.0, trust_domain, file, &mut warnings)?;
    let probes = check_probes(raw.probes, services, file, &mut warnings)?;

    let ctx = Ctx {
        file,
        services,
        roles: &roles,
    };
    // Rule names are unique across allow and deny: (kind, line) of each.
    let mut names: HashMap<String, (&'static str, u32)> = HashMap::new();
    let mut check_all = |kind, raw: Vec<Spanned<RawRule>>| {
        let mut rules = Vec::with_capacity(raw.len());
        for (index, rule) in raw.into_iter().enumerate() {
            rules.push(check_rule(&ctx, kind, index + 1, rule, &mut names)?);
        }
        Ok::<_, MeshError>(rules)
    };
    let allow = check_all("allow", raw.allow)?;
    let deny = check_all("deny", raw.deny)?;

    let policy = Policy {
        mode: raw.mode.map_or(Mode::Enforce, mode),
        roles,
        allow,
        deny,
        probes,
    };
    rule_warnings(&policy, &mut warnings);
    // Role and probe warnings come first; keep the whole list in file order.
    warnings.sort_by_key(|w| (w.at().line, w.at().column));
    Ok((policy, warnings))
}

fn mode(raw: RawMode) -> Mode {
    match raw {
        RawMode::Enforce => Mode::Enforce,
        RawMode::Audit => Mode::Audit,
    }
}

fn check_roles(
    raw: Vec<(Spanned<String>, Vec<Spanned<String>>)>,
    trust_domain: &TrustDomain,
    file: &str,
    warnings: &mut Vec<MeshWarning>,
) -> Result<BTreeMap<String, Role>, MeshError> {
    let at = |location: Location| Position::at(file, location);
    let mut roles = BTreeMap::new();
    for (name, raw_members) in raw {
        let role = name.value;
        if roles.contains_key(&role) {
            return Err(MeshError::DuplicateKey {
                at: at(name.referenced),
                key: role,
            });
        }
        if !is_dns_label(&role) {
            return Err(MeshError::RoleName {
                at: at(name.referenced),
                name: role,
            });
        }
        if raw_members.is_empty() {
            return Err(MeshError::EmptyRole {
                at: at(name.referenced),
                role,
            });
        }
        let mut members = Vec::with_capacity(raw_members.len());
        let mut first_seen: HashMap<IdentityPattern, u32> = HashMap::new();
        for member in raw_members {
            let pattern = check_pattern(&member.value, trust_domain).map_err(|error| {
                let (at, role, member) =
                    (at(member.referenced), role.clone(), member.value.clone());
                match error {
                    PatternError::Id(error) => MeshError::RoleMember {
                        at,
                        role,
                        member,
                        error: Box::new(error),
                    },
                    PatternError::Placement => MeshError::WildcardPlacement { at, role, member },
                    PatternError::TooBroad => MeshError::WildcardTooBroad { at, role, member },
                }
            })?;
            let line = clamp(member.referenced.line());
            if let Some(&first_line) = first_seen.get(&pattern) {
                warnings.push(MeshWarning::DuplicateRoleMember {
                    at: at(member.referenced),
                    role: role.clone(),
                    member: member.value,
                    first_line,
                });
                continue;
            }
            first_seen.insert(pattern.clone(), line);
            members.push(pattern);
        }
        let role_at = at(name.referenced);
        roles.insert(
            role.clone(),
            Role {
                name: role,
                members,
                at: role_at,
            },
        );
    }
    Ok(roles)
}

enum PatternError {
    Id(SpiffeIdError),
    /// `*` anywhere but a trailing `/*`.
    Placement,
    /// `spiffe://td/*` or `spiffe://td/ns/*`.
    TooBroad,
}

/// An exact workload identity, or `<id>/*` for every ID one segment below
/// `<id>`, where `<id>` has at least [`MIN_WILDCARD_PREFIX_SEGMENTS`] segments.
fn check_pattern(text: &str, trust_domain: &TrustDomain) -> Result<IdentityPattern, PatternError> {
    if !text.contains('*') {
        return check_identity(text, trust_domain)
            .map(IdentityPattern::Exact)
            .map_err(PatternError::Id);
    }
    let Some(base) = text.strip_suffix("/*").filter(|base| !base.contains('*')) else {
        return Err(PatternError::Placement);
    };
    let id = SpiffeId::parse(base).map_err(PatternError::Id)?;
    id.require_trust_domain(trust_domain)
        .map_err(PatternError::Id)?;
    // The path is empty or starts with `/`, so this counts its segments.
    if id.path().matches('/').count() < MIN_WILDCARD_PREFIX_SEGMENTS {
        return Err(PatternError::TooBroad);
    }
    Ok(IdentityPattern::Segment(format!("{base}/")))
}

fn check_probes(
    raw: Vec<Spanned<RawProbe>>,
    services: &BTreeMap<String, Service>,
    file: &str,
    warnings: &mut Vec<MeshWarning>,
) -> Result<Vec<Probe>, MeshError> {
    let at = |location: Location| Position::at(file, location);
    let mut probes = Vec::with_capacity(raw.len());
    let mut first_seen: HashMap<u16, u32> = HashMap::new();
    for probe in raw {
        let port = probe.value.port;
        if port.value == 0 {
            return Err(MeshError::ProbePortZero {
                at: at(port.referenced),
            });
        }
        if let Some(first_line) = first_seen.insert(port.value, clamp(port.referenced.line())) {
            return Err(MeshError::DuplicateProbePort {
                at: at(port.referenced),
                port: port.value,
                first_line,
            });
        }
        let owner = format!("probe on port {}", port.value);
        let paths = check_paths(&probe.value.paths, &owner, file)?;
        let declared = services.values().any(|s| s.port(port.value).is_some());
        if !declared {
            warnings.push(MeshWarning::UndeclaredProbePort {
                at: at(port.referenced),
                port: port.value,
            });
        }
        probes.push(Probe {
            port: port.value,
            paths,
            at: at(probe.referenced),
        });
    }
    Ok(probes)
}

fn check_rule(
    ctx: &Ctx<'_>,
    kind: &'static str,
    index: usize,
    raw: Spanned<RawRule>,
    names: &mut HashMap<String, (&'static str, u32)>,
) -> Result<Rule, MeshError> {
    let rule_at = ctx.at(raw.referenced);
    let raw = raw.value;
    let Some(name) = raw.name.filter(|n| !n.value.is_empty()) else {
        return Err(MeshError::RuleNameMissing {
            at: rule_at,
            kind,
            index,
        });
    };
    let line = clamp(name.referenced.line());
    if let Some(&(first_kind, first_line)) = names.get(&name.value) {
        return Err(MeshError::DuplicateRuleName {
            at: ctx.at(name.referenced),
            name: name.value,
            first_kind,
            first_line,
        });
    }
    names.insert(name.value.clone(), (kind, line));
    let rule = name.value;

    if raw.from.is_empty() {
        return Err(MeshError::EmptyFrom { at: rule_at, rule });
    }
    let mut from = Vec::with_capacity(raw.from.len());
    for role in raw.from {
        from.push(check_role_ref(ctx, &rule, role)?);
    }

    let to = match raw.to.value.strip_prefix(ROLE_TARGET) {
        Some(role) => {
            let role = Spanned::new(role.to_string(), raw.to.referenced, raw.to.defined);
            Target::Role(check_role_ref(ctx, &rule, role)?)
        }
        None if ctx.services.contains_key(&raw.to.value) => Target::Service(raw.to.value),
        None => {
            let known: Vec<String> = ctx.services.keys().cloned().collect();
            return Err(MeshError::UnknownService {
                at: ctx.at(raw.to.referenced),
                rule,
                suggestion: suggest(&raw.to.value, &known),
                service: raw.to.value,
            });
        }
    };
    let service = match &to {
        Target::Service(name) => ctx.services.get(name),
        Target::Role(_) => None,
    };

    let mut ports = Vec::with_capacity(raw.ports.len());
    for port in &raw.ports {
        if port.value == 0 {
            return Err(MeshError::RulePortZero {
                at: ctx.at(port.referenced),
                rule,
            });
        }
        if let Some(service) = service {
            match service.port(port.value) {
                None => {
                    let declared: Vec<String> =
                        service.ports.iter().map(|p| p.port.to_string()).collect();
                    return Err(MeshError::UndeclaredPort {
                        at: ctx.at(port.referenced),
                        rule,
                        service: service.name.clone(),
                        port: port.value,
                        declared: declared.join(", "),
                    });
                }
                Some(spec) if spec.protocol == Protocol::Tcp && raw.http.is_some() => {
                    return Err(MeshError::HttpOnTcpPort {
                        at: ctx.at(port.referenced),
                        rule,
                        service: service.name.clone(),
                        port: port.value,
                    });
                }
                Some(_) => {}
            }
        }
        ports.push(port.value);
    }

    let http = match raw.http {
        None => None,
        Some(http) => {
            if let Some(service) = service
                && ports.is_empty()
                && service.ports.iter().all(|p| p.protocol == Protocol::Tcp)
            {
                return Err(MeshError::HttpOnTcpService {
                    at: ctx.at(http.referenced),
                    rule,
                    service: service.name.clone(),
                });
            }
            let mut methods = Vec::with_capacity(http.value.methods.len());
            for method in http.value.methods {
                if method.value.is_empty() || !method.value.bytes().all(|b| b.is_ascii_uppercase())
                {
                    return Err(MeshError::Method {
                        at: ctx.at(method.referenced),
                        rule,
                        method: method.value,
                    });
                }
                methods.push(method.value);
            }
            let paths = check_paths(&http.value.paths, &format!("rule {rule:?}"), ctx.file)?;
            Some(HttpMatch { methods, paths })
        }
    };

    Ok(Rule {
        name: rule,
        from,
        to,
        ports,
        http,
        mode: raw.mode.map(mode),
        at: rule_at,
    })
}

fn check_role_ref(ctx: &Ctx<'_>, rule: &str, role: Spanned<String>) -> Result<String, MeshError> {
    if ctx.roles.contains_key(&role.value) {
        return Ok(role.value);
    }
    let known: Vec<String> = ctx.roles.keys().cloned().collect();
    Err(MeshError::UnknownRole {
        at: ctx.at(role.referenced),
        rule: rule.to_string(),
        suggestion: suggest(&role.value, &known),
        role: role.value,
    })
}

fn check_paths(
    raw: &[Spanned<String>],
    owner: &str,
    file: &str,
) -> Result<Vec<PathPattern>, MeshError> {
    raw.iter()
        .map(|path| {
            check_path(&path.value).map_err(|reason| MeshError::Path {
                at: Position::at(file, path.referenced),
                owner: owner.to_string(),
                path: path.value.clone(),
                reason,
            })
        })
        .collect()
}

/// A path pattern as the engine matches it: written normalized, because it
/// is compared with normalized request paths byte for byte.
fn check_path(text: &str) -> Result<PathPattern, &'static str> {
    if !text.starts_with('/') {
        return Err("does not start with `/`");
    }
    if text.contains(['?', '#']) {
        return Err("contains a query or fragment (`?`, `#`); paths are matched without them");
    }
    if text.contains('%') {
        return Err(
            "contains `%`; request paths are decoded before matching, so write the decoded form",
        );
    }
    if text
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("contains a space or control character");
    }
    let (body, prefix) = match text.strip_suffix("/*") {
        Some(body) => (format!("{body}/"), true),
        None => (text.to_string(), false),
    };
    if body.contains('*') {
        return Err("has `*` somewhere other than a trailing `/*`");
    }
    let segments: Vec<&str> = body[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() && i != last {
            return Err("contains `//`");
        }
        if *segment == "." || *segment == ".." {
            return Err("contains a `.` or `..` segment");
        }
    }
    Ok(if prefix {
        PathPattern::Prefix(body)
    } else {
        PathPattern::Exact(body)
    })
}

/// Statically decidable mistakes between rules: an allow rule repeating an
/// earlier one, an allow rule a deny rule fully covers, a deny in audit mode.
fn rule_warnings(policy: &Policy, warnings: &mut Vec<MeshWarning>) {
    let line = |rule: &Rule| rule.at.line;
    let effective = |rule: &Rule| rule.mode.unwrap_or(policy.mode);
    let (allows, denies) = (policy.allow.len(), policy.deny.len());
    let pairs = allows.saturating_mul(allows.saturating_add(denies));
    // Pairwise and best effort: skipped, not failed, on huge rule sets.
    let compared = if pairs <= MAX_WARNING_PAIRS {
        policy.allow.as_slice()
    } else {
        &[]
    };
    for (i, rule) in compared.iter().enumerate() {
        let earlier = &policy.allow[..i];
        let same = |other: &&Rule| {
            covers(other, rule) && covers(rule, other) && effective(other) == effective(rule)
        };
        if let Some(other) = earlier.iter().find(same) {
            warnings.push(MeshWarning::DuplicateAllow {
                at: rule.at.clone(),
                rule: rule.name.clone(),
                other: other.name.clone(),
                other_line: line(other),
            });
        }
        // A deny rule being tried out (`mode: audit` on it) shadows nothing
        // yet; under a global `mode: audit` the shadowing is what enforce
        // will do, so it is reported.
        let enforced = |deny: &&Rule| deny.mode != Some(Mode::Audit);
        let shadowing = policy
            .deny
            .iter()
            .filter(enforced)
            .find(|deny| covers(deny, rule));
        if let Some(deny) = shadowing {
            warnings.push(MeshWarning::ShadowedAllow {
                at: rule.at.clone(),
                rule: rule.name.clone(),
                deny: deny.name.clone(),
                deny_line: line(deny),
            });
        }
    }
    for rule in &policy.deny {
        if rule.mode == Some(Mode::Audit) {
            warnings.push(MeshWarning::AuditDeny {
                at: rule.at.clone(),
                rule: rule.name.clone(),
            });
        }
    }
}

/// Whether every request `inner` matches, `outer` matches too, as far as
/// can be told from the rules alone (same roles by name, same target).
fn covers(outer: &Rule, inner: &Rule) -> bool {
    let set = |v: &[String]| v.iter().cloned().collect::<BTreeSet<_>>();
    let ports = |v: &[u16]| v.iter().copied().collect::<BTreeSet<_>>();
    outer.to == inner.to
        && set(&inner.from).is_subset(&set(&outer.from))
        && (outer.ports.is_empty()
            || (!inner.ports.is_empty() && ports(&inner.ports).is_subset(&ports(&outer.ports))))
        && match (&outer.http, &inner.http) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(o), Some(i)) => http_covers(o, i),
        }
}

fn http_covers(outer: &HttpMatch, inner: &HttpMatch) -> bool {
    let methods = outer.methods.is_empty()
        || (!inner.methods.is_empty() && inner.methods.iter().all(|m| outer.methods.contains(m)));
    let paths = outer.paths.is_empty()
        || (!inner.paths.is_empty()
            && inner
                .paths
                .iter()
                .all(|i| outer.paths.iter().any(|o| path_covers(o, i))));
    methods && paths
}

fn path_covers(outer: &PathPattern, inner: &PathPattern) -> bool {
    match (outer, inner) {
        (PathPattern::Exact(o), PathPattern::Exact(i)) => o == i,
        (PathPattern::Exact(_), PathPattern::Prefix(_)) => false,
        (PathPattern::Prefix(o), PathPattern::Exact(i) | PathPattern::Prefix(i)) => {
            i.starts_with(o.as_str())
        }
    }
}
