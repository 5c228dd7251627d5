//! Outbound: take the local app's plaintext connection, find the service it
//! is for, and carry it to one of that service's sidecars over mutual TLS,
//! accepting only a server that presents the service's SPIFFE ID.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::pki_types::ServerName;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use ward_config::mesh::Service;

use crate::Shared;
use crate::forward::{splice, tls_transport};
use crate::listener::{ConnectionRecord, accept_loop};
use crate::metrics::OUTBOUND;
use crate::tls::failure::handshake_failure;

/// A `--forward` listener's target service.
pub struct Route {
    pub service: String,
    /// Round-robin position over the service's endpoints.
    next: AtomicUsize,
}

impl Route {
    pub fn new(service: String) -> Self {
        Self {
            service,
            next: AtomicUsize::new(0),
        }
    }
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, route: Arc<Route>) {
    let handler_shared = shared.clone();
    accept_loop(listener, shared, OUTBOUND, move |tcp, client, record| {
        let shared = handler_shared.clone();
        let route = route.clone();
        async move { handle(tcp, client, record, shared, route).await }
    })
    .await;
}

async fn handle(
    app: TcpStream,
    client: SocketAddr,
    mut record: ConnectionRecord,
    shared: Arc<Shared>,
    route: Arc<Route>,
) {
    let m = &shared.metrics;
    let registry = shared.registry.snapshot();
    let Some(service) = registry.mesh.service(&route.service) else {
        m.connection_errors
            .with_label_values(&[OUTBOUND, "unknown_service"])
            .inc();
        tracing::warn!(%client, service = %route.service, "service is not in the mesh file");
        return;
    };
    record.peer = service.name.clone();
    let Some(tls) = connect(service, &route, &shared).await else {
        return;
    };
    let sent = m.bytes.with_label_values(&[OUTBOUND, &record.peer, "sent"]);
    let received = m
        .bytes
        .with_label_values(&[OUTBOUND, &record.peer, "received"]);
    if let Err(e) = splice(
        app,
        tls,
        shared.limits.idle_timeout,
        Some(sent),
        Some(received),
    )
    .await
    {
        tracing::debug!(service = %service.name, error = %e, "outbound connection ended");
    }
}

/// Tries the service's endpoints in round-robin order until one completes
/// the handshake. A TLS failure (wrong identity, untrusted chain) is not
/// retried on another endpoint: it is a security event, not an outage.
async fn connect(
    service: &Service,
    route: &Route,
    shared: &Shared,
) -> Option<TlsStream<BufReader<TcpStream>>> {
    let m = &shared.metrics;
    let config = match shared.tls.client(&service.identity) {
        Ok(config) => config,
        Err(e) => {
            m.handshake_errors
                .with_label_values(&[OUTBOUND, "no_identity"])
                .inc();
            tracing::warn!(service = %service.name, error = %e, "refusing outbound connection");
            return None;
        }
    };
    let start = route.next.fetch_add(1, Ordering::Relaxed);
    let count = service.endpoints.len();
    for i in 0..count {
        let endpoint = service.endpoints[(start + i) % count];
        let tcp = match tokio::time::timeout(
            shared.limits.connect_timeout,
            TcpStream::connect(endpoint),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                tracing::info!(service = %service.name, %endpoint, error = %e, "endpoint unreachable; trying the next");
                continue;
            }
            Err(_) => continue,
        };
        let _ = tcp.set_nodelay(true);
        let handshake = TlsConnector::from(config.clone())
            .connect(ServerName::from(endpoint.ip()), tls_transport(tcp));
        return match tokio::time::timeout(shared.limits.handshake_timeout, handshake).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => {
                let reason = handshake_failure(&e);
                m.handshake_errors
                    .with_label_values(&[OUTBOUND, reason])
                    .inc();
                tracing::warn!(service = %service.name, %endpoint, reason, error = %e, "outbound handshake failed");
                None
            }
            Err(_) => {
                m.handshake_errors
                    .with_label_values(&[OUTBOUND, "timeout"])
                    .inc();
                None
            }
        };
    }
    m.connection_errors
        .with_label_values(&[OUTBOUND, "no_reachable_endpoint"])
        .inc();
    tracing::warn!(service = %service.name, "no endpoint reachable");
    None
}
