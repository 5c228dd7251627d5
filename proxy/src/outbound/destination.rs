//! Where an outbound connection's mesh connections go: a service of the
//! mesh file, and which of its addresses to dial. Looked up again on the
//! current mesh file at every dial, so an HTTP connection that reopens its
//! mesh connection after a reload follows the new endpoints and identity.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use ward_config::mesh::Protocol;

use crate::Shared;
use crate::forward::tls_transport;
use crate::metrics::OUTBOUND;
use crate::tls::chain_expired;
use crate::tls::config::Carries;
use crate::tls::failure::handshake_failure;

/// An mTLS connection to one of a service's sidecars.
pub type MeshStream = TlsStream<BufReader<TcpStream>>;

#[derive(Clone)]
pub struct Destination {
    /// The service's name in the mesh file (also the `peer` label).
    pub service: String,
    /// The application port the app asked for, when known.
    port: Option<u16>,
    pick: Pick,
}

#[derive(Clone)]
enum Pick {
    /// `--forward`: the service's endpoints in turn, the turn shared by
    /// every connection of the listener.
    InTurn(Arc<AtomicUsize>),
    /// Transparent mode: the address the app dialed (the peer pod's
    /// PREROUTING rule takes it to its sidecar).
    Dialed(SocketAddr),
}

/// Why no mTLS connection to the service was made. Each is counted and
/// logged where it happens; this only says what to tell the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("the service is no longer in the mesh file")]
    UnknownService,
    #[error("this sidecar has no workload certificate yet")]
    NoIdentity,
    #[error("no endpoint of the service accepted a connection")]
    Unreachable,
    #[error("the service's sidecar failed the mTLS handshake")]
    Handshake,
}

impl Destination {
    /// A `--forward` listener's service, its endpoints taken in turn.
    pub fn in_turn(service: String, port: Option<u16>) -> Self {
        Self {
            service,
            port,
            pick: Pick::InTurn(Arc::new(AtomicUsize::new(0))),
        }
    }

    /// The service the app reached by dialing `dialed` (transparent mode),
    /// for its application port `port`: the registry's match, which is not
    /// `dialed`'s port when the app dials a Service's cluster IP and
    /// Service port while the mesh file declares the target port.
    pub fn dialed(service: String, dialed: SocketAddr, port: u16) -> Self {
        Self {
            service,
            port: Some(port),
            pick: Pick::Dialed(dialed),
        }
    }

    /// How the current mesh file says to treat the app's bytes: the
    /// declared port's protocol; without a port, the service's only port's,
    /// else `detect`.
    pub fn protocol(&self, shared: &Shared) -> Protocol {
        let snapshot = shared.registry.snapshot();
        let Some(service) = snapshot.mesh.service(&self.service) else {
            return Protocol::Detect;
        };
        let spec = match (self.port, service.ports.as_slice()) {
            (Some(port), _) => service.port(port),
            (None, [only]) => Some(only),
            (None, _) => None,
        };
        spec.map_or(Protocol::Detect, |s| s.protocol)
    }

    /// Opens an mTLS connection to a sidecar of the service, on the
    /// current mesh file, accepting only the service's SPIFFE ID, and
    /// telling it what the connection `carries`.
    pub async fn connect(
        &self,
        carries: Carries,
        shared: &Shared,
    ) -> Result<MeshStream, ConnectError> {
        self.route(shared)?.connect(carries, shared).await
    }

    /// Where a mesh connection would go now, on the current mesh file and
    /// identity: the TLS configuration that accepts only the service's
    /// SPIFFE ID, and the endpoints in the order to try them.
    pub fn route(&self, shared: &Shared) -> Result<Route, ConnectError> {
        let m = &shared.metrics;
        let snapshot = shared.registry.snapshot();
        let Some(service) = snapshot.mesh.service(&self.service) else {
            m.connection_errors
                .with_label_values(&[OUTBOUND, "unknown_service"])
                .inc();
            tracing::warn!(service = %self.service, "service is not in the mesh file");
            return Err(ConnectError::UnknownService);
        };
        let config = match shared.tls.client(&service.identity) {
            Ok(config) => config,
            Err(e) => {
                m.handshake_errors
                    .with_label_values(&[OUTBOUND, "no_identity"])
                    .inc();
                tracing::warn!(service = %service.name, error = %e, "refusing outbound connection");
                return Err(ConnectError::NoIdentity);
            }
        };
        let endpoints = match &self.pick {
            Pick::InTurn(next) => {
                let mut endpoints = service.endpoints.clone();
                let start = next.fetch_add(1, Ordering::Relaxed);
                let len = endpoints.len().max(1);
                endpoints.rotate_left(start % len);
                endpoints
            }
            Pick::Dialed(addr) => vec![*addr],
        };
        Ok(Route {
            service: self.service.clone(),
            config,
            endpoints,
        })
    }
}

/// A service's sidecars as one connection may reach them now.
pub struct Route {
    pub service: String,
    /// Built for our current SVID and trust bundle and the service's
    /// identity: a new one when any of them changes.
    pub config: Arc<ClientConfig>,
    /// The first is this connection's pick; the rest are fallbacks.
    pub endpoints: Vec<SocketAddr>,
}

impl Route {
    /// Tries the endpoints in order until one completes the handshake. A
    /// TLS failure (wrong identity, untrusted chain) is not retried on
    /// another endpoint: it is a security event, not an outage.
    pub async fn connect(
        &self,
        carries: Carries,
        shared: &Shared,
    ) -> Result<MeshStream, ConnectError> {
        let m = &shared.metrics;
        let service = &self.service;
        for &endpoint in &self.endpoints {
            let tcp = match tokio::time::timeout(
                shared.limits.connect_timeout,
                shared.dialer.connect(endpoint),
            )
            .await
            {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => {
                    tracing::info!(%service, %endpoint, error = %e, "endpoint unreachable; trying the next");
                    continue;
                }
                Err(_) => continue,
            };
            let _ = tcp.set_nodelay(true);
            let handshake = TlsConnector::from(self.config.clone())
                .with_alpn(carries.alpn())
                .connect(ServerName::from(endpoint.ip()), tls_transport(tcp));
            let reason = match tokio::time::timeout(shared.limits.handshake_timeout, handshake)
                .await
            {
                Ok(Ok(tls))
                    if tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_none_or(chain_expired) =>
                {
                    // A resumed session whose server SVID has expired since.
                    tracing::warn!(%service, %endpoint, "outbound session refused: the server's SVID has expired");
                    "expired_certificate"
                }
                Ok(Ok(tls)) => {
                    m.handshakes.with_label_values(&[OUTBOUND, service]).inc();
                    return Ok(tls);
                }
                Ok(Err(e)) => {
                    let reason = handshake_failure(&e);
                    tracing::warn!(%service, %endpoint, reason, error = %e, "outbound handshake failed");
                    reason
                }
                Err(_) => "timeout",
            };
            m.handshake_errors
                .with_label_values(&[OUTBOUND, reason])
                .inc();
            return Err(ConnectError::Handshake);
        }
        m.connection_errors
            .with_label_values(&[OUTBOUND, "no_reachable_endpoint"])
            .inc();
        tracing::warn!(%service, "no endpoint reachable");
        Err(ConnectError::Unreachable)
    }
}
