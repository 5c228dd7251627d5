//! Inbound: terminate mutual TLS from other sidecars and forward to the
//! local app. The handshake requires a client SVID of our trust domain;
//! the verified peer identity is what the policy authorizes and what log
//! lines name, and labels the metrics if the mesh file names it (else
//! `peer="other"`, see `metrics`). The port's declared protocol picks
//! the path: `tcp` is spliced at once (server-speaks-first safe), `http` is
//! served request by request, `detect` sniffs first (see `http::detect`)
//! unless the client sidecar says it carries opaque bytes (see
//! `tls::config::Carries`) and the policy does not require HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use ward_config::Protocol;

use crate::Shared;
use crate::authz::Inbound;
use crate::dst::OriginalDst;
use crate::forward::{splice_counted, tls_transport};
use crate::http::{
    self,
    detect::{Detected, sniff},
};
use crate::listener::{ConnectionRecord, accept_loop};
use crate::metrics::{INBOUND, OTHER_PEER};
use crate::tls::config::Carries;
use crate::tls::failure::handshake_failure;
use crate::tls::{chain_expired, peer_id};
use crate::upstream::{self, Upstream};

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, dst: Arc<dyn OriginalDst>) {
    let handler_shared = shared.clone();
    accept_loop(listener, shared, INBOUND, move |tcp, client, record| {
        let shared = handler_shared.clone();
        let dst = dst.clone();
        async move { handle(tcp, client, record, shared, dst).await }
    })
    .await;
}

async fn handle(
    tcp: TcpStream,
    client: SocketAddr,
    mut record: ConnectionRecord,
    shared: Arc<Shared>,
    dst: Arc<dyn OriginalDst>,
) {
    let m = &shared.metrics;
    let handshake_error = |reason: &str| {
        m.handshake_errors
            .with_label_values(&[INBOUND, reason])
            .inc()
    };
    let target = match dst.original_dst(&tcp) {
        Ok(target) => target,
        Err(e) => {
            tracing::warn!(%client, error = %e, "inbound connection refused");
            m.connection_errors
                .with_label_values(&[INBOUND, e.reason()])
                .inc();
            return;
        }
    };
    // A TLS ClientHello starts with a handshake record (0x16); anything else
    // is plaintext, which only a declared health probe may send.
    let mut first = [0u8; 1];
    match tokio::time::timeout(shared.limits.handshake_timeout, tcp.peek(&mut first)).await {
        Ok(Ok(1..)) if first[0] != TLS_HANDSHAKE_RECORD => {
            let snapshot = shared.registry.snapshot();
            if snapshot.engine.is_probe(target.port(), None) {
                record.peer = PROBE_PEER.into();
                m.authz
                    .with_label_values(&[INBOUND, "allow", "probe"])
                    .inc();
                return splice_probe(tcp, target, &shared).await;
            }
            if snapshot.engine.has_probe_paths(target.port()) {
                record.peer = PROBE_PEER.into();
                drop(snapshot);
                return http::serve_probe(tcp, target, shared.clone()).await;
            }
        }
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return,
        Err(_) => {
            handshake_error("timeout");
            return;
        }
    }
    let config = match shared.tls.server() {
        Ok(config) => config,
        Err(e) => {
            handshake_error("no_identity");
            tracing::warn!(%client, error = %e, "refusing inbound connection");
            return;
        }
    };
    let accept = TlsAcceptor::from(config).accept(tls_transport(tcp));
    let tls = match tokio::time::timeout(shared.limits.handshake_timeout, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = handshake_failure(&e);
            handshake_error(reason);
            tracing::info!(%client, reason, error = %e, "inbound handshake failed");
            return;
        }
        Err(_) => {
            handshake_error("timeout");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    let carries = Carries::negotiated(conn.alpn_protocol());
    let leaf = conn.peer_certificates().and_then(|c| c.first());
    let Some(Ok(peer)) = leaf.map(|leaf| peer_id(leaf, shared.identity.trust_domain())) else {
        // The verifier already enforced this; a failure here is a bug: fail closed.
        handshake_error("invalid_certificate");
        return;
    };
    if conn.peer_certificates().is_none_or(chain_expired) {
        // A resumed session whose client SVID has expired since.
        handshake_error("expired_certificate");
        tracing::info!(%client, %peer, "inbound session refused: the peer's SVID has expired");
        return;
    }
    let snapshot = shared.registry.snapshot();
    record.peer = snapshot.peer_label(&peer).to_string();
    if record.peer == OTHER_PEER {
        tracing::debug!(%client, %peer, "peer not named in the mesh file: counted as peer=\"other\"");
    }
    m.handshakes
        .with_label_values(&[INBOUND, &record.peer])
        .inc();
    let authz = Inbound::new(
        peer,
        &shared,
        &snapshot,
        shared.identity.id(),
        target.port(),
    );
    let l4 = authz.decide(&shared, &snapshot, None);
    if !l4.verdict.passes() {
        return; // denied: counted and logged; the connection is closed
    }
    let protocol = authz
        .service
        .as_deref()
        .and_then(|name| snapshot.mesh.service(name))
        .and_then(|svc| svc.port(target.port()))
        .map_or(Protocol::Detect, |p| p.protocol);
    drop(snapshot);
    let opaque = match protocol {
        // Declared opaque: never wait for the client to speak first.
        Protocol::Tcp => true,
        // The client sidecar already detected: do not wait a second time.
        Protocol::Detect => carries == Carries::Opaque && !l4.requires_http,
        Protocol::Http => false,
    };
    if opaque {
        return splice_to_app(tls, target, &authz, &record.peer, &shared).await;
    }
    let timeout = match protocol {
        Protocol::Http => shared.limits.handshake_timeout,
        _ => shared.limits.detect_timeout,
    };
    let (detected, io) = match sniff(tls, timeout).await {
        Ok(sniffed) => sniffed,
        Err(e) => {
            tracing::debug!(peer = %authz.peer, error = %e, "connection ended before protocol detection");
            return;
        }
    };
    match detected {
        Detected::Opaque if protocol == Protocol::Http || l4.requires_http => {
            // Declared HTTP, or admitted only by HTTP rules: bytes that are
            // not HTTP cannot be checked, so they do not pass.
            m.connection_errors
                .with_label_values(&[INBOUND, "not_http"])
                .inc();
            tracing::info!(peer = %authz.peer, port = target.port(), "non-HTTP bytes where only HTTP is allowed");
        }
        Detected::Opaque => splice_to_app(io, target, &authz, &record.peer, &shared).await,
        version => {
            http::serve_inbound(
                io,
                version,
                authz,
                record.peer.clone(),
                target,
                shared.clone(),
            )
            .await
        }
    }
}

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The `peer` label of plaintext probe connections (kubelet).
const PROBE_PEER: &str = "probe";

/// A whole-port (TCP) probe: plaintext straight to the app.
async fn splice_probe(tcp: TcpStream, target: SocketAddr, shared: &Shared) {
    let Some(app) = upstream::connect(target, Upstream::App, INBOUND, shared).await else {
        return;
    };
    let _ = splice_counted(tcp, app, INBOUND, PROBE_PEER, shared).await;
}

/// Opaque TCP: connect to the app and carry bytes both ways.
async fn splice_to_app<S>(io: S, target: SocketAddr, authz: &Inbound, peer: &str, shared: &Shared)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(app) = upstream::connect(target, Upstream::App, INBOUND, shared).await else {
        return;
    };
    tokio::select! {
        res = splice_counted(io, app, INBOUND, peer, shared) => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "inbound connection ended");
            }
        }
        () = authz.revoked(shared, false) => {}
    }
}
