//! The `ward` binary driven as an operator would: `ca init`, `ca token`,
//! `ca serve`, `ca bundle`, and `demo --once`, with real processes, files and
//! HTTPS on loopback.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::process::{self, WardProcess};
use ward_config::SpiffeId;
use ward_proxy::identity::csr::new_key_and_csr;
use ward_proxy::identity::{CaClient, CaClientError, Svid};

fn ward(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ward"));
    cmd.args(args)
        .env_remove("WARD_CA_PASSPHRASE")
        .env_remove("WARD_CA_PASSPHRASE_FILE");
    cmd
}

fn run(mut cmd: impl std::borrow::BorrowMut<Command>) -> Output {
    cmd.borrow_mut().output().expect("run ward")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_no_panic(out: &Output) {
    assert!(
        !stderr(out).contains("panicked"),
        "ward panicked: {}",
        stderr(out)
    );
}

/// `ca init` with a passphrase file, returning (dir, passphrase file).
fn init_ca(tmp: &Path) -> (String, String) {
    let dir = tmp.join("ca").display().to_string();
    let pass = tmp.join("pass").display().to_string();
    std::fs::write(&pass, "a long test passphrase\n").unwrap();
    let out = run(ward(&[
        "ca",
        "init",
        "--dir",
        &dir,
        "--trust-domain",
        "cli.test",
        "--passphrase-file",
        &pass,
    ]));
    assert!(out.status.success(), "init failed: {}", stderr(&out));
    (dir, pass)
}

/// `ward ca token` for `id`, valid for 10 minutes.
fn ca_token(dir: &str, pass: &str, id: &SpiffeId) -> String {
    let out = run(ward(&[
        "ca",
        "token",
        "--dir",
        dir,
        "--identity",
        id.as_str(),
        "--ttl",
        "10m",
        "--passphrase-file",
        pass,
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn init_requires_an_explicit_key_protection_choice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca").display().to_string();
    let out = run(ward(&[
        "ca",
        "init",
        "--dir",
        &dir,
        "--trust-domain",
        "cli.test",
    ]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--passphrase-file"),
        "{}",
        stderr(&out)
    );
    assert!(!tmp.path().join("ca").join("intermediate-key.pem").exists());

    let out = run(ward(&[
        "ca",
        "init",
        "--dir",
        &dir,
        "--trust-domain",
        "Bad.Domain",
        "--insecure-plaintext-key",
    ]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("trust domain"), "{}", stderr(&out));

    let out = run(ward(&[
        "ca",
        "init",
        "--dir",
        &dir,
        "--trust-domain",
        "cli.test",
        "--insecure-plaintext-key",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let key = std::fs::read_to_string(tmp.path().join("ca/intermediate-key.pem")).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
}

#[test]
fn lifetimes_out_of_range_are_refused_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca").display().to_string();
    for (flag, value) in [
        ("--root-ttl", "0s"),
        ("--intermediate-ttl", "1h"),
        ("--root-ttl", "3000000d"),
    ] {
        let out = run(ward(&[
            "ca",
            "init",
            "--dir",
            &dir,
            "--trust-domain",
            "cli.test",
            "--insecure-plaintext-key",
            flag,
            value,
        ]));
        assert!(!out.status.success(), "{flag} {value} accepted");
        assert_no_panic(&out);
    }
    let out = run(ward(&[
        "ca",
        "init",
        "--dir",
        &dir,
        "--trust-domain",
        "cli.test",
        "--insecure-plaintext-key",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    for ttl in ["3000000d", "30s"] {
        let out = run(ward(&[
            "ca",
            "serve",
            "--dir",
            &dir,
            "--listen",
            "127.0.0.1:0",
            "--svid-ttl",
            ttl,
        ]));
        assert!(!out.status.success(), "--svid-ttl {ttl} accepted");
        assert_no_panic(&out);
        assert!(stderr(&out).contains("--svid-ttl"), "{}", stderr(&out));
    }
}

#[test]
fn init_encrypts_keys_refuses_overwrite_and_reports_wrong_passphrase() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, pass) = init_ca(tmp.path());
    for file in [
        "root.pem",
        "root-key.pem",
        "intermediate.pem",
        "intermediate-key.pem",
        "trust-bundle.pem",
    ] {
        let meta = std::fs::metadata(Path::new(&dir).join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
    }
    let key = std::fs::read_to_string(Path::new(&dir).join("intermediate-key.pem")).unwrap();
    assert!(key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    let before = std::fs::read(Path::new(&dir).join("root.pem")).unwrap();

    let out = run(ward(&[
        "ca",
        "init",
        "--dir",
        &dir,
        "--trust-domain",
        "cli.test",
        "--passphrase-file",
        &pass,
    ]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(Path::new(&dir).join("root.pem")).unwrap(),
        before
    );

    let id = "spiffe://cli.test/ns/shop/sa/web";
    let out =
        run(ward(&["ca", "token", "--dir", &dir, "--identity", id])
            .env("WARD_CA_PASSPHRASE", "wrong"));
    assert!(!out.status.success());
    assert_no_panic(&out);
    assert!(
        stderr(&out).contains("passphrase is wrong"),
        "{}",
        stderr(&out)
    );

    let out = run(ward(&["ca", "token", "--dir", &dir, "--identity", id]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("WARD_CA_PASSPHRASE"),
        "{}",
        stderr(&out)
    );

    let out = run(ward(&[
        "ca",
        "token",
        "--dir",
        &dir,
        "--identity",
        "spiffe://other.test/ns/a/sa/b",
        "--passphrase-file",
        &pass,
    ]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("trust domain"), "{}", stderr(&out));

    let out = run(ward(&[
        "ca",
        "init",
        "--dir",
        &dir,
        "--trust-domain",
        "cli.test",
        "--passphrase-file",
        &pass,
        "--force",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(
        std::fs::read(Path::new(&dir).join("root.pem")).unwrap(),
        before
    );
}

/// Starts `ward ca serve` on an ephemeral port and returns it with its URL.
fn serve(dir: &str, pass: &str, audit: &str) -> (WardProcess, String) {
    serve_with(dir, pass, audit, &[], &[])
}

/// As [`serve`], with more flags and environment.
fn serve_with(
    dir: &str,
    pass: &str,
    audit: &str,
    flags: &[&str],
    env: &[(&str, &str)],
) -> (WardProcess, String) {
    let args = [
        &[
            "--dir",
            dir,
            "--passphrase-file",
            pass,
            "--audit-log",
            audit,
        ],
        flags,
    ]
    .concat();
    let (server, addr) = process::ca_serve(&args, env);
    (server, format!("https://{addr}"))
}

#[tokio::test]
async fn serve_issues_svids_to_token_holders_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, pass) = init_ca(tmp.path());
    let id = SpiffeId::parse("spiffe://cli.test/ns/shop/sa/web").unwrap();
    let token = ca_token(&dir, &pass, &id);
    assert!(token.starts_with("ward1."));

    let out = run(ward(&["ca", "bundle", "--dir", &dir]));
    assert!(out.status.success());
    let bundle = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        bundle,
        std::fs::read_to_string(Path::new(&dir).join("root.pem")).unwrap()
    );
    let out = run(ward(&["ca", "bundle", "--dir", &dir, "--json"]));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["keys"][0]["use"], "x509-svid");

    let audit = tmp.path().join("audit.log").display().to_string();
    let (mut server, url) = serve(&dir, &pass, &audit);
    let client = CaClient::new(&url, &bundle).unwrap();
    let (key, csr) = new_key_and_csr(&id).unwrap();
    let chain = client.request_svid(&token, &csr).await.expect("issued");
    let svid = Svid::install(&key, &chain, &id).expect("valid SVID for our key");
    assert_eq!(svid.id, id);

    let other = SpiffeId::parse("spiffe://cli.test/ns/shop/sa/admin").unwrap();
    let (_, csr) = new_key_and_csr(&other).unwrap();
    match client.request_svid(&token, &csr).await {
        Err(CaClientError::Refused { status, reason, .. }) => {
            assert_eq!(status.as_u16(), 403);
            assert_eq!(reason, "identity_mismatch");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(client.fetch_bundle().await.unwrap(), bundle);

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["result"], "issued");
    assert_eq!(lines[1]["reason"], "identity_mismatch");

    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "serve exited with {status}");
}

/// `--authenticator kubernetes`: the CA asks the API server named by
/// KUBECONFIG (a local stand-in answering recorded TokenReviews) and issues
/// the ServiceAccount's SPIFFE ID; join tokens are then refused.
#[tokio::test]
async fn serve_with_the_kubernetes_authenticator_issues_to_service_accounts() {
    use support::kube_api::{Answer, FakeKubeApi, jwt};

    let tmp = tempfile::tempdir().unwrap();
    let (dir, pass) = init_ca(tmp.path());
    let api = FakeKubeApi::start().await;
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let token = jwt("web");
    api.answer(&token, Answer::Recorded(201, "authenticated"));

    let audit = tmp.path().join("audit.log").display().to_string();
    let home = tmp.path().display().to_string();
    let (_server, url) = serve_with(
        &dir,
        &pass,
        &audit,
        &["--authenticator", "kubernetes", "--token-audience", "ward"],
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("HOME", &home),
        ],
    );
    let bundle = std::fs::read_to_string(Path::new(&dir).join("trust-bundle.pem")).unwrap();
    let client = CaClient::new(&url, &bundle).unwrap();

    let id = SpiffeId::parse("spiffe://cli.test/ns/shop/sa/web").unwrap();
    let (key, csr) = new_key_and_csr(&id).unwrap();
    let chain = client.request_svid(&token, &csr).await.expect("issued");
    assert_eq!(Svid::install(&key, &chain, &id).unwrap().id, id);
    assert_eq!(api.seen()[0].body["spec"]["audiences"][0], "ward");

    let join_token = ca_token(&dir, &pass, &id);
    match client.request_svid(&join_token, &csr).await {
        Err(CaClientError::Refused { status, reason, .. }) => {
            assert_eq!(status.as_u16(), 401);
            assert_eq!(reason, "authenticator_disabled");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(api.seen().len(), 1, "the join token never reached the API");
}

#[test]
fn the_kubernetes_authenticator_without_an_api_server_fails_at_start_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, pass) = init_ca(tmp.path());
    let out = run(ward(&[
        "ca",
        "serve",
        "--dir",
        &dir,
        "--passphrase-file",
        &pass,
        "--listen",
        "127.0.0.1:0",
        "--authenticator",
        "kubernetes",
    ])
    .env_remove("KUBECONFIG")
    .env_remove("KUBERNETES_SERVICE_HOST")
    .env_remove("KUBERNETES_SERVICE_PORT")
    .env("HOME", tmp.path()));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("set KUBECONFIG"), "{}", stderr(&out));
    assert_no_panic(&out);
}
