//! ward-proxy: the sidecar. It holds the proxy's identity (a key generated in
//! memory and the SVID the CA issues for it), the TLS rules between sidecars
//! (SPIFFE X509-SVID verification), the inbound and outbound listeners, the
//! admin server and the drain. See docs/proxy.md for the shape.
#![forbid(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod drain;
pub mod dst;
pub mod forward;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod listener;
pub mod metrics;
pub mod outbound;
pub mod registry;
pub mod settings;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use drain::Drain;
use identity::{IdentityError, IdentityManager};
use metrics::ProxyMetrics;
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
    inbound: Option<(TcpListener, SocketAddr)>,
    forwards: Vec<(TcpListener, Arc<outbound::Route>)>,
    admin: TcpListener,
    drain_timeout: std::time::Duration,
    reload_interval: std::time::Duration,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ProxyError::Bind(addr, e))
}

impl Proxy {
    pub async fn bind(settings: ProxySettings) -> Result<Self, ProxyError> {
        let metrics = Arc::new(ProxyMetrics::new());
        let registry = Registry::load(&settings.mesh_file, metrics.clone())?;
        let snapshot = registry.snapshot();
        let mesh = &snapshot.mesh;
        let mut forwards = Vec::new();
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
            forwards.push((
                bind(f.listen).await?,
                Arc::new(outbound::Route::new(f.service.clone())),
            ));
        }
        let inbound = match &settings.inbound {
            Some(i) => Some((bind(i.listen).await?, i.app)),
            None => None,
        };
        let admin = bind(settings.admin).await?;
        let identity = IdentityManager::new(settings.identity, metrics.clone())?;
        let shared = Arc::new(Shared {
            tls: MeshTls::new(identity.clone()),
            identity,
            registry,
            metrics,
            drain: Drain::new(),
            limits: settings.limits,
        });
        Ok(Self {
            shared,
            inbound,
            forwards,
            admin,
            drain_timeout: settings.drain_timeout,
            reload_interval: settings.reload_interval,
        })
    }

    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.inbound.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn forward_addrs(&self) -> Vec<SocketAddr> {
        self.forwards
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
        if let Some((listener, app)) = self.inbound {
            tasks.spawn(inbound::serve(
                listener,
                shared.clone(),
                Arc::new(dst::Fixed(app)),
            ));
        }
        for (listener, route) in self.forwards {
            tasks.spawn(outbound::serve(listener, shared.clone(), route));
        }
        shutdown.await;
        shared.metrics.draining.inc();
        tracing::info!(open = shared.drain.active(), timeout = ?self.drain_timeout, "draining");
        let cut = shared.drain.drain(self.drain_timeout).await;
        if cut > 0 {
            tracing::warn!(cut, "drain timeout: closed connections still open");
        }
        tasks.abort_all();
        tracing::info!("proxy stopped");
    }
}
