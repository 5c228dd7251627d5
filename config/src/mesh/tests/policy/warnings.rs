//! Warnings: legal files that are probably wrong.

use super::*;

#[test]
fn a_member_twice_is_a_warning() {
    let text = with("    - spiffe://cluster.local/ns/shop/sa/web\n");
    let (config, warnings) = MeshConfig::parse_with_warnings(&text, "mesh.yaml").expect("valid");
    assert_eq!(config.policy.roles["frontend"].members.len(), 1);
    assert_eq!(
        warnings,
        [MeshWarning::DuplicateRoleMember {
            at: pos(14, 7),
            role: "frontend".to_string(),
            member: "spiffe://cluster.local/ns/shop/sa/web".to_string(),
            first_line: 13,
        }]
    );
    assert!(
        warnings[0]
            .to_string()
            .starts_with("mesh.yaml:14:7: role \"frontend\"")
    );
}

#[test]
fn rule_warnings() {
    let text = with(
        "allow:
  - name: a
    from: [frontend]
    to: orders
    ports: [8080]
    http: {methods: [GET], paths: [/api/*]}
  - name: b
    from: [frontend]
    to: orders
    ports: [8080]
    http: {paths: [/api/*], methods: [GET]}
  - name: c
    from: [frontend]
    to: orders
    http: {paths: [/admin/x]}
  - name: d
    from: [frontend]
    to: orders
    http: {paths: [/public/*]}
deny:
  - name: no-admin
    from: [frontend]
    to: orders
    http: {paths: [/admin/*]}
  - name: try-public
    from: [frontend]
    to: orders
    http: {paths: [/public/*]}
    mode: audit
",
    );
    let w = warnings(&text);
    assert_eq!(
        w,
        [
            MeshWarning::DuplicateAllow {
                at: pos(20, 5),
                rule: "b".to_string(),
                other: "a".to_string(),
                other_line: 15,
            },
            MeshWarning::ShadowedAllow {
                at: pos(25, 5),
                rule: "c".to_string(),
                deny: "no-admin".to_string(),
                deny_line: 34,
            },
            MeshWarning::AuditDeny {
                at: pos(38, 5),
                rule: "try-public".to_string(),
            },
        ]
    );
    for warning in &w {
        let text = warning.to_string();
        assert!(
            text.starts_with("mesh.yaml:") && text.contains(" (hint: "),
            "{text}"
        );
    }
    assert!(w[2].to_string().contains("only logs and counts"));
}

#[test]
fn narrower_or_different_rules_are_not_shadowed() {
    let rule = |name: &str, body: &str| format!("  - name: {name}\n    from: [frontend]\n{body}");
    let allow_x = rule("x", "    to: orders\n    http: {paths: [/api/*]}\n");
    for deny in [
        rule("d", "    to: db\n"),
        rule("d", "    to: orders\n    ports: [8080]\n"),
        rule("d", "    to: orders\n    http: {paths: [/api/v1/*]}\n"),
        rule("d", "    to: orders\n    http: {methods: [POST]}\n"),
    ] {
        let text = with(&format!("allow:\n{allow_x}deny:\n{deny}"));
        assert_eq!(warnings(&text), [], "{deny}");
    }
}

#[test]
fn a_deny_in_audit_mode_shadows_nothing() {
    let rule = |name: &str| format!("  - name: {name}\n    from: [frontend]\n    to: orders\n");
    let text = with(&format!(
        "allow:\n{}deny:\n{}    mode: audit\n",
        rule("a"),
        rule("d")
    ));
    assert!(matches!(
        warnings(&text).as_slice(),
        [MeshWarning::AuditDeny { rule, .. }] if rule == "d"
    ));
    // Under a global audit mode the shadowing is what enforce will do.
    let text = with(&format!(
        "mode: audit\nallow:\n{}deny:\n{}",
        rule("a"),
        rule("d")
    ));
    assert!(matches!(
        warnings(&text).as_slice(),
        [MeshWarning::ShadowedAllow { rule, deny, .. }] if rule == "a" && deny == "d"
    ));
}
