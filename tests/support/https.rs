//! A one-request HTTPS client (HTTP/1.1, `Connection: close`) that verifies
//! the server against a PEM trust bundle under a chosen server name: how a
//! Prometheus or a proxy in the cluster sees ward's CA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// (status, body) of `method path` sent to `addr`, verified as `name`.
pub async fn request(
    addr: SocketAddr,
    name: &str,
    bundle_pem: &str,
    method: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let roots = ward_proxy::tls::roots::roots_from_pem(bundle_pem).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let server = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(server, tcp)
            .await
            .map_err(|e| format!("TLS as {name}: {e}"))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {name}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        // A peer that closes without close_notify still gave us its answer.
        let _ = tls.read_to_end(&mut raw).await;
        let raw = String::from_utf8_lossy(&raw);
        let status = raw
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no HTTP status in {raw:?}"))?;
        let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
        Ok((status, body.unwrap_or_default()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "HTTPS request timed out".to_string())?
}
