use std::collections::BTreeMap;

use super::*;
use crate::mesh::{PortSpec, Protocol};
use crate::policy::model::{HttpMatch, IdentityPattern, Probe, Role};

fn at() -> Position {
    Position {
        file: "mesh.yaml".into(),
        line: 1,
        column: 1,
    }
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://td/ns/{s}")).unwrap()
}

fn services(names: &[&str]) -> BTreeMap<String, Service> {
    names
        .iter()
        .map(|n| {
            let svc = Service {
                name: n.to_string(),
                identity: id(&format!("shop/sa/{n}")),
                endpoints: vec!["127.0.0.1:1".parse().unwrap()],
                ports: vec![
                    PortSpec {
                        port: 8080,
                        protocol: Protocol::Http,
                    },
                    PortSpec {
                        port: 5432,
                        protocol: Protocol::Tcp,
                    },
                ],
            };
            (n.to_string(), svc)
        })
        .collect()
}

fn role(name: &str, members: &[&str]) -> (String, Role) {
    let members = members
        .iter()
        .map(|m| match m.strip_suffix('*') {
            Some(prefix) => IdentityPattern::Segment(format!("spiffe://td/ns/{prefix}")),
            None => IdentityPattern::Exact(id(m)),
        })
        .collect();
    (
        name.to_string(),
        Role {
            name: name.to_string(),
            members,
            at: at(),
        },
    )
}

fn rule(
    name: &str,
    from: &[&str],
    to: &str,
    ports: &[u16],
    http: Option<(&[&str], &[&str])>,
) -> Rule {
    let to = match to.strip_prefix("role:") {
        Some(r) => Target::Role(r.to_string()),
        None => Target::Service(to.to_string()),
    };
    let path = |p: &&str| match p.strip_suffix('*') {
        Some(prefix) => PathPattern::Prefix(prefix.to_string()),
        None => PathPattern::Exact(p.to_string()),
    };
    Rule {
        name: name.into(),
        from: from.iter().map(|s| s.to_string()).collect(),
        to,
        ports: ports.to_vec(),
        http: http.map(|(m, p)| HttpMatch {
            methods: m.iter().map(|s| s.to_string()).collect(),
            paths: p.iter().map(path).collect(),
        }),
        mode: None,
        at: at(),
    }
}

fn l4<'a>(from: &'a SpiffeId, service: &'a str, port: u16) -> Request<'a> {
    Request {
        from,
        service,
        port,
        http: None,
    }
}

fn l7<'a>(from: &'a SpiffeId, service: &'a str, method: &'a str, path: &'a str) -> Request<'a> {
    Request {
        from,
        service,
        port: 8080,
        http: Some(HttpRequest { method, path }),
    }
}

fn base_policy() -> Policy {
    Policy {
        roles: [
            role("frontend", &["shop/sa/web", "edge/sa/*"]),
            role("backend", &["shop/sa/orders"]),
        ]
        .into(),
        allow: vec![
            rule(
                "web-reads-orders",
                &["frontend"],
                "orders",
                &[8080],
                Some((&["GET", "HEAD"], &["/api/*", "/status"])),
            ),
            rule("orders-to-db", &["backend"], "db", &[5432], None),
        ],
        deny: vec![rule(
            "no-admin",
            &["frontend"],
            "orders",
            &[],
            Some((&[], &["/api/admin/*"])),
        )],
        ..Policy::default()
    }
}

#[test]
fn default_deny_and_first_matching_allow() {
    let engine = Engine::compile(&base_policy(), &services(&["orders", "db", "web"])).unwrap();
    let web = id("shop/sa/web");
    let orders = id("shop/sa/orders");
    let d = engine.decide(&l7(&web, "orders", "GET", "/api/items"));
    assert_eq!(
        (d.verdict, d.rule_label()),
        (Verdict::Allow, "web-reads-orders")
    );
    assert_eq!(
        engine
            .decide(&l7(&web, "orders", "POST", "/api/items"))
            .verdict,
        Verdict::Deny
    );
    assert_eq!(
        engine
            .decide(&l7(&web, "orders", "GET", "/other"))
            .rule_label(),
        "default"
    );
    let d = engine.decide(&l4(&orders, "db", 5432));
    assert_eq!(
        (d.verdict, d.rule_label()),
        (Verdict::Allow, "orders-to-db")
    );
    assert_eq!(engine.decide(&l4(&web, "db", 5432)).verdict, Verdict::Deny);
    assert_eq!(
        engine.decide(&l4(&orders, "db", 5433)).verdict,
        Verdict::Deny
    );
    assert_eq!(
        engine.decide(&l4(&orders, "unknown", 5432)).verdict,
        Verdict::Deny
    );
}

#[test]
fn deny_wins_whatever_the_order() {
    let engine = Engine::compile(&base_policy(), &services(&["orders"])).unwrap();
    let web = id("shop/sa/web");
    let d = engine.decide(&l7(&web, "orders", "GET", "/api/admin/users"));
    assert_eq!((d.verdict, d.rule_label()), (Verdict::Deny, "no-admin"));
}

#[test]
fn segment_wildcards_cover_exactly_one_segment() {
    let engine = Engine::compile(&base_policy(), &services(&["orders"])).unwrap();
    let edge = id("edge/sa/gateway");
    assert_eq!(
        engine
            .decide(&l7(&edge, "orders", "GET", "/status"))
            .verdict,
        Verdict::Allow
    );
    let deeper = SpiffeId::parse("spiffe://td/ns/edge/sa/gateway/extra").unwrap();
    assert_eq!(
        engine
            .decide(&l7(&deeper, "orders", "GET", "/status"))
            .verdict,
        Verdict::Deny
    );
    let sibling = id("edgy/sa/gateway");
    assert_eq!(
        engine
            .decide(&l7(&sibling, "orders", "GET", "/status"))
            .verdict,
        Verdict::Deny
    );
}

#[test]
fn l4_admits_http_only_when_only_http_rules_allow() {
    let engine = Engine::compile(&base_policy(), &services(&["orders", "db"])).unwrap();
    let web = id("shop/sa/web");
    let d = engine.decide(&l4(&web, "orders", 8080));
    assert_eq!((d.verdict, d.requires_http), (Verdict::Allow, true));
    // The HTTP-conditioned deny does not refuse the connection itself.
    assert_eq!(
        engine.decide(&l4(&web, "orders", 5432)).verdict,
        Verdict::Deny
    );
    let orders = id("shop/sa/orders");
    assert!(!engine.decide(&l4(&orders, "db", 5432)).requires_http);
}

#[test]
fn audit_mode_globally_and_per_rule() {
    let mut policy = base_policy();
    policy.mode = Mode::Audit;
    let engine = Engine::compile(&policy, &services(&["orders", "db"])).unwrap();
    let web = id("shop/sa/web");
    let d = engine.decide(&l4(&web, "db", 5432));
    assert_eq!((d.verdict, d.rule_label()), (Verdict::AuditDeny, "default"));
    assert!(d.verdict.passes());

    let mut policy = base_policy();
    policy.deny[0].mode = Some(Mode::Audit);
    let engine = Engine::compile(&policy, &services(&["orders", "db"])).unwrap();
    let d = engine.decide(&l7(&web, "orders", "GET", "/api/admin/x"));
    assert_eq!(
        (d.verdict, d.rule_label()),
        (Verdict::AuditDeny, "no-admin")
    );
    assert_eq!(engine.decide(&l4(&web, "db", 5432)).verdict, Verdict::Deny);
}

#[test]
fn role_targets_and_probes() {
    let mut policy = base_policy();
    policy.allow.push(rule(
        "ops-everywhere",
        &["backend"],
        "role:frontend",
        &[],
        None,
    ));
    policy.probes = vec![
        Probe {
            port: 8080,
            paths: vec![PathPattern::Exact("/healthz".into())],
            at: at(),
        },
        Probe {
            port: 9000,
            paths: vec![],
            at: at(),
        },
    ];
    let engine = Engine::compile(&policy, &services(&["orders", "web"])).unwrap();
    let orders = id("shop/sa/orders");
    assert_eq!(
        engine.decide(&l4(&orders, "web", 8080)).rule_label(),
        "ops-everywhere"
    );
    assert_eq!(
        engine.decide(&l4(&orders, "orders", 8080)).verdict,
        Verdict::Deny
    );
    assert!(engine.is_probe(8080, Some("/healthz")));
    assert!(!engine.is_probe(8080, Some("/api")));
    assert!(!engine.is_probe(8080, None));
    assert!(engine.is_probe(9000, None));
}

#[test]
fn explain_names_the_failed_conditions() {
    let engine = Engine::compile(&base_policy(), &services(&["orders", "db"])).unwrap();
    let web = id("shop/sa/web");
    let explained = engine.explain(&l7(&web, "orders", "POST", "/api/items"));
    let (nearest, failed) = &explained[0];
    assert_eq!(nearest.name, "web-reads-orders");
    assert_eq!(failed, &vec![Condition::Method]);
}

/// A small deterministic generator (xorshift): reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// The semantics written as plainly as possible, independently of the
/// engine's index and scan order: enforcing denies win; audit denies only
/// mark an allow; HTTP conditions never apply on tcp ports; at L4 a
/// possible HTTP deny, or an HTTP-only allow, means `requires_http`.
fn reference<'a>(
    policy: &'a Policy,
    svcs: &BTreeMap<String, Service>,
    req: &Request<'_>,
) -> (Verdict, Option<&'a str>, bool) {
    let in_role = |r: &str, id: &SpiffeId| {
        policy
            .roles
            .get(r)
            .is_some_and(|r| r.members.iter().any(|m| m.matches(id)))
    };
    let opaque = svcs.get(req.service).is_some_and(|s| {
        s.ports
            .iter()
            .any(|p| p.port == req.port && p.protocol == Protocol::Tcp)
    });
    let base = |r: &Rule| {
        r.from.iter().any(|f| in_role(f, req.from))
            && match &r.to {
                Target::Service(s) => s == req.service,
                Target::Role(role) => svcs
                    .get(req.service)
                    .is_some_and(|s| in_role(role, &s.identity)),
            }
            && (r.ports.is_empty() || r.ports.contains(&req.port))
            && !(r.http.is_some() && opaque)
    };
    let http_ok = |r: &Rule| match (&r.http, req.http) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(h), Some(q)) => {
            (h.methods.is_empty() || h.methods.iter().any(|m| m == q.method))
                && (h.paths.is_empty() || h.paths.iter().any(|p| p.matches(q.path)))
        }
    };
    let audit = |r: &Rule| {
        r.mode
            .map_or(policy.mode == Mode::Audit, |m| m == Mode::Audit)
    };
    if let Some(r) = policy
        .deny
        .iter()
        .find(|r| base(r) && http_ok(r) && !audit(r))
    {
        return (Verdict::Deny, Some(&r.name), false);
    }
    let audit_deny = policy
        .deny
        .iter()
        .find(|r| base(r) && http_ok(r) && audit(r));
    let pending = req.http.is_none() && policy.deny.iter().any(|r| base(r) && r.http.is_some());
    let admit = |allow: &'a Rule, requires_http: bool| match audit_deny {
        Some(d) => (Verdict::AuditDeny, Some(d.name.as_str()), requires_http),
        None => (Verdict::Allow, Some(allow.name.as_str()), requires_http),
    };
    if let Some(r) = policy.allow.iter().find(|r| base(r) && http_ok(r)) {
        return admit(r, pending);
    }
    if let (None, Some(r)) = (
        req.http,
        policy.allow.iter().find(|r| base(r) && r.http.is_some()),
    ) {
        return admit(r, true);
    }
    (
        if policy.mode == Mode::Audit {
            Verdict::AuditDeny
        } else {
            Verdict::Deny
        },
        None,
        false,
    )
}

#[test]
fn an_audit_deny_never_opens_what_would_be_denied_and_never_beats_an_enforcing_deny() {
    let mut policy = base_policy();
    let mut audit = rule("audit-all", &["frontend"], "orders", &[], None);
    audit.mode = Some(Mode::Audit);
    let enforce = rule("block-all", &["frontend"], "db", &[], None);
    policy.deny = vec![audit.clone(), enforce.clone()];
    let engine = Engine::compile(&policy, &services(&["orders", "db"])).unwrap();
    let web = id("shop/sa/web");
    // Matches an allow: let through, but marked.
    let d = engine.decide(&l7(&web, "orders", "GET", "/api/x"));
    assert_eq!(
        (d.verdict, d.rule_label()),
        (Verdict::AuditDeny, "audit-all")
    );
    // No allow: still denied by default.
    assert_eq!(
        engine.decide(&l7(&web, "orders", "POST", "/api/x")).verdict,
        Verdict::Deny
    );
    // Whatever the order, the enforcing deny wins.
    let mut both = rule("audit-db", &["frontend"], "db", &[], None);
    both.mode = Some(Mode::Audit);
    for deny in [
        vec![both.clone(), enforce.clone()],
        vec![enforce.clone(), both.clone()],
    ] {
        policy.deny = deny;
        policy
            .allow
            .push(rule("web-db", &["frontend"], "db", &[], None));
        let engine = Engine::compile(&policy, &services(&["orders", "db"])).unwrap();
        let d = engine.decide(&l4(&web, "db", 5432));
        assert_eq!((d.verdict, d.rule_label()), (Verdict::Deny, "block-all"));
    }
}

#[test]
fn http_conditions_never_apply_on_tcp_ports() {
    let mut policy = base_policy();
    // An HTTP-only allow without ports must not open the tcp port 5432.
    policy.allow.push(rule(
        "web-http-anything",
        &["frontend"],
        "orders",
        &[],
        Some((&[], &["/x"])),
    ));
    let engine = Engine::compile(&policy, &services(&["orders"])).unwrap();
    let web = id("shop/sa/web");
    assert_eq!(
        engine.decide(&l4(&web, "orders", 5432)).verdict,
        Verdict::Deny
    );
}

#[test]
fn a_possible_http_deny_makes_the_connection_http_only() {
    let mut policy = base_policy();
    policy
        .allow
        .push(rule("web-all", &["frontend"], "orders", &[8080], None));
    let engine = Engine::compile(&policy, &services(&["orders"])).unwrap();
    let web = id("shop/sa/web");
    let d = engine.decide(&l4(&web, "orders", 8080));
    // "no-admin" (HTTP deny) could apply: opaque bytes must not pass.
    assert_eq!(
        (d.verdict, d.rule_label(), d.requires_http),
        (Verdict::Allow, "web-all", true)
    );
}

#[test]
fn oversized_policies_are_refused_at_compile_time() {
    let mut policy = base_policy();
    let members: Vec<String> = (0..3_000).map(|i| format!("shop/sa/m{i}")).collect();
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    policy.roles.insert("huge".into(), role("huge", &refs).1);
    policy.allow = (0..2_000)
        .map(|i| rule(&format!("r{i}"), &["huge"], "orders", &[], None))
        .collect();
    let result = Engine::compile(&policy, &services(&["orders"]));
    assert!(matches!(result, Err(PolicyTooLarge(n)) if n >= 6_000_000));
}

#[test]
fn indexed_engine_agrees_with_the_reference_on_random_policies() {
    let names = ["a", "b", "c", "d"];
    let svcs = services(&names);
    let idents = [
        "shop/sa/a",
        "shop/sa/b",
        "shop/sa/c",
        "shop/sa/d",
        "edge/sa/x",
        "edge/sa/y",
    ];
    let members = [
        "shop/sa/a",
        "shop/sa/b",
        "shop/sa/c",
        "edge/sa/*",
        "shop/sa/*",
        "edge/sa/x",
    ];
    let methods = ["GET", "POST", "DELETE"];
    let paths = ["/api/*", "/api/admin/*", "/status", "/"];
    let reqs = ["/api/x", "/api/admin/y", "/status", "/", "/other"];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut checked = 0;
    for _ in 0..300 {
        let roles: BTreeMap<String, Role> = (0..3)
            .map(|i| {
                let picked: Vec<&str> = (0..1 + rng.next() % 3)
                    .map(|_| rng.pick(&members))
                    .collect();
                role(&format!("r{i}"), &picked)
            })
            .collect();
        let make_rule = |rng: &mut Rng, n: usize| {
            let from = [format!("r{}", rng.next() % 3)];
            let to = if rng.chance(20) {
                format!("role:r{}", rng.next() % 3)
            } else {
                rng.pick(&names).to_string()
            };
            let ports: Vec<u16> = if rng.chance(50) {
                vec![rng.pick(&[8080u16, 5432])]
            } else {
                vec![]
            };
            let m: Vec<&str> = if rng.chance(50) {
                vec![rng.pick(&methods)]
            } else {
                vec![]
            };
            let p: Vec<&str> = if rng.chance(50) {
                vec![rng.pick(&paths)]
            } else {
                vec![]
            };
            let http = rng.chance(50).then_some((m.as_slice(), p.as_slice()));
            let mut r = rule(&format!("rule{n}"), &[from[0].as_str()], &to, &ports, http);
            if rng.chance(15) {
                r.mode = Some(Mode::Audit);
            }
            r
        };
        let allow = (0..1 + rng.next() % 6)
            .map(|n| make_rule(&mut rng, n as usize))
            .collect();
        let deny = (0..rng.next() % 3)
            .map(|n| make_rule(&mut rng, 100 + n as usize))
            .collect();
        let policy = Policy {
            mode: if rng.chance(20) {
                Mode::Audit
            } else {
                Mode::Enforce
            },
            roles,
            allow,
            deny,
            probes: vec![],
        };
        let engine = Engine::compile(&policy, &svcs).unwrap();
        for _ in 0..40 {
            let from = id(rng.pick(&idents));
            let service = rng.pick(&names);
            let port = rng.pick(&[8080u16, 5432]);
            let http = rng.chance(60).then(|| HttpRequest {
                method: rng.pick(&methods),
                path: rng.pick(&reqs),
            });
            let req = Request {
                from: &from,
                service,
                port,
                http,
            };
            let got = engine.decide(&req);
            let want = reference(&policy, &svcs, &req);
            assert_eq!(
                (
                    got.verdict,
                    got.rule.map(|r| r.name.as_str()),
                    got.requires_http
                ),
                want,
                "{req:?}\n{policy:#?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 12_000);
}
