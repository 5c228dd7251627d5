//! Hostile and large inputs: budgets, size caps, files on disk.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;

/// Must finish well inside this even in a debug build; runaway expansion
/// would take minutes or exhaust memory.
const FAST: Duration = Duration::from_secs(5);

fn refuse_fast(text: &str) -> MeshError {
    let start = Instant::now();
    let err = refuse(text);
    assert!(start.elapsed() < FAST, "took {:?}: {err}", start.elapsed());
    err
}

fn billion_laughs() -> String {
    let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let p = i - 1;
        let refs = vec![format!("*a{p}"); 10].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    text
}

#[test]
fn alias_bombs_fail_fast() {
    // The classic, as its own file: refused at its first key.
    let err = refuse_fast(&billion_laughs());
    assert!(err.to_string().starts_with("mesh.yaml:1:1: "), "{err}");

    // The same bomb where the schema wants a value: the budget stops the
    // expansion, the message says so and where.
    let bomb = format!("{}trust_domain: *a9\n", billion_laughs());
    let options = super::raw::options();
    let start = Instant::now();
    let value: Result<BTreeMap<String, serde::de::IgnoredAny>, _> =
        serde_saphyr::from_str_with_options(&bomb, options);
    let err = super::error::from_yaml(&value.expect_err("bomb"), "mesh.yaml");
    assert!(start.elapsed() < FAST);
    assert!(
        matches!(&err, MeshError::Limit { what, .. } if what.contains("aliases expand")),
        "{err}"
    );

    // Amplification through values the schema accepts: one long anchored
    // string reused as many endpoints. The text budget counts every use.
    let big = "1".repeat(100_000);
    let refs = vec!["*big"; 200].join(", ");
    let text = orders(&format!(
        "    identity: &big \"{big}\"\n    endpoints: [{refs}]\n{PORTS}"
    ));
    match refuse_fast(&text) {
        MeshError::Limit { at, what } => {
            assert_eq!(at.line, 5);
            assert!(what.contains("bytes of text"), "{what}");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn deep_nesting_fails_fast() {
    let depth = 10_000;
    let flow = |open: &str, close: &str| format!("{}x{}", open.repeat(depth), close.repeat(depth));
    // Block nesting this deep only fits in the size cap as compact lists.
    let compact = format!("{}x", "- ".repeat(depth));
    for deep in [flow("[", "]"), flow("{a: ", "}"), compact] {
        let text = format!("trust_domain: cluster.local\nservices:\n  {deep}\n");
        let err = refuse_fast(&text);
        assert!(err.to_string().starts_with("mesh.yaml:3:"), "{err}");

        // Where the shape would allow it, the depth budget is what stops it.
        let value: Result<BTreeMap<String, serde::de::IgnoredAny>, _> =
            serde_saphyr::from_str_with_options(&format!("a:\n  {deep}\n"), super::raw::options());
        let err = super::error::from_yaml(&value.expect_err("deep"), "mesh.yaml");
        assert!(
            matches!(&err, MeshError::Limit { what, .. } if what.contains("nesting deeper than 32")),
            "{err}"
        );
    }
}

#[test]
fn huge_files_are_refused_before_parsing() {
    let huge = format!(
        "trust_domain: cluster.local\nservices: {{}}\n#{}\n",
        "x".repeat(10 << 20)
    );
    assert!(matches!(
        refuse_fast(&huge),
        MeshError::TooLarge {
            limit: MAX_FILE_BYTES,
            ..
        }
    ));
    let path = temp_file("huge.yaml", huge.as_bytes());
    let result = MeshConfig::load(&path);
    let _ = std::fs::remove_file(&path);
    match result {
        Err(MeshError::TooLarge { file, .. }) => assert_eq!(file, path.display().to_string()),
        other => panic!("{other:?}"),
    }
}

fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ward-mesh-test-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("write temp file");
    path
}

#[test]
fn load_reads_the_file() {
    let path = temp_file("valid.yaml", VALID.as_bytes());
    let loaded = MeshConfig::load(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(loaded.expect("valid file"), parse(VALID).expect("valid"));

    let bad = temp_file(
        "bad.yaml",
        orders(&format!("{ID}{EP}    ports: [{{port: 0}}]\n")).as_bytes(),
    );
    let err = MeshConfig::load(&bad).expect_err("port 0");
    let _ = std::fs::remove_file(&bad);
    assert!(
        err.to_string()
            .starts_with(&format!("{}:6:20: ", bad.display())),
        "{err}"
    );

    let latin1 = temp_file("latin1.yaml", b"trust_domain: caf\xe9\nservices: {}\n");
    let err = MeshConfig::load(&latin1).expect_err("not UTF-8");
    let _ = std::fs::remove_file(&latin1);
    assert!(matches!(err, MeshError::NotUtf8 { .. }), "{err}");

    let missing = std::env::temp_dir().join("ward-mesh-test-does-not-exist.yaml");
    let err = MeshConfig::load(&missing).expect_err("missing");
    assert!(matches!(err, MeshError::Read { .. }), "{err}");
    assert!(
        err.to_string().starts_with(&missing.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_large_mesh_loads_quickly() {
    let mut text = String::from("trust_domain: cluster.local\nservices:\n");
    for s in 0..1_000u32 {
        let endpoints: Vec<String> = (0..20u32)
            .map(|e| format!("10.{}.{}.{}:15006", s / 256, s % 256, e + 1))
            .collect();
        text.push_str(&format!(
            "  svc-{s}:\n    identity: spiffe://cluster.local/ns/shop/sa/svc-{s}\n\
             \x20   endpoints: [{}]\n    ports: [{{port: 8080, protocol: http}}, {{port: 9090}}]\n",
            endpoints.join(", ")
        ));
    }
    let start = Instant::now();
    let config = parse(&text).expect("large mesh");
    assert!(start.elapsed() < FAST, "took {:?}", start.elapsed());
    assert_eq!(config.services.len(), 1_000);
    let (service, port) = config
        .by_destination(addr("10.3.231.20:9090"))
        .expect("match");
    assert_eq!((service.name.as_str(), port.port), ("svc-999", 9090));
}

#[test]
fn the_overlap_check_is_bounded() {
    // Two services on the same 1,000 IPs, one with 1,100 ports: no overlap,
    // but checking it would take more work than any real mesh needs.
    let ips: Vec<String> = (0..1_000u32)
        .map(|i| format!("10.0.{}.{}", i / 250, i % 250 + 1))
        .collect();
    let endpoints = |port: u16| {
        let list: Vec<String> = ips.iter().map(|ip| format!("{ip}:{port}")).collect();
        list.join(", ")
    };
    let ports: Vec<String> = (1..=1_100u32).map(|p| format!("{{port: {p}}}")).collect();
    let text = with_services(&format!(
        "  a:\n    identity: spiffe://cluster.local/ns/shop/sa/a\n\
         \x20   endpoints: [{}]\n    ports: [{}]\n\
         \x20 b:\n    identity: spiffe://cluster.local/ns/shop/sa/b\n\
         \x20   endpoints: [{}]\n    ports: [{{port: 30000}}]\n",
        endpoints(15006),
        ports.join(", "),
        endpoints(15007),
    ));
    match refuse_fast(&text) {
        MeshError::Limit { at, what } => {
            assert_eq!(at.line, 0);
            assert!(what.contains("share IP addresses"), "{what}");
        }
        other => panic!("{other}"),
    }
}
