//! ward-proxy: the sidecar. It holds the proxy's identity (a key generated in
//! memory and the SVID the CA issues for it), the TLS rules between sidecars
//! (SPIFFE X509-SVID verification), the inbound and outbound listeners, the
//! admin server and the drain. See docs/proxy.md for the shape.
#![forbid(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod dial;
pub mod drain;
pub mod dst;
pub mod forward;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod listener;
pub mod metrics;
pub mod outbound;
pub mod process;
pub mod registry;
pub mod settings;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use drain::Drain;
use dst::OriginalDst;
use identity::{IdentityError, IdentityManager};
use metrics::ProxyMetrics;
use outbound::Target;
use registry::Registry;
use settings::{Limits, ProxySettings};
use tls::MeshTls;

/// State every connection handler reads.
pub struct Shared {
    pub identity: Arc<IdentityManager>,
    pub tls: MeshTls,
    pub registry: Arc<Registry>,
    pub metrics: Arc<ProxyMetrics>,
    pub drain: Drain,
    pub limits: Limits,
    pub dialer: dial::Dialer,
    /// Idle mesh connections for the next app connection (outbound HTTP/1).
    pub pool: http::pool::Pool,
    /// Connections held at once across all listeners ([`process::shares`]).
    pub connection_budget: Arc<Semaphore>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("mesh file: {0}")]
    Mesh(#[from] registry::RegistryError),
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("--forward {listen}: {reason}")]
    Forward { listen: SocketAddr, reason: String },
}

/// A proxy whose sockets are bound (so their addresses are known) but
/// which serves nothing until [`Proxy::run`].
pub struct Proxy {
    shared: Arc<Shared>,
    inbound: Vec<(TcpListener, Arc<dyn OriginalDst>)>,
    outbound: Vec<(TcpListener, Arc<outbound::Target>)>,
    admin: TcpListener,
    drain_timeout: std::time::Duration,
    reload_interval: std::time::Duration,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ProxyError::Bind(addr, e))
}

/// Binds the IPv4 address, and the IPv6 one when this host has IPv6 (a
/// pod with IPv6 disabled still gets its IPv4 listener).
async fn bind_dual(v4: SocketAddr, v6: SocketAddr) -> Result<Vec<TcpListener>, ProxyError> {
    let mut listeners = vec![bind(v4).await?];
    match listener::bind_v6_only(v6) {
        Ok(listener) => listeners.push(listener),
        Err(e) => tracing::info!(address = %v6, error = %e, "no IPv6 listener"),
    }
    Ok(listeners)
}

impl Proxy {
    pub async fn bind(settings: ProxySettings) -> Result<Self, ProxyError> {
        let metrics = Arc::new(ProxyMetrics::new());
        let registry = Registry::load(&settings.mesh_file, metrics.clone())?;
        let snapshot = registry.snapshot();
        let mesh = &snapshot.mesh;
        let mut outbound = Vec::new();
        for f in &settings.forwards {
            let fail = |reason: String| ProxyError::Forward {
                listen: f.listen,
                reason,
            };
            let service = mesh.service(&f.service).ok_or_else(|| {
                fail(format!(
                    "service {:?} is not in {}",
                    f.service,
                    settings.mesh_file.display()
                ))
            })?;
            if let Some(port) = f.port {
                service
                    .port(port)
                    .ok_or_else(|| fail(format!("service {:?} has no port {port}", f.service)))?;
            }
            outbound.push((
                bind(f.listen).await?,
                Arc::new(Target::Service(outbound::Destination::in_turn(
                    f.service.clone(),
                    f.port,
                ))),
            ));
        }
        let mut inbound: Vec<(TcpListener, Arc<dyn OriginalDst>)> = Vec::new();
        if let Some(i) = &settings.inbound {
            inbound.push((bind(i.listen).await?, Arc::new(dst::Fixed(i.app))));
        }
        if let Some(t) = &settings.transparent {
            let own = dst::OwnPorts {
                inbound: t.inbound_port,
                outbound: t.outbound_port,
                admin: settings.admin.port(),
            };
            let any = |ip: IpAddr| SocketAddr::new(ip, t.inbound_port);
            for listener in bind_dual(
                any(Ipv4Addr::UNSPECIFIED.into()),
                any(Ipv6Addr::UNSPECIFIED.into()),
            )
            .await?
            {
                inbound.push((listener, Arc::new(dst::LocalApp(own))));
            }
            let target = Arc::new(Target::Redirected {
                dst: Arc::new(dst::Redirected(own)),
                egress: t.egress,
            });
            let local = |ip: IpAddr| SocketAddr::new(ip, t.outbound_port);
            for listener in bind_dual(
                local(Ipv4Addr::LOCALHOST.into()),
                local(Ipv6Addr::LOCALHOST.into()),
            )
            .await?
            {
                outbound.push((listener, target.clone()));
            }
        }
        let listeners = inbound.len() + outbound.len();
        let shares = process::shares(listeners, settings.limits.max_connections);
        let budget = shares.connections.min(Semaphore::MAX_PERMITS);
        metrics
            .connection_budget
            .set(i64::try_from(budget).unwrap_or(i64::MAX));
        let admin = bind(settings.admin).await?;
        let identity = IdentityManager::new(settings.identity, metrics.clone())?;
        let shared = Arc::new(Shared {
            tls: MeshTls::new(identity.clone()),
            identity,
            registry,
            pool: http::pool::Pool::new(&settings.limits, shares.pooled, metrics.clone()),
            connection_budget: Arc::new(Semaphore::new(budget)),
            metrics,
            drain: Drain::new(),
            limits: settings.limits,
            dialer: settings.dialer,
        });
        Ok(Self {
            shared,
            inbound,
            outbound,
            admin,
            drain_timeout: settings.drain_timeout,
            reload_interval: settings.reload_interval,
        })
    }

    /// The first inbound listener's address (explicit mode has one).
    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.inbound.first().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Every outbound listener's address, `--forward`s first.
    pub fn forward_addrs(&self) -> Vec<SocketAddr> {
        self.outbound
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until `shutdown` resolves, then drains: stop accepting, report
    /// not ready, let connections finish for up to the drain timeout.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let shared = self.shared;
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(shared.identity.clone().run());
        tasks.spawn(shared.registry.clone().watch(self.reload_interval));
        tasks.spawn(admin::serve(self.admin, shared.clone()));
        let pool = shared.clone();
        tasks.spawn(async move { pool.pool.sweep(&pool.drain).await });
        for (listener, dst) in self.inbound {
            tasks.spawn(inbound::serve(listener, shared.clone(), dst));
        }
        for (listener, target) in self.outbound {
            tasks.spawn(outbound::serve(listener, shared.clone(), target));
        }
        shutdown.await;
        shared.metrics.draining.inc();
        tracing::info!(open = shared.drain.active(), timeout = ?self.drain_timeout, "draining");
        let cut = shared.drain.drain(self.drain_timeout).await;
        // The sweep closes them as the drain begins, unless the drain was
        // over first (nothing in flight).
        shared.pool.close_all();
        if cut > 0 {
            tracing::warn!(cut, "drain timeout: closed connections still open");
        }
        tasks.abort_all();
        tracing::info!("proxy stopped");
    }
}
