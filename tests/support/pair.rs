//! Two sidecars in explicit mode, `web` forwarding to `orders`, for the
//! tests of outbound HTTP: app --> web ==mTLS==> orders --> app. Also
//! stand-ins for orders' sidecar that misbehave on purpose.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::sign::SingleCertAndKey;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use ward_config::TrustDomain;
use ward_proxy::settings::Limits;
use ward_proxy::tls::config::server_config;

use super::mesh::*;

pub const DAY: Duration = Duration::from_secs(86_400);
pub const OUT_HANDSHAKES: &str =
    "ward_tls_handshakes_total{direction=\"outbound\",peer=\"orders\"}";

/// web's count of outbound requests to orders answered `status`.
pub fn outbound(status: u16) -> String {
    format!(
        "ward_http_requests_total{{direction=\"outbound\",peer=\"orders\",status_code=\"{status}\"}}"
    )
}

/// How the two sidecars of a test are set up.
pub struct Opts {
    pub protocol: &'static str,
    /// The identity the server sidecar holds; the mesh file says `orders`.
    pub server_id: &'static str,
    /// Policy YAML; `None`: everyone in `shop` may reach orders.
    pub policy: Option<&'static str>,
    pub client: Limits,
    pub server: Limits,
    pub drain: Duration,
    /// How long the CA's SVIDs live.
    pub svid_ttl: Duration,
}

impl Opts {
    pub fn on(protocol: &'static str) -> Self {
        Self {
            protocol,
            ..Self::default()
        }
    }

    /// `protocol` with both sidecars detecting for `detect_timeout`.
    pub fn detecting(protocol: &'static str, detect_timeout: Duration) -> Self {
        let limits = Limits {
            detect_timeout,
            ..Limits::default()
        };
        Self {
            client: limits.clone(),
            server: limits,
            ..Self::on(protocol)
        }
    }
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            protocol: "http",
            server_id: "orders",
            policy: None,
            client: Limits::default(),
            server: Limits::default(),
            drain: Duration::from_secs(5),
            svid_ttl: DAY,
        }
    }
}

pub struct Mesh {
    pub ca: TestCa,
    pub web: Sidecar,
    pub orders: Sidecar,
}

/// app --> web sidecar (`--forward` to orders:PORT) ==mTLS==> orders
/// sidecar --> `app`, the port declared `opts.protocol`.
pub async fn mesh(app: SocketAddr, opts: Opts) -> Mesh {
    let ca = TestCa::start(opts.svid_ttl).await;
    let path = ca.tmp.path().join("mesh.yaml");
    let orders_id = workload("orders");
    let write = |endpoint: SocketAddr| {
        let service = [("orders", &orders_id, endpoint, app.port(), opts.protocol)];
        match opts.policy {
            Some(policy) => write_mesh_with_policy(&path, &service, policy),
            None => write_mesh_protocols(&path, &service),
        }
    };
    // The server's inbound port goes into the mesh file once it is bound.
    write(app);
    let mut server = SidecarSpec::new(&ca, workload(opts.server_id), path.clone());
    server.app = Some(app);
    server.limits = opts.server;
    server.drain_timeout = opts.drain;
    let orders = server.start().await;
    write(orders.inbound.unwrap());
    assert!(
        orders.wait_ready(Duration::from_secs(10)).await,
        "orders ready"
    );
    let web = web_sidecar(&ca, path, app.port(), opts.client, opts.drain).await;
    assert!(web.wait_ready(Duration::from_secs(10)).await, "web ready");
    Mesh { ca, web, orders }
}

/// The `web` sidecar, forwarding to orders:`port` as the mesh file says.
pub async fn web_sidecar(
    ca: &TestCa,
    mesh: PathBuf,
    port: u16,
    limits: Limits,
    drain: Duration,
) -> Sidecar {
    let mut client = SidecarSpec::new(ca, workload("web"), mesh);
    client.forwards = vec![("orders".into(), port)];
    client.limits = limits;
    client.drain_timeout = drain;
    client.start().await
}

/// A `web` sidecar for which orders (an `http` port) is at `endpoint`;
/// ready, if `ca` serves.
pub async fn web_towards(ca: &TestCa, endpoint: SocketAddr) -> Sidecar {
    let path = ca.tmp.path().join("web-mesh.yaml");
    let service = [("orders", &workload("orders"), endpoint, 8080, "http")];
    write_mesh_protocols(&path, &service);
    let web = web_sidecar(ca, path, 8080, Limits::default(), Duration::from_secs(5)).await;
    let serving = ca.addr.port() != 0;
    assert!(!serving || web.wait_ready(Duration::from_secs(10)).await);
    web
}

/// A stand-in for orders' sidecar's TLS, exactly as a sidecar's (orders'
/// SVID, valid for `ttl`; client SVIDs required); each connection is then
/// `serve`d.
pub async fn fake_orders_tls<F, Fut>(ca: &TestCa, ttl: Duration, serve: F) -> SocketAddr
where
    F: Fn(tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let authority = ca.dir.load(None, OffsetDateTime::now_utc()).unwrap();
    let svid = super::svid(&authority, &workload("orders"), ttl);
    let certs = Arc::new(SingleCertAndKey::from(svid.certified.clone()));
    let td = TrustDomain::new(TD).unwrap();
    let config = server_config(certs, super::roots(&ca.dir), td).unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(tls) = acceptor.accept(tcp).await {
                tokio::spawn(serve(tls));
            }
        }
    });
    addr
}

/// A stand-in for orders' sidecar ([`fake_orders_tls`], its SVID valid
/// for `ttl`), then HTTP/1 answering the first `answers` requests of each
/// connection with the header lines it received, and closing the
/// connection, without an answer, once the next one has been read.
pub async fn fake_orders_sidecar(ca: &TestCa, answers: usize, ttl: Duration) -> SocketAddr {
    fake_orders_tls(ca, ttl, move |mut tls| async move {
        if answers == 0 {
            let mut buf = [0u8; 4096];
            let _ = tls.read(&mut buf).await;
            return;
        }
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let svc = service_fn(move |req: Request<Incoming>| {
            let n = served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                if n >= answers {
                    // A service error: hyper closes without answering.
                    return Err("dropped");
                }
                let lines: String = req
                    .headers()
                    .iter()
                    .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("?")))
                    .collect();
                Ok(Response::new(Full::new(Bytes::from(lines))))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tls), svc)
            .await;
    })
    .await
}
