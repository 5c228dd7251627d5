//! `ward injector` as the API server sees it: the built binary on loopback
//! with a certificate made here, AdmissionReviews POSTed over real TLS 1.3,
//! malformed requests answered with 4xx while it keeps serving, each
//! answer counted on `/metrics`, and a clean exit on SIGTERM.

mod support;
mod webhook;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use support::process::{self, WardProcess};
use webhook::{Pair, assert_reviews, client, post, request, sample, scrape};

/// Starts `ward injector` on an ephemeral port with a fresh certificate for
/// `localhost`; returns it, its address and that certificate.
fn start(dir: &Path) -> (WardProcess, SocketAddr, Pair) {
    let pair = Pair::valid();
    let files = pair.write(dir);
    let (server, addr) = process::injector(&files.cert, &files.key);
    (server, addr, pair)
}

#[tokio::test]
async fn serves_admission_reviews_over_tls_refuses_garbage_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut server, addr, pair) = start(tmp.path());
    let tls = client(&[&pair], rustls::ALL_VERSIONS);

    let (status, body) = post(addr, &tls, &sample("pod-create.json")).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(
        answer["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().unwrap())
        .unwrap();
    let patch: Value = serde_json::from_slice(&patch).unwrap();
    assert!(patch.as_array().is_some_and(|ops| !ops.is_empty()));

    let (status, body) = post(addr, &tls, &sample("pod-bad-annotation.json")).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(answer["response"]["status"]["code"], 400);

    // A Pod CREATE without its object is refused, never admitted bare.
    let mut objectless: Value = serde_json::from_slice(&sample("pod-create.json")).unwrap();
    objectless["request"]
        .as_object_mut()
        .unwrap()
        .remove("object");
    let (status, body) = post(addr, &tls, objectless.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], false, "{body}");
    assert_eq!(answer["response"]["status"]["code"], 400, "{body}");

    // Malformed requests: a 4xx with a JSON error, and the server lives on.
    for bad in [
        &b"not json"[..],
        br#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}"#,
        br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}"#,
    ] {
        let (status, body) = post(addr, &tls, bad).await;
        assert_eq!(status, 400, "{body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert!(error["error"].is_string(), "{body}");
    }
    let huge = "POST /mutate HTTP/1.1\r\nContent-Length: 5000000";
    let (status, _) = request(addr, &tls, huge, b"{").await.unwrap();
    assert_eq!(status, 413);
    // Chunked, so the size is only known while reading.
    let chunk = vec![b' '; 5 << 20];
    let mut chunked = format!("{:x}\r\n", chunk.len()).into_bytes();
    chunked.extend_from_slice(&chunk);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let head = "POST /mutate HTTP/1.1\r\nTransfer-Encoding: chunked";
    let (status, _) = request(addr, &tls, head, &chunked).await.unwrap();
    assert_eq!(status, 413);
    // A big Pod under the limit is reviewed (a 3 MiB annotation).
    let mut big: Value = serde_json::from_slice(&sample("pod-create.json")).unwrap();
    big["request"]["object"]["metadata"]["annotations"]["example.com/blob"] =
        Value::String("x".repeat(3 << 20));
    let (status, body) = post(addr, &tls, big.to_string().as_bytes()).await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    assert!(
        body.len() < 64 * 1024,
        "the patch carries only what changed"
    );
    let (status, _) = request(addr, &tls, "GET /mutate HTTP/1.1", b"")
        .await
        .unwrap();
    assert_eq!(status, 405);
    let (status, _) = request(addr, &tls, "GET /nope HTTP/1.1", b"")
        .await
        .unwrap();
    assert_eq!(status, 404);
    let (status, body) = request(addr, &tls, "GET /healthz HTTP/1.1", b"")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // TLS 1.3 only: a TLS 1.2 client is refused.
    let tls12 = client(&[&pair], &[&rustls::version::TLS12]);
    assert!(
        request(addr, &tls12, "GET /healthz HTTP/1.1", b"")
            .await
            .is_err()
    );

    // Still serving after all that.
    let (status, _) = post(addr, &tls, &sample("pod-opted-out.json")).await;
    assert_eq!(status, 200);

    // Every answer to POST /mutate is counted: malformed, too large
    // (declared and chunked) are bad requests.
    let text = scrape(addr, &tls).await;
    assert_reviews(
        &text,
        &[
            ("injected", 2.0),
            ("refused", 2.0),
            ("skipped", 1.0),
            ("unchanged", 0.0),
            ("bad_request", 5.0),
        ],
    );

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
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "injector exited with {status}");
}

/// The webhook injects with the same settings as `ward inject`: its
/// `--egress` (here from `WARD_INJECT_EGRESS`) is the proxy's unless the
/// Pod's `ward.dev/egress` says otherwise, and a bad value is refused with
/// a message naming the Pod.
#[tokio::test]
async fn the_egress_setting_and_the_pods_annotation_reach_the_patch() {
    let tmp = tempfile::tempdir().unwrap();
    let pair = Pair::valid();
    let files = pair.write(tmp.path());
    let env = [("WARD_INJECT_EGRESS", "passthrough")];
    let (_server, addr) = process::injector_with_env(&files.cert, &files.key, &env);
    let tls = client(&[&pair], rustls::ALL_VERSIONS);
    let review = |egress: Option<&str>| {
        let mut doc: Value = serde_json::from_slice(&sample("pod-create.json")).unwrap();
        if let Some(egress) = egress {
            doc["request"]["object"]["metadata"]["annotations"]["ward.dev/egress"] = egress.into();
        }
        doc.to_string()
    };
    for (annotation, expected) in [(None, "passthrough"), (Some("deny"), "deny")] {
        let (status, body) = post(addr, &tls, review(annotation).as_bytes()).await;
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        let patch = base64::engine::general_purpose::STANDARD
            .decode(answer["response"]["patch"].as_str().expect("a patch"))
            .unwrap();
        let patch: Vec<Value> = serde_json::from_slice(&patch).unwrap();
        let init = patch
            .iter()
            .find(|op| op["path"] == "/spec/initContainers")
            .map(|op| &op["value"])
            .expect("the patch sets the init containers");
        let proxy = init
            .as_array()
            .and_then(|l| l.iter().find(|c| c["name"] == "ward-proxy"))
            .expect("ward-proxy is injected");
        let args: Vec<&str> = proxy["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let egress = args.windows(2).find(|w| w[0] == "--egress").map(|w| w[1]);
        assert_eq!(
            egress,
            Some(expected),
            "annotation {annotation:?}: {args:?}"
        );
    }
    let (status, body) = post(addr, &tls, review(Some("allow")).as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], false, "{body}");
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert_eq!(
        message,
        "ward: Pod shop/web-7d9f6c5b8-*: annotation ward.dev/egress: \"allow\": \
         must be \"deny\" or \"passthrough\""
    );
}

/// The webhook and `ward inject` agree on every sample review: the patch
/// the built `ward injector` answers, applied to the review's Pod by an
/// RFC 6902 implementation that is not ward's (the json-patch crate), gives
/// exactly the Pod the built `ward inject` prints; a Pod admitted without a
/// patch comes out of `ward inject` as it went in, and one the webhook
/// refuses `ward inject` fails on.
#[tokio::test]
async fn each_sample_review_is_patched_into_what_ward_inject_prints() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr, pair) = start(tmp.path());
    let tls = client(&[&pair], rustls::ALL_VERSIONS);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/admission");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut patched = 0;
    for name in &names {
        let body = sample(name);
        let review: Value = serde_json::from_slice(&body).unwrap();
        let pod = &review["request"]["object"];
        let (status, text) = post(addr, &tls, &body).await;
        assert_eq!(status, 200, "{name}: {text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        let response = &answer["response"];

        // JSON is YAML: `ward inject` reads the Pod as it is.
        let file = tmp.path().join(name);
        std::fs::write(&file, pod.to_string()).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ward"))
            .args(["inject", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if response["allowed"] == false {
            assert!(!out.status.success(), "{name}: ward inject accepted it");
            continue;
        }
        assert_eq!(response["allowed"], true, "{name}: {response}");
        assert!(out.status.success(), "{name}: {stderr}");
        let printed: Value = serde_saphyr::from_slice(&out.stdout).expect("one YAML document");
        let mut admitted = pod.clone();
        if let Some(encoded) = response["patch"].as_str() {
            assert_eq!(response["patchType"], "JSONPatch", "{name}");
            let ops = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap();
            let ops: json_patch::Patch = serde_json::from_slice(&ops).expect("RFC 6902 operations");
            json_patch::patch(&mut admitted, &ops).unwrap_or_else(|e| panic!("{name}: {e}"));
            patched += 1;
        }
        assert_eq!(admitted, printed, "{name}");
    }
    assert!(
        names.len() >= 5 && patched >= 1,
        "{names:?}, {patched} patched"
    );
}

#[test]
fn bad_certificate_files_are_reported_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "not a pem file\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["injector", "--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(&junk)
        .arg("--tls-key")
        .arg(&junk)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--tls-cert") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn a_zero_reload_interval_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let files = Pair::valid().write(tmp.path());
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["injector", "--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(&files.cert)
        .arg("--tls-key")
        .arg(&files.key)
        .env("WARD_INJECTOR_TLS_RELOAD_INTERVAL", "0s")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--tls-reload-interval") && stderr.contains("greater than zero"),
        "{stderr}"
    );
}
