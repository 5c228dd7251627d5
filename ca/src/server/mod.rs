//! The CA's HTTPS endpoint: TLS 1.3 only (aws-lc-rs), HTTP/1.1 keep-alive,
//! with limits that keep one client from starving the rest: a connection cap,
//! a TLS handshake timeout, a header read timeout, a body size and read
//! timeout (see [`Limits`]). Shutdown stops accepting and lets in-flight
//! requests finish within a grace period.

mod progress;
mod routes;
mod serving_cert;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::authority::IssueError;
use crate::service::{Denial, DenyReason, SvidService};
use crate::store::CaDir;
use progress::RequestProgress;
pub use routes::Routes;
pub use serving_cert::ServingCert;

/// Resource limits of the endpoint.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body (a P-256 CSR is under 1 KiB).
    pub max_body: usize,
    /// Time to receive a request's headers, and separately its body.
    pub request_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    /// How long in-flight requests may run after shutdown begins.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: 64 * 1024,
            request_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 4096,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("cannot create the serving certificate: {0}")]
    ServingCert(#[from] IssueError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A bound, not yet running, CA server.
pub struct CaServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    routes: Arc<Routes>,
    serving: Arc<ServingCert>,
    limits: Limits,
}

impl CaServer {
    /// Binds `listen` and prepares TLS with a serving certificate for `names`.
    pub async fn bind(
        listen: SocketAddr,
        names: Vec<String>,
        service: Arc<SvidService>,
        dir: CaDir,
        limits: Limits,
    ) -> Result<Self, ServeError> {
        let serving = ServingCert::new(service.authority.clone(), names)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(serving.clone());
        // HTTP/1.1 only: issuance is a few calls per workload per day, and one
        // protocol means one set of timeouts to get right.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| ServeError::Bind(listen, e))?;
        let routes = Arc::new(Routes {
            service,
            dir,
            max_body: limits.max_body,
            request_timeout: limits.request_timeout,
        });
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            routes,
            serving,
            limits,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let rotation = tokio::spawn(self.serving.clone().rotate_forever());
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        tokio::pin!(shutdown);
        loop {
            let (tcp, client) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                self.routes.service.metrics.connections_refused.inc();
                continue; // over the connection cap: drop it
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = self.acceptor.clone();
            let routes = self.routes.clone();
            let limits = self.limits.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let _slot = slot;
                let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        routes.service.metrics.handshake_errors.inc();
                        tracing::debug!(%client, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        routes.service.metrics.handshake_errors.inc();
                        return;
                    }
                };
                let svc_routes = routes.clone();
                let svc = service_fn(move |req| {
                    let routes = svc_routes.clone();
                    async move { Ok::<_, std::convert::Infallible>(routes.handle(req, client).await) }
                });
                // The header read timeout runs from the start of the
                // connection and between keep-alive requests, so a client
                // that never sends (or stalls in its headers) is closed.
                let (io, mid_request) = RequestProgress::new(tls);
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.request_timeout)
                    .max_buf_size(limits.max_body.max(16 * 1024))
                    .serve_connection(TokioIo::new(io), svc);
                if let Err(e) = watcher.watch(conn).await {
                    if e.is_timeout() && mid_request.load(Ordering::Relaxed) {
                        // A request started but its headers never completed.
                        routes
                            .service
                            .reject(&Denial::from(DenyReason::Timeout), client);
                    } else if e.is_timeout() {
                        // Idle keep-alive, or nothing ever sent: not a request.
                        routes.service.metrics.connection_timeouts.inc();
                    } else {
                        tracing::debug!(%client, error = %e, "connection ended with an error");
                    }
                }
            });
        }
        drop(self.listener);
        if tokio::time::timeout(self.limits.drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout: closing connections with requests still in flight");
        }
        rotation.abort();
    }
}
