//! The webhook server's limits, driven through the library with short
//! timeouts: a stalled body gets 408, a client that never finishes its
//! headers is disconnected, a key that does not match the certificate is
//! refused at start, and shutdown drains.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use ward::inject::Config;
use ward::injector::{InjectorServer, ServeError, webhook_limits};
use ward_ca::https::Limits;

fn limits() -> Limits {
    Limits {
        request_timeout: Duration::from_millis(500),
        handshake_timeout: Duration::from_millis(500),
        ..webhook_limits()
    }
}

/// A server on 127.0.0.1:0 with a fresh `localhost` certificate, and a
/// client configuration trusting it.
async fn server(dir: &std::path::Path) -> (InjectorServer, Arc<ClientConfig>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let addr = "127.0.0.1:0".parse().unwrap();
    let server = InjectorServer::bind(addr, &cert, &key, Config::default(), limits())
        .await
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(certified.cert.der().to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, Arc::new(client))
}

/// Sends `bytes` over TLS, then reads what the server says (bounded).
async fn exchange(addr: std::net::SocketAddr, tls: &Arc<ClientConfig>, bytes: &[u8]) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .unwrap();
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
    let (server, tls) = server(tmp.path()).await;
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

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

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("the server stopped")
        .unwrap();
}

#[tokio::test]
async fn a_key_that_does_not_match_the_certificate_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let one = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (tmp.path().join("tls.crt"), tmp.path().join("tls.key"));
    std::fs::write(&cert, one.cert.pem()).unwrap();
    std::fs::write(&key, other.signing_key.serialize_pem()).unwrap();
    let addr = "127.0.0.1:0".parse().unwrap();
    let result = InjectorServer::bind(addr, &cert, &key, Config::default(), limits()).await;
    assert!(
        matches!(result, Err(ServeError::Tls(_))),
        "{:?}",
        result.err()
    );
}
