//! `ward policy check` and `ward policy explain` as an operator runs them,
//! on the reference example from docs/policy.md.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ward(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(args)
        .output()
        .expect("run ward")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first YAML block of docs/policy.md, written to a file.
fn example(dir: &Path) -> PathBuf {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/policy.md")).unwrap();
    let yaml = doc
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap();
    let path = dir.join("mesh.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn check_accepts_the_example_and_rejects_typos_with_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let good = example(tmp.path());
    let out = ward(&["policy", "check", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains(": ok ("));

    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "trust_domain: cluster.local\nservices: {}\nalow: []\n",
    )
    .unwrap();
    let out = ward(&[
        "policy",
        "check",
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("bad.yaml:3:1: unknown field \"alow\""),
        "{text}"
    );
    assert!(text.contains("did you mean \"allow\""), "{text}");
}

#[test]
fn explain_names_the_deciding_rule_and_the_nearest_misses() {
    let tmp = tempfile::tempdir().unwrap();
    let file = example(tmp.path());
    let file = file.to_str().unwrap();
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    let base = [
        "policy", "explain", file, "--from", web, "--to", "orders", "--port", "8080",
    ];

    let out = ward(&[&base[..], &["--method", "get", "--path", "/api//items/./x"]].concat());
    let text = stdout(&out);
    assert!(text.contains("decision: allow"), "{text}");
    assert!(text.contains("rule: web-reads-orders"), "{text}");
    assert!(text.contains("forwarded as /api/items/x"), "{text}");

    let out = ward(&[&base[..], &["--method", "POST", "--path", "/api/items"]].concat());
    let text = stdout(&out);
    assert!(text.contains("decision: deny"), "{text}");
    assert!(text.contains("none matched (default deny)"), "{text}");
    let nearest = text
        .lines()
        .skip_while(|l| !l.starts_with("nearest rules"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        nearest.contains("web-reads-orders") && nearest.contains("http.methods"),
        "{text}"
    );

    let out = ward(&[&base[..], &["--method", "GET", "--path", "/admin/users"]].concat());
    assert!(
        stdout(&out).contains("rule: no-admin-from-web"),
        "{}",
        stdout(&out)
    );

    let out = ward(&[&base[..], &["--method", "GET", "--path", "/api/%2Fadmin"]].concat());
    assert!(
        stdout(&out).contains("400 before any rule"),
        "{}",
        stdout(&out)
    );

    let out = ward(&base);
    assert!(
        stdout(&out).contains("admitted only for HTTP"),
        "{}",
        stdout(&out)
    );
}
