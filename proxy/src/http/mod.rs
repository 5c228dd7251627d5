//! HTTP on inbound connections: after the mTLS handshake, ports that carry
//! HTTP (declared `http`, or detected on `detect` ports) are served with
//! hyper, request by request, so each request is measured (and, with the
//! policy, authorized) under the peer's verified identity.
//!
//! Each downstream connection gets its own upstream connection to the app,
//! of the same HTTP version (HTTP/2 to the app is prior knowledge, as gRPC
//! servers expect). Upgrades (WebSocket) are forwarded on a dedicated
//! upstream connection and then carried as bytes. On drain, HTTP/1 finishes
//! the request in flight and HTTP/2 sends GOAWAY; in-flight requests run to
//! completion within the drain timeout.

pub mod detect;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderName, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1 as client1, http2 as client2};
use hyper::server::conn::{http1 as server1, http2 as server2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::Shared;
use crate::authz::Inbound;
use crate::metrics::INBOUND;
use detect::Detected;
use ward_config::policy::engine::HttpRequest;
use ward_config::policy::path::normalize;

/// Largest request head accepted (HTTP/1 buffer, HTTP/2 header list).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

type Body = BoxBody<Bytes, hyper::Error>;

/// Hop-by-hop headers (RFC 9110 §7.6.1): meaningful for one connection only.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Serves HTTP on `io` (already known to be `version`) until the client is
/// done or the drain closes it.
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
    serve(io, version, Some(authz), peer, app, shared).await
}

/// Serves a plaintext health probe (kubelet, no mTLS): HTTP/1 requests
/// whose normalized path is a declared probe path go to the app; anything
/// else gets 403.
pub async fn serve_probe(tcp: tokio::net::TcpStream, app: SocketAddr, shared: Arc<Shared>) {
    serve(tcp, Detected::Http1, None, "probe".into(), app, shared).await
}

async fn serve<S>(
    io: S,
    version: Detected,
    authz: Option<Inbound>,
    peer: String,
    app: SocketAddr,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let received = shared
        .metrics
        .bytes
        .with_label_values(&[INBOUND, &peer, "received"]);
    let sent = shared
        .metrics
        .bytes
        .with_label_values(&[INBOUND, &peer, "sent"]);
    let io = crate::forward::metered(io, received, sent);
    let upstream = Arc::new(Upstream {
        app,
        authz: authz.clone(),
        shared: shared.clone(),
        h1: Mutex::new(None),
        h2: Mutex::new(None),
    });
    let peer = Arc::new(peer);
    let svc = service_fn(move |req| {
        let upstream = upstream.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(upstream.forward(req, &peer).await) }
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
                () = revoked(&authz, &shared) => Ok(()),
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
                () = revoked(&authz, &shared) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "inbound HTTP connection ended with an error");
    }
}

/// The app side of one downstream connection.
struct Upstream {
    app: SocketAddr,
    /// `None` for plaintext health probes: only the declared probe paths pass.
    authz: Option<Inbound>,
    shared: Arc<Shared>,
    h1: Mutex<Option<client1::SendRequest<Incoming>>>,
    h2: Mutex<Option<client2::SendRequest<Incoming>>>,
}

impl Upstream {
    async fn forward(&self, req: Request<Incoming>, peer: &str) -> Response<Body> {
        let started = Instant::now();
        let resp = self.authorized(req).await;
        let m = &self.shared.metrics;
        m.http_requests
            .with_label_values(&[INBOUND, peer, resp.status().as_str()])
            .inc();
        m.http_duration
            .with_label_values(&[INBOUND, peer])
            .observe(started.elapsed().as_secs_f64());
        resp
    }

    /// Normalizes the path, asks the policy, and forwards what it allows
    /// with the normalized path (what was checked is what the app sees).
    async fn authorized(&self, mut req: Request<Incoming>) -> Response<Body> {
        let path = match normalize(req.uri().path()) {
            Ok(path) => path,
            Err(e) => {
                let id = request_id();
                let labels = [INBOUND, "deny", "invalid_path"];
                self.shared.metrics.authz.with_label_values(&labels).inc();
                let peer = self.authz.as_ref().map(|a| a.peer.to_string());
                tracing::warn!(peer, request_id = %id, error = %e, "refused an ambiguous request path");
                return refusal(StatusCode::BAD_REQUEST, &id);
            }
        };
        let id = request_id();
        let snapshot = self.shared.registry.snapshot();
        let passes = match &self.authz {
            Some(authz) => {
                let http = HttpRequest {
                    method: req.method().as_str(),
                    path: &path,
                };
                authz
                    .decide(&self.shared, &snapshot, Some(http), Some(&id))
                    .verdict
                    .passes()
            }
            None => {
                let probe = snapshot.engine.is_probe(self.app.port(), Some(&path));
                let decision = if probe { "allow" } else { "deny" };
                self.shared
                    .metrics
                    .authz
                    .with_label_values(&[INBOUND, decision, "probe"])
                    .inc();
                if !probe {
                    tracing::warn!(path = %path, port = self.app.port(), request_id = %id, "plaintext request outside the declared probes");
                }
                probe
            }
        };
        drop(snapshot);
        if !passes {
            return refusal(StatusCode::FORBIDDEN, &id);
        }
        let rewritten = if path != req.uri().path() {
            set_path(&mut req, &path)
        } else {
            Ok(())
        };
        if let Err(e) = rewritten {
            tracing::warn!(error = %e, "cannot rewrite the request path");
            return refusal(StatusCode::BAD_REQUEST, &id);
        }
        self.send(req).await
    }

    async fn send(&self, mut req: Request<Incoming>) -> Response<Body> {
        let upgrade = is_upgrade(&req);
        strip_hop_by_hop(req.headers_mut(), upgrade);
        let result = if upgrade {
            self.forward_upgrade(req).await
        } else if req.version() == Version::HTTP_2 {
            self.send_h2(req).await
        } else {
            self.send_h1(req).await
        };
        match result {
            Ok(mut resp) => {
                if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                    strip_hop_by_hop(resp.headers_mut(), false);
                }
                resp.map(|b| b.boxed())
            }
            Err(e) => {
                tracing::warn!(app = %self.app, error = %e, "app request failed");
                error_response(StatusCode::BAD_GATEWAY, "ward: the app did not answer\n")
            }
        }
    }

    async fn connect(&self) -> std::io::Result<TokioIo<TcpStream>> {
        let connect = self.shared.dialer.connect(self.app);
        let tcp = tokio::time::timeout(self.shared.limits.connect_timeout, connect)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))??;
        let _ = tcp.set_nodelay(true);
        Ok(TokioIo::new(tcp))
    }

    async fn send_h1(&self, req: Request<Incoming>) -> Result<Response<Incoming>, UpstreamError> {
        let mut slot = self.h1.lock().await;
        let mut sender = match slot.take() {
            Some(s) if !s.is_closed() => s,
            _ => {
                let (s, conn) = client1::handshake(self.connect().await?).await?;
                tokio::spawn(conn);
                s
            }
        };
        sender.ready().await?;
        let resp = sender.send_request(req).await;
        *slot = Some(sender);
        Ok(resp?)
    }

    async fn send_h2(&self, req: Request<Incoming>) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = {
            let mut slot = self.h2.lock().await;
            match slot.as_ref() {
                Some(s) if !s.is_closed() => s.clone(),
                _ => {
                    let (s, conn) = client2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .handshake(self.connect().await?)
                        .await?;
                    tokio::spawn(conn);
                    *slot = Some(s.clone());
                    s
                }
            }
        };
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    }

    /// An HTTP/1 upgrade: a dedicated app connection; on 101, the two
    /// upgraded connections are joined byte for byte.
    async fn forward_upgrade(
        &self,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let downstream = hyper::upgrade::on(&mut req);
        let (mut sender, conn) = client1::handshake(self.connect().await?).await?;
        tokio::spawn(conn.with_upgrades());
        let mut resp = sender.send_request(req).await?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream = hyper::upgrade::on(&mut resp);
            let idle = self.shared.limits.idle_timeout;
            let (authz, shared) = (self.authz.clone(), self.shared.clone());
            tokio::spawn(async move {
                // Bytes are already counted on the metered downstream stream.
                let (Ok(down), Ok(up)) = tokio::join!(downstream, upstream) else {
                    return;
                };
                let (a, b) = (TokioIo::new(down), TokioIo::new(up));
                tokio::select! {
                    _ = crate::forward::splice(a, b, idle, None, None) => {}
                    () = revoked(&authz, &shared) => {}
                    () = shared.drain.closing() => {}
                }
            });
        }
        Ok(resp)
    }
}

#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// Only WebSocket upgrades are carried: any other protocol switch (h2c,
/// custom) would turn a policed HTTP connection into unchecked bytes, so
/// those requests go to the app as plain requests, Upgrade header removed.
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Removes hop-by-hop headers and those the Connection header names. For
/// an upgrade request, `Connection: upgrade` and `Upgrade` must go through.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(
        HOP_BY_HOP
            .iter()
            .map(|h| HeaderName::from_static(h))
            .collect::<Vec<_>>()
            .iter(),
    ) {
        if keep_upgrade && (name == CONNECTION || name == UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(CONNECTION, http::HeaderValue::from_static("upgrade"));
    }
}

/// Resolves when a policy reload revokes an authenticated connection;
/// never for probes.
async fn revoked(authz: &Option<Inbound>, shared: &Shared) {
    match authz {
        Some(authz) => authz.revoked(shared, true).await,
        None => std::future::pending().await,
    }
}

/// A random id that ties a refusal the caller sees to the proxy's log line.
fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A refusal that says nothing about the policy, only how to find the log.
fn refusal(status: StatusCode, request_id: &str) -> Response<Body> {
    let text = format!(
        "ward: request refused ({}), request id {request_id}\n",
        status.as_u16()
    );
    let mut resp = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-request-id", value);
    }
    resp
}

/// Replaces the path of `req`, keeping its query.
fn set_path<B>(req: &mut Request<B>, path: &str) -> Result<(), http::Error> {
    let mut parts = req.uri().clone().into_parts();
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    parts.path_and_query = Some(format!("{path}{query}").parse()?);
    *req.uri_mut() = http::Uri::from_parts(parts)?;
    Ok(())
}

fn error_response(status: StatusCode, text: &'static str) -> Response<Body> {
    let body = Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp
}
