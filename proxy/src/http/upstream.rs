//! The next hop of served HTTP: the app (inbound, plaintext) or a sidecar
//! of the destination service (outbound, mTLS). One upstream connection
//! per downstream connection, of the same HTTP version, taken at the
//! first request and reopened when the next hop closed it between
//! requests; WebSocket upgrades get a connection of their own. An HTTP/1
//! mesh connection comes from the pool if it has one, and goes back to it
//! when the downstream connection ends (`pool.rs`).
//!
//! A reused connection can go away under a request: the next hop's idle
//! timeout closes an HTTP/1 keep-alive connection, or a draining peer
//! sends HTTP/2 GOAWAY (or refuses the stream), just as the request goes
//! out (a pooled connection counts as reused). The request is then sent
//! again, once, on a new connection, if it
//! was never written or if it is safe and has no body (GET, HEAD, OPTIONS,
//! TRACE: what Go's HTTP client replays); anything else gets its 502.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Empty};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::{http1 as client1, http2 as client2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::{Histogram, IntCounter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::headers::{is_upgrade, strip_hop_by_hop};
use super::pool::Origin;
use super::respond::answer;
use super::{Body, revoked};
use crate::authz::Inbound;
use crate::metrics::{INBOUND, OUTBOUND};
use crate::outbound::{ConnectError, Destination};
use crate::tls::config::Carries;
use crate::{Shared, upstream};

/// Where requests go.
pub enum Hop {
    /// Inbound: the local app. `authz` is `None` for plaintext health
    /// probes (only the declared probe paths pass).
    App {
        addr: SocketAddr,
        authz: Option<Inbound>,
    },
    /// Outbound: the destination service's sidecars.
    Mesh(Destination),
}

impl Hop {
    /// The `direction` label.
    pub fn direction(&self) -> &'static str {
        match self {
            Self::App { .. } => INBOUND,
            Self::Mesh(_) => OUTBOUND,
        }
    }

    pub fn authz(&self) -> Option<&Inbound> {
        match self {
            Self::App { authz, .. } => authz.as_ref(),
            Self::Mesh(_) => None,
        }
    }
}

/// "Client closed request" (nginx's 499): the downstream client went away
/// before its request was complete.
const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// A request body towards the next hop: the downstream's own, or none for
/// a request sent again.
pub(super) type UpBody = Either<Incoming, Empty<Bytes>>;

/// A stream to the next hop, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}
type Conn = TokioIo<Box<dyn Io>>;

/// The upstream side of one downstream connection.
pub struct Upstream {
    pub hop: Hop,
    pub shared: Arc<Shared>,
    /// The `peer` label of this connection's requests.
    peer: String,
    /// This connection's request series, looked up at its first request
    /// (so a connection without requests adds no series) rather than per
    /// request: the duration, and the count of the usual answer (200).
    duration: OnceLock<Histogram>,
    ok: OnceLock<IntCounter>,
    h1: Mutex<Option<H1>>,
    h2: Mutex<H2Slot>,
    /// Upgraded (WebSocket) tunnels: they outlive the HTTP connection, and
    /// the downstream connection stays open, counted and drained, until
    /// they end.
    tunnels: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Upstream {
    pub fn new(hop: Hop, peer: String, shared: Arc<Shared>) -> Self {
        Self {
            hop,
            peer,
            duration: OnceLock::new(),
            ok: OnceLock::new(),
            shared,
            h1: Mutex::new(None),
            h2: Mutex::default(),
            tunnels: std::sync::Mutex::default(),
        }
    }

    /// Waits for the upgraded tunnels of this connection to end.
    pub async fn tunnels_closed(&self) {
        let tunnels = std::mem::take(&mut *self.tunnels.lock().unwrap_or_else(|e| e.into_inner()));
        for tunnel in tunnels {
            let _ = tunnel.await;
        }
    }

    /// Answers one request (inbound: if the policy allows it) and counts
    /// it under this connection's peer.
    pub async fn forward(&self, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let resp = self.authorized(req).await;
        let m = &self.shared.metrics;
        let direction = self.hop.direction();
        let status = resp.status();
        let count = |status: StatusCode| {
            let labels = [direction, self.peer.as_str(), status.as_str()];
            m.http_requests.with_label_values(&labels)
        };
        if status == StatusCode::OK {
            self.ok.get_or_init(|| count(status)).inc();
        } else {
            count(status).inc();
        }
        let duration = self
            .duration
            .get_or_init(|| m.http_duration.with_label_values(&[direction, &self.peer]));
        duration.observe(started.elapsed().as_secs_f64());
        resp
    }

    pub(super) async fn send(&self, mut req: Request<Incoming>) -> Response<Body> {
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
            Err(e) => self.failed(e),
        }
    }

    /// What the downstream client is told when the next hop failed; the
    /// details are in the log line (and counted where they happened).
    fn failed(&self, e: UpstreamError) -> Response<Body> {
        if let UpstreamError::Http(h) = &e
            && h.is_user()
        {
            // The request's own body failed: the downstream client gave up
            // (or broke its framing) mid-request. Nobody reads this answer;
            // it is counted as 499 so it does not pass for a failing peer.
            tracing::debug!(direction = self.hop.direction(), error = %e, "client abandoned its request");
            return answer(CLIENT_CLOSED_REQUEST, "ward: request abandoned\n".into());
        }
        match &self.hop {
            Hop::App { addr, .. } => {
                tracing::warn!(app = %addr, error = %e, "app request failed");
                answer(
                    StatusCode::BAD_GATEWAY,
                    "ward: the app did not answer\n".into(),
                )
            }
            Hop::Mesh(dest) => {
                let service = &dest.service;
                tracing::warn!(%service, error = %e, "outbound request failed");
                let status = match e {
                    UpstreamError::Mesh(
                        ConnectError::Unreachable
                        | ConnectError::NoIdentity
                        | ConnectError::UnknownService,
                    ) => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::BAD_GATEWAY,
                };
                let what = match e {
                    UpstreamError::Mesh(e) => e.to_string(),
                    _ => "its sidecar closed the connection without an answer \
                          (its policy may refuse this workload: see that sidecar's log)"
                        .into(),
                };
                answer(status, format!("ward: {service}: {what}\n"))
            }
        }
    }

    async fn connect(&self) -> Result<Conn, UpstreamError> {
        let io: Box<dyn Io> = match &self.hop {
            Hop::App { addr, .. } => Box::new(self.connect_app(*addr).await?),
            Hop::Mesh(dest) => Box::new(dest.connect(Carries::Http, &self.shared).await?),
        };
        Ok(TokioIo::new(io))
    }

    async fn connect_app(&self, addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
        let app = upstream::connect(addr, upstream::Upstream::App, INBOUND, &self.shared);
        app.await.ok_or(UpstreamError::AppUnreachable)
    }

    async fn send_h1(&self, req: Request<Incoming>) -> Result<Response<Incoming>, UpstreamError> {
        let mut slot = self.h1.lock().await;
        let (mut conn, reused) = match slot.take() {
            Some(c) if !c.sender.is_closed() => (c, true),
            _ => self.open_h1(true).await?,
        };
        let req = match attempt(&mut conn.sender, req, reused).await {
            Ok(resp) => {
                *slot = Some(conn);
                return Ok(resp);
            }
            Err((error, None)) => return Err(error.into()),
            Err((error, Some(req))) => {
                tracing::debug!(direction = self.hop.direction(), %error, "the next hop closed a reused connection under a request: sending it again on a new one");
                req
            }
        };
        let (mut conn, _) = self.open_h1(false).await?;
        conn.sender.ready().await?;
        let resp = conn.sender.send_request(req).await;
        *slot = Some(conn);
        Ok(resp?)
    }

    /// An HTTP/1 connection to the next hop, and whether it came from the
    /// pool: to the mesh, an idle one from the pool if `try_pool` and it
    /// has one, else a new one; to the app, always a new one.
    async fn open_h1(&self, try_pool: bool) -> Result<(H1, bool), UpstreamError> {
        let (io, origin): (Box<dyn Io>, _) = match &self.hop {
            Hop::App { addr, .. } => (Box::new(self.connect_app(*addr).await?), None),
            Hop::Mesh(dest) => {
                let route = dest.route(&self.shared)?;
                if try_pool && let Some((sender, origin)) = self.shared.pool.take(&route) {
                    let origin = Some(origin);
                    return Ok((H1 { sender, origin }, true));
                }
                let tls = route.connect(Carries::Http, &self.shared).await?;
                let origin = Origin::of(&route, &tls, self.shared.limits.pool_max_age);
                (Box::new(tls), origin)
            }
        };
        let (sender, conn) = client1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(conn);
        Ok((H1 { sender, origin }, false))
    }

    /// Gives the mesh connection back to the pool (it is ready for
    /// another app connection's requests) once the downstream connection
    /// has ended.
    pub async fn release(&self) {
        let conn = self.h1.lock().await.take();
        if let Some(H1 {
            sender,
            origin: Some(origin),
        }) = conn
        {
            self.shared
                .pool
                .put(sender, origin, &self.shared.drain)
                .await;
        }
    }

    /// HTTP/2: one connection shared by the downstream connection's
    /// streams; on a resend, a new one (the old one is going away).
    async fn send_h2(&self, req: Request<Incoming>) -> Result<Response<Incoming>, UpstreamError> {
        let (mut sender, used, reused) = self.h2_sender(None).await?;
        let req = match attempt(&mut sender, req, reused).await {
            Ok(resp) => return Ok(resp),
            Err((error, None)) => return Err(error.into()),
            Err((error, Some(req))) => {
                tracing::debug!(direction = self.hop.direction(), %error, "the next hop's HTTP/2 connection went away under a request: sending it again on a new one");
                req
            }
        };
        let (mut sender, ..) = self.h2_sender(Some(used)).await?;
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    }

    /// The shared HTTP/2 connection, its generation, and whether it was
    /// already open. `replacing`: the generation that went away under a
    /// request; a new connection replaces it, unless another request has
    /// already replaced it (one GOAWAY, one new connection).
    async fn h2_sender(
        &self,
        replacing: Option<u64>,
    ) -> Result<(client2::SendRequest<UpBody>, u64, bool), UpstreamError> {
        let mut slot = self.h2.lock().await;
        if let Some(s) = &slot.sender
            && !s.is_closed()
            && replacing != Some(slot.generation)
        {
            return Ok((s.clone(), slot.generation, true));
        }
        let (s, conn) = client2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(self.connect().await?)
            .await?;
        tokio::spawn(conn);
        slot.generation += 1;
        slot.sender = Some(s.clone());
        Ok((s, slot.generation, false))
    }

    /// An HTTP/1 upgrade: a dedicated upstream connection; on 101, the two
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
            let (authz, shared) = (self.hop.authz().cloned(), self.shared.clone());
            let tunnel = tokio::spawn(async move {
                // Bytes are already counted on the metered downstream stream.
                let (Ok(down), Ok(up)) = tokio::join!(downstream, upstream) else {
                    return;
                };
                let (a, b) = (TokioIo::new(down), TokioIo::new(up));
                tokio::select! {
                    _ = crate::forward::splice(a, b, idle, None, None) => {}
                    () = revoked(authz.as_ref(), &shared) => {}
                    () = shared.drain.closing() => {}
                }
            });
            let mut tunnels = self.tunnels.lock().unwrap_or_else(|e| e.into_inner());
            tunnels.push(tunnel);
        }
        Ok(resp)
    }
}

/// The HTTP/1 connection a downstream connection's requests go on; from
/// the pool, or to go back to it, if it is a mesh connection.
struct H1 {
    sender: client1::SendRequest<UpBody>,
    origin: Option<Origin>,
}

/// The HTTP/2 connection a downstream connection's streams share.
#[derive(Default)]
struct H2Slot {
    sender: Option<client2::SendRequest<UpBody>>,
    /// Counts the connections opened, so a request that lost one can tell
    /// whether it was already replaced.
    generation: u64,
}

/// hyper's HTTP/1 and HTTP/2 request senders, for [`attempt`].
trait Sender {
    async fn ready(&mut self) -> hyper::Result<()>;
    async fn try_send(&mut self, req: Request<UpBody>) -> Result<Response<Incoming>, TrySend>;
}

type TrySend = hyper::client::conn::TrySendError<Request<UpBody>>;

impl Sender for client1::SendRequest<UpBody> {
    async fn ready(&mut self) -> hyper::Result<()> {
        client1::SendRequest::ready(self).await
    }
    async fn try_send(&mut self, req: Request<UpBody>) -> Result<Response<Incoming>, TrySend> {
        self.try_send_request(req).await
    }
}

impl Sender for client2::SendRequest<UpBody> {
    async fn ready(&mut self) -> hyper::Result<()> {
        client2::SendRequest::ready(self).await
    }
    async fn try_send(&mut self, req: Request<UpBody>) -> Result<Response<Incoming>, TrySend> {
        self.try_send_request(req).await
    }
}

/// Sends `req` on `sender`. On failure, the error and, if the request may
/// go out again on a new connection (the connection was `reused`, and the
/// request never written, or safe, bodyless and unanswered), the request.
async fn attempt(
    sender: &mut impl Sender,
    req: Request<Incoming>,
    reused: bool,
) -> Result<Response<Incoming>, (hyper::Error, Option<Request<UpBody>>)> {
    let replay = if reused { replayable(&req) } else { None };
    let req = req.map(Either::Left);
    let (error, unsent) = match sender.ready().await {
        Err(e) => (e, Some(req)),
        Ok(()) => match sender.try_send(req).await {
            Ok(resp) => return Ok(resp),
            Err(mut e) => {
                let unsent = e.take_message();
                (e.into_error(), unsent)
            }
        },
    };
    let again = unsent.or_else(|| replay.filter(|_| went_unanswered(&error)));
    Err((error, again.filter(|_| reused)))
}

/// A copy of `req` to send again should a reused connection close under
/// it: only a request without a body and with a safe method (a replayed
/// DELETE, idempotent though it is, could answer 404 after it succeeded).
fn replayable(req: &Request<Incoming>) -> Option<Request<UpBody>> {
    let safe = [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE].contains(req.method());
    if !safe || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(Either::Right(Empty::new()));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    Some(copy)
}

/// Whether the connection went away under a request without an answer
/// (closed or reset; HTTP/2: the peer's GOAWAY, or its refusal of the
/// stream), as opposed to an answer that made no sense or a request body
/// that failed.
fn went_unanswered(error: &hyper::Error) -> bool {
    use std::error::Error as _;
    let source = error.source();
    let gone_away = source
        .and_then(|e| e.downcast_ref::<h2::Error>())
        .is_some_and(|e| {
            e.is_remote() && (e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM))
        });
    error.is_incomplete_message()
        || error.is_canceled()
        || gone_away
        || source.is_some_and(|e| e.downcast_ref::<std::io::Error>().is_some())
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Counted and logged by [`upstream::connect`].
    #[error("the app did not accept a connection")]
    AppUnreachable,
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    Mesh(#[from] ConnectError),
}
