//! Cost of one policy decision against a policy of 10 and of 10,000 rules
//! (spread over 1,000 services and 2,000 roles, with wildcards), at L4 and
//! at L7. The index keeps both near-constant.
//!
//! Run: `cargo bench --bench policy_decide`

use std::collections::BTreeMap;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ward_config::SpiffeId;
use ward_config::mesh::{PortSpec, Position, Protocol, Service};
use ward_config::policy::engine::{Engine, HttpRequest, Request, Verdict};
use ward_config::policy::{HttpMatch, IdentityPattern, PathPattern, Policy, Role, Rule, Target};

fn at() -> Position {
    Position {
        file: "bench.yaml".into(),
        line: 1,
        column: 1,
    }
}

fn id(ns: usize, sa: usize) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://bench/ns/ns{ns}/sa/sa{sa}")).expect("id")
}

/// `rules` allow rules: rule i lets role i % roles reach service i % services
/// on GET /api/*; every tenth role member is a namespace wildcard.
fn policy(rules: usize) -> (Policy, BTreeMap<String, Service>) {
    let n_services = (rules / 10).max(1);
    let n_roles = (rules / 5).max(1);
    let services = (0..n_services)
        .map(|i| {
            let svc = Service {
                name: format!("svc{i}"),
                identity: id(i, i),
                endpoints: vec!["127.0.0.1:1".parse().expect("addr")],
                ports: vec![PortSpec {
                    port: 8080,
                    protocol: Protocol::Http,
                }],
            };
            (svc.name.clone(), svc)
        })
        .collect();
    let roles = (0..n_roles)
        .map(|i| {
            let member = if i % 10 == 0 {
                IdentityPattern::Segment(format!("spiffe://bench/ns/ns{i}/sa/"))
            } else {
                IdentityPattern::Exact(id(i, i))
            };
            let name = format!("role{i}");
            (
                name.clone(),
                Role {
                    name,
                    members: vec![member],
                    at: at(),
                },
            )
        })
        .collect();
    let allow = (0..rules)
        .map(|i| Rule {
            name: format!("rule{i}"),
            from: vec![format!("role{}", i % n_roles)],
            to: Target::Service(format!("svc{}", i % n_services)),
            ports: vec![8080],
            http: Some(HttpMatch {
                methods: vec!["GET".into()],
                paths: vec![PathPattern::Prefix("/api/".into())],
            }),
            mode: None,
            at: at(),
        })
        .collect();
    (
        Policy {
            allow,
            roles,
            ..Policy::default()
        },
        services,
    )
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy_decide");
    for rules in [10usize, 10_000] {
        let (policy, services) = policy(rules);
        let engine = Engine::compile(&policy, &services).expect("compiles");
        // A caller that rule (rules - 1) allows, to a service in the middle.
        let last = rules - 1;
        let (n_services, n_roles) = ((rules / 10).max(1), (rules / 5).max(1));
        let from = id(last % n_roles, last % n_roles);
        let service = format!("svc{}", last % n_services);
        let l7 = Request {
            from: &from,
            service: &service,
            port: 8080,
            http: Some(HttpRequest {
                method: "GET",
                path: "/api/orders",
            }),
        };
        assert_eq!(engine.decide(&l7).verdict, Verdict::Allow);
        let stranger = id(999_999, 1);
        let denied = Request {
            from: &stranger,
            service: &service,
            port: 8080,
            http: Some(HttpRequest {
                method: "GET",
                path: "/api/orders",
            }),
        };
        assert_eq!(engine.decide(&denied).verdict, Verdict::Deny);
        group.bench_with_input(BenchmarkId::new("l7_allow", rules), &l7, |b, req| {
            b.iter(|| engine.decide(req).verdict)
        });
        group.bench_with_input(
            BenchmarkId::new("l7_default_deny", rules),
            &denied,
            |b, req| b.iter(|| engine.decide(req).verdict),
        );
        let l4 = Request { http: None, ..l7 };
        group.bench_with_input(BenchmarkId::new("l4", rules), &l4, |b, req| {
            b.iter(|| engine.decide(req).verdict)
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
