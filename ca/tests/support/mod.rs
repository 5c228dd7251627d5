//! Shared helpers for the ward-ca integration tests: a real `CaServer` on
//! 127.0.0.1:0 behind real TLS 1.3, a hyper 1.x HTTP/1 client, raw TLS
//! streams for the slow-client tests, CSR builders, and readers for the
//! Prometheus text and the JSON audit log.
//!
//! Every network step is bounded by [`STEP`]: a hung server fails the test
//! instead of hanging the suite.

#![allow(dead_code)]

pub mod kube_api;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use ward_ca::audit::AuditLog;
use ward_ca::auth::Authenticator;
use ward_ca::authority::Authority;
use ward_ca::keys::Passphrase;
use ward_ca::metrics::CaMetrics;
use ward_ca::server::{CaServer, Limits};
use ward_ca::service::SvidService;
use ward_ca::store::{CaDir, InitOptions};
use ward_ca::token::{self, Claims, JoinTokens};
use ward_config::{SpiffeId, TrustDomain};

/// The trust domain of every test CA (and of the CSR fixtures).
pub const TD: &str = "test.ward";
/// Upper bound for any single network step (connect, handshake, request).
pub const STEP: Duration = Duration::from_secs(5);
/// Lifetime the test service gives SVIDs.
pub const SVID_TTL: Duration = Duration::from_secs(24 * 3600);
const DAY: u64 = 86_400;

/// Fails the test if `fut` does not finish within [`STEP`].
pub async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(STEP, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

/// `ward ca init` options: 10-year root, 1-year intermediate.
pub fn init_options(
    trust_domain: &str,
    passphrase: Option<Passphrase>,
    force: bool,
) -> InitOptions {
    InitOptions {
        trust_domain: TrustDomain::new(trust_domain).unwrap(),
        passphrase,
        force,
        root_ttl: Duration::from_secs(3650 * DAY),
        intermediate_ttl: Duration::from_secs(365 * DAY),
    }
}

/// Initializes a plaintext-key CA in `path` and loads it.
pub fn new_ca(path: &Path, trust_domain: &str) -> (CaDir, Authority) {
    let now = OffsetDateTime::now_utc();
    let dir = CaDir::new(path);
    dir.init(&init_options(trust_domain, None, false), now)
        .unwrap();
    let authority = dir.load(None, now).unwrap();
    (dir, authority)
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// Mints a join token for `identity` with `authority`, valid for an hour.
pub fn mint(authority: &Authority, identity: &str) -> (String, Claims) {
    token::mint(
        authority,
        &id(identity),
        Duration::from_secs(3600),
        OffsetDateTime::now_utc(),
    )
    .unwrap()
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

pub fn uri_san(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

/// A PEM CSR over `key` with exactly the given SANs and an empty subject.
pub fn csr_with_sans(key: &KeyPair, sans: Vec<SanType>) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// A fresh P-256 key and a PEM CSR asking for `uri`.
pub fn csr_for(uri: &str) -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let pem = csr_with_sans(&key, vec![uri_san(uri)]);
    (key, pem)
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// All certificates of a PEM text, in order.
pub fn pem_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A rustls client configuration trusting the roots in `root_pem`,
/// restricted to `versions`, offering HTTP/1.1 by ALPN.
pub fn client_config(
    root_pem: &[u8],
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in pem_certs(root_pem) {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// Test-friendly limits: short timeouts so slow-client tests stay fast.
pub fn short_limits() -> Limits {
    Limits {
        max_body: 64 * 1024,
        request_timeout: Duration::from_secs(1),
        handshake_timeout: Duration::from_secs(1),
        max_connections: 64,
        drain_timeout: Duration::from_secs(1),
    }
}

/// One HTTP response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The client side address of the connection it came over.
    pub client: SocketAddr,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("UTF-8 body")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `reason` member of a JSON error body.
    pub fn reason(&self) -> String {
        self.json()["reason"]
            .as_str()
            .unwrap_or_else(|| panic!("no reason in {}", self.text()))
            .to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// An HTTP/1.1 connection to the CA over TLS 1.3, driven by hyper's client.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    pub local: SocketAddr,
    pub tls_version: Option<rustls::ProtocolVersion>,
    pub alpn: Option<Vec<u8>>,
    driver: JoinHandle<()>,
}

impl Conn {
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).unwrap();
        let resp = bounded("HTTP request", async {
            self.sender.ready().await.expect("connection ready");
            let resp = self.sender.send_request(req).await.expect("response");
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.expect("response body").to_bytes();
            (parts, body)
        })
        .await;
        Resp {
            status: resp.0.status,
            headers: resp.0.headers,
            body: resp.1,
            client: self.local,
        }
    }

    /// Waits (at most `within`) for the connection to be closed; true if it was.
    pub async fn wait_closed(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, &mut self.driver).await.is_ok()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A running CA: its directory, authority, audit log and HTTPS endpoint.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub ca: CaDir,
    pub authority: Arc<Authority>,
    pub audit_path: PathBuf,
    pub root_pem: Vec<u8>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A CA for `test.ward` with the default limits, except a 1 s drain.
    pub async fn start() -> Self {
        Self::start_with(Limits {
            drain_timeout: Duration::from_secs(1),
            ..Limits::default()
        })
        .await
    }

    /// A CA built exactly as `ward ca serve` builds it, with `limits`.
    pub async fn start_with(limits: Limits) -> Self {
        Self::start_full(limits, None).await
    }

    /// As [`Self::start_with`], auditing to `audit_path` instead of
    /// `<ca dir>/audit.log` when given.
    pub async fn start_full(limits: Limits, audit_path: Option<PathBuf>) -> Self {
        Self::start_authenticated(limits, audit_path, |authority, _| {
            Arc::new(JoinTokens::new(authority))
        })
        .await
    }

    /// As [`Self::start_full`], with the authenticator `make` builds from
    /// the CA's authority and metrics.
    pub async fn start_authenticated(
        limits: Limits,
        audit_path: Option<PathBuf>,
        make: impl FnOnce(&Authority, &CaMetrics) -> Arc<dyn Authenticator>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ca, authority) = new_ca(dir.path(), TD);
        let metrics = CaMetrics::new();
        let authenticator = make(&authority, &metrics);
        let authority = Arc::new(authority);
        let audit_path = audit_path.unwrap_or_else(|| dir.path().join("audit.log"));
        let service = SvidService {
            authority: authority.clone(),
            authenticator,
            audit: AuditLog::open(Some(&audit_path), false).unwrap(),
            metrics,
            svid_ttl: SVID_TTL,
        };
        let server = CaServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            vec!["localhost".into(), "127.0.0.1".into()],
            Arc::new(service),
            ca.clone(),
            limits,
        )
        .await
        .unwrap();
        let addr = server.local_addr().unwrap();
        assert!(
            addr.ip().is_loopback(),
            "test server must listen on loopback only, got {addr}"
        );
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        let root_pem = std::fs::read(ca.path("root.pem")).unwrap();
        Self {
            addr,
            dir,
            ca,
            authority,
            audit_path,
            root_pem,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn token(&self, identity: &str) -> (String, Claims) {
        mint(&self.authority, identity)
    }

    pub fn tls13(&self) -> Arc<ClientConfig> {
        client_config(&self.root_pem, &[&rustls::version::TLS13])
    }

    pub async fn tcp(&self) -> TcpStream {
        let tcp = bounded("TCP connect", TcpStream::connect(self.addr))
            .await
            .unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp
    }

    /// A TLS 1.3 stream to the CA, handshake completed, server name `localhost`.
    pub async fn tls(&self) -> TlsStream<TcpStream> {
        self.tls_with(self.tls13()).await.expect("TLS handshake")
    }

    pub async fn tls_with(&self, cfg: Arc<ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = self.tcp().await;
        let name = ServerName::try_from("localhost").unwrap();
        bounded("TLS handshake", TlsConnector::from(cfg).connect(name, tcp)).await
    }

    /// A new HTTP/1.1 connection (hyper client) over TLS 1.3.
    pub async fn connect(&self) -> Conn {
        let tls = self.tls().await;
        let local = tls.get_ref().0.local_addr().unwrap();
        let tls_version = tls.get_ref().1.protocol_version();
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let (sender, conn) = bounded(
            "HTTP/1 handshake",
            hyper::client::conn::http1::handshake(TokioIo::new(tls)),
        )
        .await
        .unwrap();
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Conn {
            sender,
            local,
            tls_version,
            alpn,
            driver,
        }
    }

    /// One request on a fresh connection.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        self.connect().await.send(method, path, headers, body).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    /// `POST /v1/svid` with an optional raw Authorization header value.
    pub async fn post_svid(&self, authorization: Option<&str>, body: impl Into<Bytes>) -> Resp {
        let mut headers = vec![("content-type", "application/pkcs10")];
        if let Some(a) = authorization {
            headers.push(("authorization", a));
        }
        self.request(Method::POST, "/v1/svid", &headers, body).await
    }

    pub async fn metrics(&self) -> String {
        let resp = self.get("/metrics").await;
        assert_eq!(resp.status, StatusCode::OK, "GET /metrics: {}", resp.text());
        resp.text()
    }

    /// Current value of one series (e.g. `name{label="x"}`), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series).unwrap_or(0.0)
    }

    pub async fn denied(&self, reason: &str) -> f64 {
        self.metric(&denied_series(reason)).await
    }

    /// Polls /metrics until `series` reaches `at_least`, for at most `within`;
    /// returns the last value seen.
    pub async fn wait_metric(&self, series: &str, at_least: f64, within: Duration) -> f64 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let v = self.metric(series).await;
            if v >= at_least || tokio::time::Instant::now() >= deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Every audit line so far, parsed.
    pub fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.audit_path).unwrap_or_default();
        text.lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Polls the audit log until it holds `n` lines (bounded), returns them.
    pub async fn wait_audit(&self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let lines = self.audit();
            if lines.len() >= n || tokio::time::Instant::now() >= deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends the request described by the arguments and checks that it is
    /// refused with `status` and `reason`, that exactly one
    /// `ward_ca_svid_requests_denied_total{reason}` was added, and that no
    /// certificate was issued. Returns the response.
    pub async fn expect_denied(
        &self,
        authorization: Option<&str>,
        body: impl Into<Bytes>,
        status: StatusCode,
        reason: &str,
    ) -> Resp {
        let before = self.denied(reason).await;
        let issued_before = self.metric("ward_ca_svids_issued_total").await;
        let resp = self.post_svid(authorization, body).await;
        assert_eq!(
            resp.status,
            status,
            "status for {reason}; body: {}",
            resp.text()
        );
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(resp.reason(), reason, "body: {}", resp.text());
        let message = resp.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            !message.is_empty(),
            "a denial explains itself: {}",
            resp.text()
        );
        assert!(
            !resp.text().contains("-----BEGIN CERTIFICATE-----"),
            "a denial carries no certificate"
        );
        assert_eq!(
            self.denied(reason).await,
            before + 1.0,
            "denied_total{{reason={reason:?}}} must go up by one"
        );
        assert_eq!(
            self.metric("ward_ca_svids_issued_total").await,
            issued_before,
            "nothing issued"
        );
        resp
    }

    /// The last audit line, checked to be a denial for `reason` from `client`
    /// with the given identity and token id (None = field absent).
    pub fn expect_audit_denied(
        &self,
        reason: &str,
        client: SocketAddr,
        identity: Option<&str>,
        token_id: Option<&str>,
    ) -> Value {
        let lines = self.audit();
        let last = lines
            .last()
            .unwrap_or_else(|| panic!("audit log is empty, expected a {reason} denial"))
            .clone();
        assert_audit_time(&last);
        assert_eq!(last["result"], "denied", "{last}");
        assert_eq!(last["reason"], reason, "{last}");
        assert_eq!(last["client"], client.to_string(), "{last}");
        assert_eq!(
            last.get("identity").and_then(Value::as_str),
            identity,
            "{last}"
        );
        assert_eq!(
            last.get("token_id").and_then(Value::as_str),
            token_id,
            "{last}"
        );
        assert!(
            last.get("serial").is_none() && last.get("not_after").is_none(),
            "{last}"
        );
        last
    }

    /// Stops accepting and waits (bounded) for the drain to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            bounded("server shutdown", task).await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn denied_series(reason: &str) -> String {
    format!("ward_ca_svid_requests_denied_total{{reason=\"{reason}\"}}")
}

/// The value of `series` (metric name with its exact label set, as rendered)
/// in Prometheus text format.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}

/// The `time` field is RFC 3339 and recent.
pub fn assert_audit_time(line: &Value) {
    let t = line["time"]
        .as_str()
        .unwrap_or_else(|| panic!("no time in {line}"));
    let t = OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap();
    let age = OffsetDateTime::now_utc() - t;
    assert!(
        age >= time::Duration::seconds(-1) && age < time::Duration::minutes(1),
        "audit time {t} is not now"
    );
}

/// Reads until the peer closes (clean close, TLS EOF without close_notify,
/// or reset) or `within` elapses. Returns the bytes and whether it closed.
pub async fn read_until_close<S: AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return (out, true),
        }
    }
}

/// A response read off a raw stream.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Parses the first HTTP/1.1 response in `bytes` (Content-Length bodies).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&bytes[..end]).ok()?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let mut parts = status_line.splitn(3, ' ');
        if !parts.next()?.starts_with("HTTP/1.") {
            return None;
        }
        let status = parts.next()?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let rest = &bytes[end + 4..];
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(rest.len());
        let body = rest.get(..len)?.to_vec();
        Some(Self {
            status,
            headers,
            body,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Headers of a `POST /v1/svid` written by hand (no body).
pub fn raw_svid_head(authorization: &str, extra: &str) -> String {
    format!(
        "POST /v1/svid HTTP/1.1\r\nHost: localhost\r\n{}: {authorization}\r\n{CONTENT_TYPE}: application/pkcs10\r\n{extra}\r\n",
        AUTHORIZATION
    )
}

/// Runs `openssl` with `args` in `dir` if it is on PATH; `None` (with a
/// printed reason) otherwise. Returns (success, stdout+stderr).
pub async fn openssl(dir: &Path, args: &[&str]) -> Option<(bool, String)> {
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.args(args).current_dir(dir).kill_on_drop(true);
    let out = match bounded("openssl", cmd.output()).await {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED openssl check: `openssl` is not on PATH");
            return None;
        }
        Err(e) => panic!("cannot run openssl: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}
