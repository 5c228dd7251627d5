//! Served HTTP, both directions. Ports that carry HTTP (declared `http`, or
//! detected on `detect` ports) are served with hyper, request by request,
//! so each request is measured under its peer and, inbound, authorized
//! under the peer's verified identity.
//!
//! - Inbound ([`serve_inbound`], [`serve_probe`]): after the mTLS
//!   handshake (or, for declared probes, in plaintext), requests go to the
//!   local app once the policy allows them (`authorize.rs`).
//! - Outbound ([`serve_outbound`]): the local app's plaintext requests go to
//!   a sidecar of the destination service over mTLS (`upstream.rs`); the
//!   caller's view of every request, the mesh hop included.
//!
//! Each downstream connection gets its own upstream connection of the same
//! HTTP version (HTTP/2 to the app is prior knowledge, as gRPC servers
//! expect); outbound HTTP/1 ones are pooled across app connections
//! (`pool.rs`). Upgrades (WebSocket) are forwarded on a dedicated upstream
//! connection and then carried as bytes. On drain, HTTP/1 finishes the
//! request in flight and HTTP/2 sends GOAWAY; in-flight requests run to
//! completion within the drain timeout. A connection on which no byte moved
//! for the idle timeout is closed, as an opaque one is (HTTP/1 between
//! requests: by hyper's header read timeout, the same limit).

mod authorize;
pub mod detect;
mod headers;
pub mod pool;
mod respond;
mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::server::conn::{http1 as server1, http2 as server2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Shared;
use crate::authz::Inbound;
use crate::outbound::Destination;
use detect::Detected;
use upstream::{Hop, Upstream};

pub(crate) use respond::request_id;

/// How long an idle HTTP/2 connection is given to send its GOAWAY.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// Largest request head accepted (HTTP/1 buffer, HTTP/2 header list).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

type Body = BoxBody<Bytes, hyper::Error>;

/// Serves mTLS-authenticated HTTP on `io` (already known to be `version`)
/// until the client is done or the drain closes it.
pub async fn serve_inbound<S>(
    io: S,
    version: Detected,
    authz: Inbound,
    peer: String,
    app: SocketAddr,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let hop = Hop::App {
        addr: app,
        authz: Some(authz),
    };
    serve(io, version, hop, peer, shared).await
}

/// Serves a plaintext health probe (kubelet, no mTLS): HTTP/1 requests
/// whose normalized path is a declared probe path go to the app; anything
/// else gets 403.
pub async fn serve_probe(tcp: tokio::net::TcpStream, app: SocketAddr, shared: Arc<Shared>) {
    let hop = Hop::App {
        addr: app,
        authz: None,
    };
    serve(tcp, Detected::Http1, hop, "probe".into(), shared).await
}

/// Serves the local app's plaintext HTTP, each request carried to
/// `destination` over mTLS.
pub async fn serve_outbound<S>(
    io: S,
    version: Detected,
    destination: Destination,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = destination.service.clone();
    serve(io, version, Hop::Mesh(destination), peer, shared).await
}

async fn serve<S>(io: S, version: Detected, hop: Hop, peer: String, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let direction = hop.direction();
    let (reads, writes) = crate::forward::flows(direction);
    let bytes = |flow| {
        shared
            .metrics
            .bytes
            .with_label_values(&[direction, &peer, flow])
    };
    let io = crate::forward::metered(io, bytes(reads), bytes(writes));
    let activity = io.activity();
    let idle = activity.idle(shared.limits.idle_timeout);
    let authz = hop.authz().cloned();
    let upstream = Arc::new(Upstream::new(hop, peer, shared.clone()));
    let tunnels = upstream.clone();
    let svc = service_fn(move |req| {
        let upstream = upstream.clone();
        async move { Ok::<_, Infallible>(upstream.forward(req).await) }
    });
    let io = TokioIo::new(io);
    let drain = shared.drain.clone();
    let result = match version {
        Detected::Http2 => {
            let conn = server2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(MAX_HEADER_BYTES as u32)
                .serve_connection(io, svc);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => res,
                () = drain.draining() => { conn.as_mut().graceful_shutdown(); conn.await }
                () = revoked(authz.as_ref(), &shared) => Ok(()),
                () = idle => {
                    // Nothing moved on any stream: GOAWAY, a moment to send it, close.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(GOAWAY_GRACE, conn).await;
                    Ok(())
                }
            }
        }
        _ => {
            let conn = server1::Builder::new()
                .timer(TokioTimer::new())
                // Also the keep-alive idle limit between requests.
                .header_read_timeout(shared.limits.idle_timeout)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(io, svc)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => res,
                () = drain.draining() => { conn.as_mut().graceful_shutdown(); conn.await }
                () = revoked(authz.as_ref(), &shared) => Ok(()),
                // A request whose body or answer stalls as long as an idle
                // connection is cut like one.
                () = idle => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(direction, error = %e, "HTTP connection ended with an error");
    }
    tunnels.release().await;
    tunnels.tunnels_closed().await;
}

/// Resolves when a policy reload revokes an authenticated inbound
/// connection; never for probes or outbound connections.
async fn revoked(authz: Option<&Inbound>, shared: &Shared) {
    match authz {
        Some(authz) => authz.revoked(shared, true).await,
        None => std::future::pending().await,
    }
}
