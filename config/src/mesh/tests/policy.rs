//! The policy keys: `mode`, `roles`, `allow`, `deny`, `probes`.

use super::*;
use crate::policy::{HttpMatch, IdentityPattern, Mode, PathPattern, Policy, Probe, Target};

/// Two services and one role; policy text appended by [`with`] starts on
/// line 14.
const BASE: &str = "trust_domain: cluster.local
services:
  orders:
    identity: spiffe://cluster.local/ns/shop/sa/orders
    endpoints: [10.1.0.7:15006]
    ports: [{port: 8080, protocol: http}, {port: 5432, protocol: tcp}]
  db:
    identity: spiffe://cluster.local/ns/shop/sa/db
    endpoints: [10.1.0.8:15006]
    ports: [{port: 5432, protocol: tcp}]
roles:
  frontend:
    - spiffe://cluster.local/ns/shop/sa/web
";

fn with(policy: &str) -> String {
    format!("{BASE}{policy}")
}

/// One allow rule `r` (named on line 15) whose body lines, indented by
/// four, start on line 16.
fn allow(body: &str) -> String {
    with(&format!("allow:\n  - name: r\n{body}"))
}

fn warnings(text: &str) -> Vec<MeshWarning> {
    match MeshConfig::parse_with_warnings(text, "mesh.yaml") {
        Ok((_, warnings)) => warnings,
        Err(err) => panic!("should be valid: {err}\n{text}"),
    }
}

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).expect("test id")
}

/// The operator reference; its first `yaml` block is the complete example.
const DOCS: &str = include_str!("../../../../docs/policy.md");

fn docs_example() -> &'static str {
    let start = DOCS
        .find("```yaml\n")
        .expect("a yaml block in docs/policy.md")
        + 8;
    let len = DOCS[start..].find("```").expect("the block ends");
    &DOCS[start..start + len]
}

#[test]
fn the_documented_example_loads() {
    let (config, warnings) =
        MeshConfig::parse_with_warnings(docs_example(), "mesh.yaml").expect("docs example");
    let policy = &config.policy;
    assert_eq!(policy.mode, Mode::Enforce);
    assert_eq!(
        policy.roles.keys().collect::<Vec<_>>(),
        ["backend", "frontend", "ops"]
    );
    assert_eq!(
        policy.roles["frontend"].members,
        [
            IdentityPattern::Exact(id("spiffe://cluster.local/ns/shop/sa/web")),
            IdentityPattern::Segment("spiffe://cluster.local/ns/web/sa/".to_string()),
        ]
    );
    assert_eq!(policy.allow.len(), 3);
    let reads = &policy.allow[0];
    assert_eq!(
        (reads.name.as_str(), &reads.from, &reads.to, &reads.ports),
        (
            "web-reads-orders",
            &vec!["frontend".to_string()],
            &Target::Service("orders".to_string()),
            &vec![8080]
        )
    );
    assert_eq!(
        reads.http,
        Some(HttpMatch {
            methods: vec!["GET".to_string(), "HEAD".to_string()],
            paths: vec![
                PathPattern::Prefix("/api/".to_string()),
                PathPattern::Exact("/status".to_string()),
            ],
        })
    );
    assert_eq!(reads.mode, None);
    assert_eq!(policy.allow[1].to, Target::Role("backend".to_string()));
    assert_eq!(policy.allow[2].mode, None);
    assert_eq!(policy.deny.len(), 1);
    assert_eq!(
        policy.probes,
        [
            Probe {
                port: 8080,
                paths: vec![
                    PathPattern::Exact("/healthz".to_string()),
                    PathPattern::Prefix("/ready/".to_string()),
                ],
                at: policy.probes[0].at.clone(),
            },
            Probe {
                port: 5432,
                paths: vec![],
                at: policy.probes[1].at.clone(),
            },
        ]
    );
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn no_policy_keys_is_the_empty_policy() {
    let config =
        MeshConfig::parse(BASE.split("roles:").next().unwrap_or(BASE), "m").expect("services only");
    assert_eq!(config.policy, Policy::default());
    let audit = MeshConfig::parse(&with("mode: audit\n"), "m").expect("audit");
    assert_eq!(audit.policy.mode, Mode::Audit);
    assert!(audit.policy.allow.is_empty() && audit.policy.deny.is_empty());
}

#[test]
fn rules_keep_file_order_and_positions() {
    let text = allow(
        "    from: [frontend]\n    to: orders\n  - name: s\n    from: [frontend]\n    to: db\n",
    );
    let config = parse(&text).expect("valid");
    let names: Vec<&str> = config
        .policy
        .allow
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, ["r", "s"]);
    assert_eq!(config.policy.allow[0].at, pos(15, 5));
    assert_eq!(config.policy.allow[1].at, pos(18, 5));
    assert_eq!(config.policy.roles["frontend"].at, pos(12, 3));
}

#[test]
fn unknown_fields_and_values_are_refused() {
    let cases = [
        (with("alow: []\n"), "alow", pos(14, 1), Some("allow")),
        (
            allow("    form: [frontend]\n    to: orders\n"),
            "form",
            pos(16, 5),
            Some("from"),
        ),
        (
            allow("    from: [frontend]\n    to: orders\n    http: {method: [GET]}\n"),
            "method",
            pos(18, 12),
            Some("methods"),
        ),
        (
            with("probes:\n  - port: 8080\n    path: [/x]\n"),
            "path",
            pos(16, 5),
            Some("paths"),
        ),
    ];
    for (text, name, position, suggestion) in cases {
        match refuse(&text) {
            MeshError::UnknownField {
                at,
                field,
                suggestion: s,
                ..
            } => {
                assert_eq!((at, field.as_str()), (position, name), "{text}");
                assert_eq!(s.as_deref(), suggestion);
            }
            other => panic!("expected UnknownField for {name}, got {other}"),
        }
    }
    match refuse(&with("mode: enfroce\n")) {
        MeshError::UnknownValue {
            at,
            expected,
            suggestion,
            ..
        } => {
            assert_eq!(at, pos(14, 7));
            assert_eq!(expected, ["enforce", "audit"]);
            assert_eq!(suggestion.as_deref(), Some("enforce"));
        }
        other => panic!("{other}"),
    }
    let rule_mode = allow("    from: [frontend]\n    to: orders\n    mode: log\n");
    assert!(matches!(refuse(&rule_mode), MeshError::UnknownValue { .. }));
}

#[test]
fn duplicate_keys_are_refused() {
    let dup_role = with("  frontend:\n    - spiffe://cluster.local/ns/shop/sa/other\n");
    match refuse(&dup_role) {
        MeshError::DuplicateKey { at, key } => {
            assert_eq!((at, key.as_str()), (pos(14, 3), "frontend"));
        }
        other => panic!("{other}"),
    }
    let dup_to = allow("    from: [frontend]\n    to: orders\n    to: db\n");
    match refuse(&dup_to) {
        MeshError::DuplicateKey { at, key } => assert_eq!((at, key.as_str()), (pos(18, 5), "to")),
        other => panic!("{other}"),
    }
}

#[test]
fn roles_need_dns_names_and_members() {
    for name in ["Frontend", "front_end", "-web", "\"\""] {
        let text = with(&format!(
            "  {name}:\n    - spiffe://cluster.local/ns/a/sa/b\n"
        ));
        match refuse(&text) {
            MeshError::RoleName { at, .. } => assert_eq!(at, pos(14, 3), "{name}"),
            other => panic!("{name}: {other}"),
        }
    }
    for empty in ["  admins: []\n", "  admins:\n"] {
        match refuse(&with(empty)) {
            MeshError::EmptyRole { at, role } => {
                assert_eq!((at, role.as_str()), (pos(14, 3), "admins"));
            }
            // `admins:` with nothing is YAML null, not a list.
            MeshError::Yaml { at, .. } => assert_eq!(at.line, 14, "{empty}"),
            other => panic!("{other}"),
        }
    }
}

#[test]
fn members_are_spiffe_ids_in_the_trust_domain() {
    let member = |m: &str| with(&format!("  ops:\n    - {m}\n"));
    let cases = [
        ("https://cluster.local/ns/a/sa/b", "WrongScheme"),
        ("spiffe://evil.local/ns/a/sa/b", "ForeignTrustDomain"),
        ("spiffe://evil.local/ns/a/sa/*", "ForeignTrustDomain"),
        ("spiffe://cluster.local", "NotWorkloadForm"),
        ("spiffe://cluster.local/ns/../sa/b", "InvalidPath"),
        ("spiffe://cluster.local/ns/a/sa/b/", "InvalidPath"),
    ];
    for (m, kind) in cases {
        match refuse(&member(m)) {
            MeshError::RoleMember {
                at, role, error, ..
            } => {
                assert_eq!((at, role.as_str()), (pos(15, 7), "ops"), "{m}");
                assert!(format!("{error:?}").starts_with(kind), "{m}: {error:?}");
            }
            other => panic!("{m}: {other}"),
        }
    }
}

#[test]
fn wildcards_replace_one_whole_last_segment() {
    let member = |m: &str| with(&format!("  ops:\n    - {m}\n"));
    let config = parse(&member("spiffe://cluster.local/ns/shop/sa/*")).expect("wildcard");
    let pattern = &config.policy.roles["ops"].members[0];
    assert_eq!(
        pattern,
        &IdentityPattern::Segment("spiffe://cluster.local/ns/shop/sa/".to_string())
    );
    assert!(pattern.matches(&id("spiffe://cluster.local/ns/shop/sa/web")));
    assert!(!pattern.matches(&id("spiffe://cluster.local/ns/shop/sa/web/x")));
    assert!(parse(&member("spiffe://cluster.local/ns/shop/*")).is_ok());

    for m in [
        "spiffe://cluster.local/ns/*/sa/web",
        "spiffe://cluster.local/ns/shop/sa/w*",
        "spiffe://cluster.local/ns/shop/sa/*/",
        "spiffe://cluster.local/ns/shop/sa/**",
        "spiffe://cluster.local/ns/*/sa/*",
        "spiffe://*/ns/a/sa/b",
    ] {
        assert!(
            matches!(refuse(&member(m)), MeshError::WildcardPlacement { at, .. } if at == pos(15, 7)),
            "{m}"
        );
    }
    for m in ["spiffe://cluster.local/*", "spiffe://cluster.local/ns/*"] {
        assert!(
            matches!(refuse(&member(m)), MeshError::WildcardTooBroad { at, .. } if at == pos(15, 7)),
            "{m}"
        );
    }
}

#[test]
fn references_must_be_defined() {
    match refuse(&allow("    from: [frontend, fronted]\n    to: orders\n")) {
        MeshError::UnknownRole { at, role, .. } => {
            assert_eq!((at, role.as_str()), (pos(16, 22), "fronted"));
        }
        other => panic!("{other}"),
    }
    let err = refuse(&allow("    from: [frontnd]\n    to: orders\n")).to_string();
    assert!(err.contains("did you mean \"frontend\"?"), "{err}");
    match refuse(&allow("    from: [frontend]\n    to: role:backend\n")) {
        MeshError::UnknownRole { at, role, .. } => {
            assert_eq!((at, role.as_str()), (pos(17, 9), "backend"));
        }
        other => panic!("{other}"),
    }
    match refuse(&allow("    from: [frontend]\n    to: order\n")) {
        MeshError::UnknownService {
            at,
            service,
            suggestion,
            ..
        } => {
            assert_eq!((at, service.as_str()), (pos(17, 9), "order"));
            assert_eq!(suggestion.as_deref(), Some("orders"));
        }
        other => panic!("{other}"),
    }
    let config = parse(&allow("    from: [frontend]\n    to: role:frontend\n")).expect("role");
    assert_eq!(
        config.policy.allow[0].to,
        Target::Role("frontend".to_string())
    );
}

#[test]
fn rules_need_unique_names_and_from() {
    let unnamed = with("deny:\n  - from: [frontend]\n    to: orders\n");
    match refuse(&unnamed) {
        MeshError::RuleNameMissing { at, kind, index } => {
            assert_eq!((at, kind, index), (pos(15, 5), "deny", 1));
        }
        other => panic!("{other}"),
    }
    let empty_name = allow(
        "    from: [frontend]\n    to: orders\n  - name: \"\"\n    from: [frontend]\n    to: db\n",
    );
    assert!(matches!(
        refuse(&empty_name),
        MeshError::RuleNameMissing { index: 2, .. }
    ));

    let twice = allow(
        "    from: [frontend]\n    to: orders\ndeny:\n  - name: r\n    from: [frontend]\n    to: db\n",
    );
    match refuse(&twice) {
        MeshError::DuplicateRuleName {
            at,
            name,
            first_kind,
            first_line,
        } => {
            assert_eq!((at, name.as_str()), (pos(19, 11), "r"));
            assert_eq!((first_kind, first_line), ("allow", 15));
        }
        other => panic!("{other}"),
    }

    for from in ["", "    from: []\n"] {
        match refuse(&allow(&format!("{from}    to: orders\n"))) {
            MeshError::EmptyFrom { at, rule } => assert_eq!((at, rule.as_str()), (pos(15, 5), "r")),
            other => panic!("{other}"),
        }
    }
    assert!(matches!(
        refuse(&allow("    from: [frontend]\n")),
        MeshError::MissingField { field, .. } if field == "to"
    ));
}

#[test]
fn ports_must_exist_on_the_target() {
    match refuse(&allow(
        "    from: [frontend]\n    to: orders\n    ports: [8080, 9090]\n",
    )) {
        MeshError::UndeclaredPort {
            at,
            service,
            port,
            declared,
            ..
        } => {
            assert_eq!((at, service.as_str(), port), (pos(18, 19), "orders", 9090));
            assert_eq!(declared, "8080, 5432");
        }
        other => panic!("{other}"),
    }
    let zero = allow("    from: [frontend]\n    to: role:frontend\n    ports: [0]\n");
    assert!(matches!(refuse(&zero), MeshError::RulePortZero { at, .. } if at == pos(18, 13)));
    // Role targets are not checked against any one service's ports.
    assert!(
        parse(&allow(
            "    from: [frontend]\n    to: role:frontend\n    ports: [9090]\n"
        ))
        .is_ok()
    );
}

#[test]
fn http_conditions_need_an_http_capable_port() {
    let on_tcp = allow(
        "    from: [frontend]\n    to: orders\n    ports: [8080, 5432]\n    http: {methods: [GET]}\n",
    );
    match refuse(&on_tcp) {
        MeshError::HttpOnTcpPort { at, port, .. } => assert_eq!((at, port), (pos(18, 19), 5432)),
        other => panic!("{other}"),
    }
    let all_tcp = allow("    from: [frontend]\n    to: db\n    http:\n      paths: [/x]\n");
    match refuse(&all_tcp) {
        MeshError::HttpOnTcpService { at, service, .. } => {
            assert_eq!((at, service.as_str()), (pos(19, 7), "db"));
        }
        other => panic!("{other}"),
    }
    // Mixed ports without `ports:`: fine, the http part applies where HTTP is.
    assert!(
        parse(&allow(
            "    from: [frontend]\n    to: orders\n    http: {paths: [/x]}\n"
        ))
        .is_ok()
    );
}

#[test]
fn methods_are_uppercase_tokens() {
    for method in ["get", "Get", "\"\"", "GET /", "M-SEARCH", "\"G\u{c9}T\""] {
        let text = allow(&format!(
            "    from: [frontend]\n    to: orders\n    http:\n      methods: [{method}]\n"
        ));
        match refuse(&text) {
            MeshError::Method { at, .. } => assert_eq!(at, pos(19, 17), "{method}"),
            other => panic!("{method}: {other}"),
        }
    }
}

#[test]
fn paths_are_written_normalized() {
    let bad = [
        ("api", "start with"),
        ("/api*", "`*`"),
        ("/*/x", "`*`"),
        ("/api/*/x", "`*`"),
        ("/a//b", "`//`"),
        ("//", "`//`"),
        ("/a/./b", "`.`"),
        ("/a/../b", "`..`"),
        ("/a/..", "`..`"),
        ("/a%2Fb", "`%`"),
        ("/a?b=1", "query"),
        ("\"/a#f\"", "fragment"),
        ("\"/a b\"", "space"),
    ];
    for (path, reason_part) in bad {
        let text = allow(&format!(
            "    from: [frontend]\n    to: orders\n    http:\n      paths:\n        - {path}\n"
        ));
        match refuse(&text) {
            MeshError::Path {
                at, owner, reason, ..
            } => {
                assert_eq!((at, owner.as_str()), (pos(20, 11), "rule \"r\""), "{path}");
                assert!(reason.contains(reason_part), "{path}: {reason}");
            }
            other => panic!("{path}: {other}"),
        }
    }
    let good = allow(
        "    from: [frontend]\n    to: orders\n    http: {paths: [/, /*, /a/, /a/b.json, /v1/*]}\n",
    );
    let config = parse(&good).expect("valid paths");
    let paths = &config.policy.allow[0].http.as_ref().expect("http").paths;
    assert_eq!(
        paths,
        &[
            PathPattern::Exact("/".to_string()),
            PathPattern::Prefix("/".to_string()),
            PathPattern::Exact("/a/".to_string()),
            PathPattern::Exact("/a/b.json".to_string()),
            PathPattern::Prefix("/v1/".to_string()),
        ]
    );
}

#[test]
fn probes_are_checked() {
    let zero = with("probes:\n  - port: 0\n");
    assert!(matches!(refuse(&zero), MeshError::ProbePortZero { at } if at == pos(15, 11)));
    let twice = with("probes:\n  - port: 8080\n  - {port: 8080, paths: [/healthz]}\n");
    assert!(matches!(
        refuse(&twice),
        MeshError::DuplicateProbePort { at, port: 8080, first_line: 15 } if at == pos(16, 12)
    ));
    let bad_path = with("probes:\n  - port: 8080\n    paths: [healthz]\n");
    match refuse(&bad_path) {
        MeshError::Path { owner, at, .. } => {
            assert_eq!((owner.as_str(), at), ("probe on port 8080", pos(16, 13)));
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        warnings(&with("probes:\n  - port: 8080\n  - port: 9999\n")),
        [MeshWarning::UndeclaredProbePort {
            at: pos(16, 11),
            port: 9999
        }]
    );
}

#[test]
fn every_policy_error_names_its_position_and_has_a_hint() {
    let cases = [
        with("  Ops:\n    - spiffe://cluster.local/ns/a/sa/b\n"),
        with("  ops: []\n"),
        with("  ops:\n    - spiffe://cluster.local/*\n"),
        with("  ops:\n    - spiffe://cluster.local/ns/*/sa/b\n"),
        with("  ops:\n    - spiffe://evil/ns/a/sa/b\n"),
        with("deny:\n  - from: [frontend]\n    to: orders\n"),
        allow("    from: [nobody]\n    to: orders\n"),
        allow("    from: [frontend]\n    to: nowhere\n"),
        allow("    from: [frontend]\n    to: orders\n    ports: [1]\n"),
        allow("    from: [frontend]\n    to: db\n    ports: [5432]\n    http: {}\n"),
        allow("    from: [frontend]\n    to: db\n    http: {}\n"),
        allow("    from: [frontend]\n    to: orders\n    http: {methods: [get]}\n"),
        allow("    from: [frontend]\n    to: orders\n    http: {paths: [x]}\n"),
        with("probes: [{port: 0}]\n"),
        with("probes: [{port: 1}, {port: 1}]\n"),
    ];
    for text in cases {
        let err = refuse(&text).to_string();
        let line = err
            .strip_prefix("mesh.yaml:")
            .and_then(|rest| rest.split(':').next());
        let line: u32 = line.and_then(|l| l.parse().ok()).unwrap_or(0);
        assert!(line >= 14 && err.contains(" (hint: "), "{err}");
    }
}

mod warnings;
