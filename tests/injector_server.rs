//! The webhook server through the library, with short timeouts: a
//! stalled body gets 408, a client that never finishes its headers is
//! disconnected, a key that does not match the certificate or an expired
//! certificate is refused at start, shutdown drains, and `/metrics` counts
//! real AdmissionReviews by result.

mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward::inject::Config;
use ward::injector::{InjectorServer, ServeError, webhook_limits};
use ward_ca::https::Limits;
use webhook::{
    Pair, Running, assert_reviews, client, connect, metric, post, request, sample, scrape,
};

fn limits() -> Limits {
    Limits {
        request_timeout: Duration::from_millis(500),
        handshake_timeout: Duration::from_millis(500),
        ..webhook_limits()
    }
}

/// A running server on 127.0.0.1:0 with a fresh `localhost` certificate,
/// and a client configuration trusting it.
async fn server(dir: &std::path::Path) -> (Running, Arc<ClientConfig>, Pair) {
    let pair = Pair::valid();
    let addr = "127.0.0.1:0".parse().unwrap();
    let server = InjectorServer::bind(addr, pair.write(dir), Config::default(), limits())
        .await
        .unwrap();
    let tls = client(&[&pair], rustls::ALL_VERSIONS);
    (Running::start(server), tls, pair)
}

/// Sends `bytes` over TLS, then reads what the server says (bounded).
async fn exchange(addr: SocketAddr, tls: &Arc<ClientConfig>, bytes: &[u8]) -> String {
    let mut stream = connect(addr, tls).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream.flush().await.unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw)).await;
    assert!(
        read.is_ok(),
        "the server did not close a stalled connection"
    );
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test]
async fn stalled_requests_time_out_and_shutdown_drains() {
    let tmp = tempfile::tempdir().unwrap();
    let (running, tls, _) = server(tmp.path()).await;
    let addr = running.addr;

    // Headers complete, body promised but never sent: 408.
    let head = b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{";
    let answer = exchange(addr, &tls, head).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Headers never finished: closed without an answer.
    let answer = exchange(addr, &tls, b"POST /mutate HTTP/1.1\r\nHost: loc").await;
    assert!(!answer.contains("200 OK"), "{answer}");

    // Still serving.
    let answer = exchange(
        addr,
        &tls,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    running.stop().await;
}

/// A pair the server could not serve is refused at start, saying which.
#[tokio::test]
async fn a_mismatched_key_or_an_expired_certificate_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, other) = (Pair::valid(), Pair::valid());
    let expired = Pair::new(-time::Duration::hours(1));
    for (cert, key, says) in [
        (
            &one.cert_pem,
            &other.key_pem,
            "is not the key of the certificate",
        ),
        (&expired.cert_pem, &expired.key_pem, "expired at"),
    ] {
        let files = webhook::write(tmp.path(), cert, key);
        let addr = "127.0.0.1:0".parse().unwrap();
        let result = InjectorServer::bind(addr, files, Config::default(), limits()).await;
        let Err(ServeError::Cert(e)) = result else {
            panic!("{:?}", result.err());
        };
        assert!(e.to_string().contains(says), "{e}");
    }
}

/// Every answer to `POST /mutate` is counted under one of a few results,
/// and `/metrics` (GET only) says when the serving certificate expires.
#[tokio::test]
async fn metrics_count_reviews_by_result_over_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let (running, tls, pair) = server(tmp.path()).await;
    let addr = running.addr;

    let zero = ["injected", "unchanged", "skipped", "refused", "bad_request"].map(|r| (r, 0.0));
    assert_reviews(&scrape(addr, &tls).await, &zero);
    for name in [
        "pod-create.json",
        "pod-injected.json",
        "pod-opted-out.json",
        "pod-host-network.json",
        "pod-bad-annotation.json",
    ] {
        let (status, body) = post(addr, &tls, &sample(name)).await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    let (status, _) = post(addr, &tls, b"{\"kind\": \"AdmissionReview\"}").await;
    assert_eq!(status, 400);

    let text = scrape(addr, &tls).await;
    assert_reviews(
        &text,
        &[
            ("injected", 1.0),
            ("unchanged", 1.0),
            ("skipped", 2.0),
            ("refused", 1.0),
            ("bad_request", 1.0),
            ("error", 0.0),
        ],
    );
    assert_eq!(
        metric(&text, "ward_injector_cert_expiration_timestamp_seconds"),
        Some(pair.not_after as f64)
    );
    let build = format!(
        "ward_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metric(&text, &build), Some(1.0), "{text}");

    let (status, _) = request(
        addr,
        &tls,
        "POST /metrics HTTP/1.1\r\nContent-Length: 0",
        b"",
    )
    .await
    .unwrap();
    assert_eq!(status, 405);

    running.stop().await;
}
