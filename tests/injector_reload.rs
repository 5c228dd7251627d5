//! The webhook's serving certificate is read again while it runs, as a
//! Secret that cert-manager rotates is: the files change behind a `..data`
//! symlink swap. Over real TLS: new connections get the new certificate,
//! open ones keep working, and a pair that is not fit (a key that is not
//! the certificate's, a file that does not parse, an expired certificate)
//! leaves the current one serving, counted on `/metrics`.

mod webhook;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward::inject::Config;
use ward::injector::{InjectorServer, TlsFiles, webhook_limits};
use webhook::{
    Pair, Running, SecretDir, client, connect, metric, parse_response, scrape, served_leaf,
};

const SUCCESS: &str = "ward_injector_cert_reloads_total{result=\"success\"}";
const FAILURE: &str = "ward_injector_cert_reloads_total{result=\"failure\"}";
const EXPIRATION: &str = "ward_injector_cert_expiration_timestamp_seconds";

async fn start(files: TlsFiles) -> Running {
    let addr = "127.0.0.1:0".parse().unwrap();
    let server = InjectorServer::bind(addr, files, Config::default(), webhook_limits())
        .await
        .unwrap();
    Running::start(server)
}

/// Checks `condition` every 20 ms until it holds, for at most 10 s.
async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn counter(running: &Running, tls: &Arc<ClientConfig>, series: &str) -> f64 {
    let text = scrape(running.addr, tls).await;
    metric(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test]
async fn a_rotated_secret_serves_new_connections_and_open_ones_keep_working() {
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (Pair::valid(), Pair::new(time::Duration::days(60)));
    let (mut secret, files) = SecretDir::new(tmp.path(), &old);
    let running = start(files).await;
    let tls = client(&[&old, &new], rustls::ALL_VERSIONS);
    assert_eq!(served_leaf(running.addr, &tls).await, old.der);
    // A connection made before the rotation, idle while it happens.
    let mut open = connect(running.addr, &tls).await.unwrap();

    secret.swap(&new.cert_pem, &new.key_pem);
    eventually("the new certificate is served", async || {
        served_leaf(running.addr, &tls).await == new.der
    })
    .await;

    let (_, session) = open.get_ref();
    assert_eq!(session.peer_certificates().unwrap()[0], old.der);
    open.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    webhook::bounded(open.read_to_end(&mut raw)).await.unwrap();
    assert_eq!(parse_response(&raw), (200, "ok\n".to_string()));

    assert_eq!(counter(&running, &tls, SUCCESS).await, 1.0);
    assert_eq!(counter(&running, &tls, FAILURE).await, 0.0);
    assert_eq!(
        counter(&running, &tls, EXPIRATION).await,
        new.not_after as f64
    );
    running.stop().await;
}

#[tokio::test]
async fn an_unfit_replacement_leaves_the_current_certificate_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let (current, other, next) = (Pair::valid(), Pair::valid(), Pair::valid());
    let expired = Pair::new(-time::Duration::hours(1));
    let (mut secret, files) = SecretDir::new(tmp.path(), &current);
    let running = start(files).await;
    let tls = client(&[&current, &other, &next, &expired], rustls::ALL_VERSIONS);

    for (what, cert, key) in [
        (
            "a key that is not the certificate's",
            &other.cert_pem,
            &current.key_pem,
        ),
        (
            "a certificate file that is not PEM",
            &"not a certificate\n".to_string(),
            &current.key_pem,
        ),
        (
            "an expired certificate",
            &expired.cert_pem,
            &expired.key_pem,
        ),
    ] {
        let failures = counter(&running, &tls, FAILURE).await;
        secret.swap(cert, key);
        eventually(what, async || {
            counter(&running, &tls, FAILURE).await > failures
        })
        .await;
        assert_eq!(served_leaf(running.addr, &tls).await, current.der, "{what}");
        assert_eq!(counter(&running, &tls, SUCCESS).await, 0.0, "{what}");
    }
    assert_eq!(
        counter(&running, &tls, EXPIRATION).await,
        current.not_after as f64
    );

    // A fit pair after the bad ones is taken.
    secret.swap(&next.cert_pem, &next.key_pem);
    eventually("the fit pair is served", async || {
        served_leaf(running.addr, &tls).await == next.der
    })
    .await;
    assert_eq!(counter(&running, &tls, SUCCESS).await, 1.0);
    running.stop().await;
}
