//! What the injector's tests share: serving certificates made here and
//! written where the server reads them, a TLS 1.3 client that trusts
//! them, one HTTP/1.1 request over a new connection, and reading a
//! Prometheus scrape.
#![allow(dead_code)] // each test binary uses a subset

use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use ward::injector::{InjectorServer, TlsFiles};

/// A self-signed certificate for `localhost` and its key.
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    /// Unix time, whole seconds.
    pub not_after: i64,
}

impl Pair {
    /// Valid from a day ago until `lifetime` from now (negative: expired).
    pub fn new(lifetime: time::Duration) -> Self {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + lifetime;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            not_after: (now + lifetime).unix_timestamp(),
        }
    }

    pub fn valid() -> Self {
        Self::new(time::Duration::days(30))
    }

    /// Writes the pair as `tls.crt` and `tls.key` in `dir`.
    pub fn write(&self, dir: &Path) -> TlsFiles {
        write(dir, &self.cert_pem, &self.key_pem)
    }
}

/// How often the servers under test read their certificate files again.
pub const RELOAD_INTERVAL: Duration = Duration::from_millis(50);

/// Writes `cert` and `key` as `tls.crt` and `tls.key` in `dir`.
pub fn write(dir: &Path, cert: &str, key: &str) -> TlsFiles {
    let files = files(dir);
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    files
}

fn files(dir: &Path) -> TlsFiles {
    TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        reload_interval: RELOAD_INTERVAL,
    }
}

/// A directory laid out as the kubelet mounts a Secret: `tls.crt` and
/// `tls.key` link through `..data` to a versioned directory, and each new
/// version replaces `..data` in one rename.
pub struct SecretDir {
    root: PathBuf,
    version: u32,
}

impl SecretDir {
    pub fn new(root: &Path, pair: &Pair) -> (Self, TlsFiles) {
        let mut secret = Self {
            root: root.to_path_buf(),
            version: 0,
        };
        secret.swap(&pair.cert_pem, &pair.key_pem);
        for name in ["tls.crt", "tls.key"] {
            symlink(Path::new("..data").join(name), root.join(name)).unwrap();
        }
        (secret, files(root))
    }

    /// Publishes `cert` and `key` as the Secret's new version.
    pub fn swap(&mut self, cert: &str, key: &str) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let dir = self.root.join(&version);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
        let link = self.root.join("..data_tmp");
        symlink(&version, &link).unwrap();
        std::fs::rename(&link, self.root.join("..data")).unwrap();
    }
}

/// A client that trusts exactly `pairs`, with the given TLS versions.
pub fn client(
    pairs: &[&Pair],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for pair in pairs {
        roots.add(pair.der.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A new TLS connection to `localhost` at `addr`.
pub async fn connect(
    addr: SocketAddr,
    tls: &Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(tls.clone()).connect(name, tcp).await
}

/// The leaf certificate the server presents to a new connection.
pub async fn served_leaf(addr: SocketAddr, tls: &Arc<ClientConfig>) -> CertificateDer<'static> {
    let stream = bounded(connect(addr, tls)).await.expect("a TLS connection");
    let (_, session) = stream.get_ref();
    session.peer_certificates().expect("a certificate")[0].clone()
}

/// One HTTP/1.1 request over a new TLS connection: (status, body).
pub async fn request(
    addr: SocketAddr,
    tls: &Arc<ClientConfig>,
    head: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    bounded(async {
        let mut stream = connect(addr, tls).await?;
        let head = format!("{head}\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        // The server may answer and close before taking a body it refuses.
        let _ = stream.write_all(body).await;
        let _ = stream.flush().await;
        let mut raw = Vec::new();
        // The server may close before reading a body it refused.
        let _ = stream.read_to_end(&mut raw).await;
        Ok(parse_response(&raw))
    })
    .await
}

/// (status, body) of a raw HTTP/1.1 response; status 0 if there is none.
pub fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `POST /mutate` with `body`.
pub async fn post(addr: SocketAddr, tls: &Arc<ClientConfig>, body: &[u8]) -> (u16, String) {
    let head = format!(
        "POST /mutate HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}",
        body.len()
    );
    request(addr, tls, &head, body).await.expect("a response")
}

/// The `/metrics` text.
pub async fn scrape(addr: SocketAddr, tls: &Arc<ClientConfig>) -> String {
    let (status, body) = request(addr, tls, "GET /metrics HTTP/1.1", b"")
        .await
        .expect("a scrape");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of `series` (name and labels, as printed) in a scrape.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Checks `ward_injector_reviews_total` for each (result, count).
pub fn assert_reviews(text: &str, expected: &[(&str, f64)]) {
    for (result, count) in expected {
        let series = format!("ward_injector_reviews_total{{result=\"{result}\"}}");
        assert_eq!(metric(text, &series), Some(*count), "{series} in\n{text}");
    }
}

/// An AdmissionReview from tests/data/admission/.
pub fn sample(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/admission")
        .join(name);
    let text = std::fs::read_to_string(path).unwrap();
    // pod-injected.json was written by ward 0.1.0; it is "already
    // injected" only for the same version.
    text.replace("0.1.0", env!("CARGO_PKG_VERSION"))
        .into_bytes()
}

/// Runs `f` for at most 10 s: a test fails instead of hanging.
pub async fn bounded<T>(f: impl Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .map_err(|_| std::io::Error::other("timed out"))?
}

/// A server running in the background until [`Running::stop`].
pub struct Running {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    pub fn start(server: InjectorServer) -> Self {
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self { addr, stop, task }
    }

    /// Shuts the server down and waits (bounded) for it to drain.
    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the server stopped")
            .unwrap();
    }
}
