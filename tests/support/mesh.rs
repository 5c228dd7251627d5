//! A loopback mesh for end-to-end tests: a CA serving HTTPS (in-process,
//! or the built `ward ca serve`), sidecars (`ward_proxy::Proxy`) in
//! explicit mode, and echo apps. Every wait is bounded.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use ward_ca::audit::AuditLog;
use ward_ca::metrics::CaMetrics;
use ward_ca::server::{CaServer, Limits as CaLimits};
use ward_ca::service::SvidService;
use ward_ca::store::CaDir;
use ward_ca::token::{self, JoinTokens};
use ward_config::SpiffeId;
use ward_proxy::identity::{CaClient, IdentityConfig};
use ward_proxy::settings::{Forward, Inbound, Limits, ProxySettings};
use ward_proxy::{Proxy, Shared};

use super::process::WardProcess;

pub const TD: &str = "mesh.test";

/// A CA directory plus, while started, its HTTPS server.
pub struct TestCa {
    pub tmp: tempfile::TempDir,
    pub dir: CaDir,
    pub addr: SocketAddr,
    pub bundle_pem: String,
    svid_ttl: Duration,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl TestCa {
    /// Creates a CA and serves it on an ephemeral loopback port.
    pub async fn start(svid_ttl: Duration) -> Self {
        let mut ca = Self::new(svid_ttl);
        ca.serve().await;
        ca
    }

    /// Creates a CA without serving it yet.
    pub fn new(svid_ttl: Duration) -> Self {
        let (tmp, dir, _) = super::ca(TD);
        let bundle_pem = std::fs::read_to_string(dir.path(ward_ca::store::TRUST_BUNDLE)).unwrap();
        Self {
            tmp,
            dir,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            bundle_pem,
            svid_ttl,
            server: None,
        }
    }

    /// Serves the CA with the built `ward ca serve ARGS` (`env` added to
    /// its environment) on an ephemeral loopback port, instead of
    /// in-process; it runs until the returned process is dropped.
    pub fn serve_binary(&mut self, args: &[&str], env: &[(&str, &str)]) -> WardProcess {
        let dir = self.tmp.path().to_str().unwrap();
        let ttl = format!("{}s", self.svid_ttl.as_secs());
        let args = [&["--dir", dir, "--svid-ttl", &ttl], args].concat();
        let (process, addr) = super::process::ca_serve(&args, env);
        self.addr = addr;
        process
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// (Re)starts the server on `self.addr` (ephemeral the first time).
    pub async fn serve(&mut self) {
        let authority = self.dir.load(None, OffsetDateTime::now_utc()).unwrap();
        let service = Arc::new(SvidService {
            authenticator: Arc::new(JoinTokens::new(&authority)),
            authority: Arc::new(authority),
            audit: AuditLog::disabled(),
            metrics: CaMetrics::new(),
            svid_ttl: self.svid_ttl,
        });
        let names = vec!["127.0.0.1".to_string()];
        let server = CaServer::bind(
            self.addr,
            names,
            service,
            self.dir.clone(),
            CaLimits::default(),
        )
        .await
        .unwrap();
        self.addr = server.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        self.server = Some((tx, task));
    }

    pub async fn stop(&mut self) {
        if let Some((tx, task)) = self.server.take() {
            let _ = tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }

    /// Writes a join token for `id` to a file and returns its path.
    pub fn token_file(&self, id: &SpiffeId) -> PathBuf {
        let authority = self.dir.load(None, OffsetDateTime::now_utc()).unwrap();
        let (tok, _) = token::mint(
            &authority,
            id,
            Duration::from_secs(3600),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let path = self
            .tmp
            .path()
            .join(format!("{}.token", id.as_str().replace(['/', ':'], "_")));
        std::fs::write(&path, tok).unwrap();
        path
    }
}

pub fn workload(sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}/ns/shop/sa/{sa}")).unwrap()
}

/// Writes a mesh file with one service per (name, identity, endpoint,
/// port), every port declared opaque `tcp`.
pub fn write_mesh(path: &Path, services: &[(&str, &SpiffeId, SocketAddr, u16)]) {
    let with_protocol: Vec<_> = services
        .iter()
        .map(|&(n, id, ep, port)| (n, id, ep, port, "tcp"))
        .collect();
    write_mesh_protocols(path, &with_protocol);
}

/// As [`write_mesh`], with each port's declared protocol. The policy lets
/// every workload of namespace `shop` reach every service (ward denies by
/// default); tests of the policy itself use [`write_mesh_with_policy`].
/// The tests' client, `web`, is also named exactly, so that metrics carry
/// its ID (a peer only a wildcard admits is counted as `other`).
pub fn write_mesh_protocols(path: &Path, services: &[(&str, &SpiffeId, SocketAddr, u16, &str)]) {
    let mut policy = format!(
        "roles:\n  everyone: [\"spiffe://{TD}/ns/shop/sa/*\", \"{}\"]\nallow:\n",
        workload("web")
    );
    for (name, ..) in services {
        policy.push_str(&format!(
            "  - {{ name: all-to-{name}, from: [everyone], to: {name} }}\n"
        ));
    }
    write_mesh_with_policy(path, services, &policy);
}

/// A mesh file with these services and the given policy YAML (top-level
/// `mode`, `roles`, `allow`, `deny`, `probes` keys).
pub fn write_mesh_with_policy(
    path: &Path,
    services: &[(&str, &SpiffeId, SocketAddr, u16, &str)],
    policy: &str,
) {
    let mut yaml = format!("trust_domain: {TD}\nservices:\n");
    for (name, id, endpoint, port, protocol) in services {
        yaml.push_str(&format!(
            "  {name}:\n    identity: {id}\n    endpoints: [\"{endpoint}\"]\n    ports:\n      - port: {port}\n        protocol: {protocol}\n"
        ));
    }
    yaml.push_str(policy);
    // Write then rename, so a polling reader never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A running sidecar.
pub struct Sidecar {
    pub inbound: Option<SocketAddr>,
    pub forwards: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<()>,
}

pub struct SidecarSpec<'a> {
    pub id: SpiffeId,
    pub ca: &'a TestCa,
    pub mesh: PathBuf,
    pub app: Option<SocketAddr>,
    pub forwards: Vec<(String, u16)>,
    pub limits: Limits,
    pub drain_timeout: Duration,
}

impl<'a> SidecarSpec<'a> {
    pub fn new(ca: &'a TestCa, id: SpiffeId, mesh: PathBuf) -> Self {
        Self {
            id,
            ca,
            mesh,
            app: None,
            forwards: Vec::new(),
            limits: Limits::default(),
            drain_timeout: Duration::from_secs(5),
        }
    }

    pub async fn start(self) -> Sidecar {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let settings = ProxySettings {
            identity: IdentityConfig {
                ca: CaClient::new(&self.ca.url(), &self.ca.bundle_pem).unwrap(),
                token_file: self.ca.token_file(&self.id),
                id: self.id,
                initial_bundle_pem: self.ca.bundle_pem.clone(),
                bundle_refresh: Duration::from_secs(300),
            },
            mesh_file: self.mesh,
            inbound: self.app.map(|app| Inbound {
                listen: loopback,
                app,
            }),
            forwards: self
                .forwards
                .into_iter()
                .map(|(service, port)| Forward {
                    listen: loopback,
                    service,
                    port: Some(port),
                })
                .collect(),
            transparent: None,
            dialer: Default::default(),
            admin: loopback,
            limits: self.limits,
            drain_timeout: self.drain_timeout,
            reload_interval: Duration::from_millis(100),
        };
        let proxy = Proxy::bind(settings).await.expect("proxy binds");
        let (tx, rx) = oneshot::channel::<()>();
        Sidecar {
            inbound: proxy.inbound_addr(),
            forwards: proxy.forward_addrs(),
            admin: proxy.admin_addr().unwrap(),
            shared: proxy.shared(),
            stop: Some(tx),
            task: tokio::spawn(proxy.run(async {
                let _ = rx.await;
            })),
        }
    }
}

impl Sidecar {
    /// Starts the drain (as SIGTERM does); `task` ends when it is done.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub async fn wait_ready(&self, within: Duration) -> bool {
        poll(within, || async {
            get(self.admin, "/ready").await.0 == 200
        })
        .await
    }

    pub async fn metrics(&self) -> String {
        get(self.admin, "/metrics").await.1
    }

    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series).unwrap_or(0.0)
    }

    /// Waits (5 s at most) until `series` is `value`, then asserts it,
    /// showing every metric if it is not.
    pub async fn assert_metric(&self, series: &str, value: f64) {
        poll(Duration::from_secs(5), || async {
            self.metric(series).await == value
        })
        .await;
        let text = self.metrics().await;
        let seen = metric_value(&text, series).unwrap_or(0.0);
        assert_eq!(seen, value, "{series}; the sidecar's metrics:\n{text}");
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` every 25 ms until it holds or `within` passes.
pub async fn poll<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A minimal HTTP/1.0 GET (status, body) against the admin server.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut raw = String::new();
        tcp.read_to_string(&mut raw).await.ok()?;
        let status = raw.split_whitespace().nth(1)?.parse().ok()?;
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or((0, String::new()))
}

/// The value of one exact series (`name{labels}`) in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// An app that echoes what it reads, then closes its write side on EOF.
/// Returns its address and a counter of connections it accepted.
pub async fn echo_app() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

/// Sends `msg` through `addr`, half-closes, and returns everything read back.
pub async fn round_trip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(msg).await?;
        tcp.shutdown().await?;
        let mut back = Vec::new();
        tcp.read_to_end(&mut back).await?;
        Ok(back)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("round trip timed out")))
}

/// A loopback address where connecting is refused, held for as long as the
/// socket lives: bound but not listening, so no other test can take the
/// port in the meantime.
pub fn refusing_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}
