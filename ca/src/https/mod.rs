//! Serve one HTTP/1.1 service over TLS 1.3, with limits and a graceful
//! drain: the transport under the CA's API and the injector's admission
//! webhook (`ward injector`).
//!
//! It lives in ward-ca because the CA's server is where it grew and the
//! `ward` package, which holds the injector, already depends on ward-ca; a
//! crate of its own would be one more to build for a few hundred lines. It
//! knows nothing of certificates' issuance or of admission reviews: a
//! [`Handler`] answers the requests and hears about connections that never
//! became one, and a rustls [`ResolvesServerCert`] picks the certificate
//! for each handshake, so either server can swap its certificate without
//! a restart.
//!
//! What it guarantees: TLS 1.3 only (aws-lc-rs), ALPN `http/1.1`, and
//! limits that keep one client from starving the rest (see [`Limits`]): a
//! connection cap, a TLS handshake timeout, a header read timeout (which
//! also closes idle keep-alive connections), a body size and read timeout
//! ([`read_body`]). Shutdown stops accepting and lets in-flight requests
//! finish within a grace period.
//!
//! HTTP/1.1 only: both services see a few calls per workload (or per Pod),
//! one protocol means one set of timeouts to get right, and the Kubernetes
//! API server falls back to it.

mod body;
mod progress;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::ServerConfig;
use rustls::server::ResolvesServerCert;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

pub use body::{BodyError, read_body};
use progress::RequestProgress;

/// Resource limits of an endpoint.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body.
    pub max_body: usize,
    /// Time to receive a request's headers, and separately its body.
    pub request_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    /// How long in-flight requests may run after shutdown begins.
    pub drain_timeout: Duration,
}

/// The CA's limits (a P-256 CSR is under 1 KiB); other services start
/// from these and change what differs.
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

/// hyper's own cap on a connection's read buffer (`DEFAULT_MAX_BUFFER_SIZE`).
const HYPER_MAX_BUF: usize = 8192 + 4096 * 100;

impl Limits {
    /// The read buffer, which bounds the request head: no larger than the
    /// body limit, so a small API does not hold hundreds of KiB of headers
    /// per connection, but never below 16 KiB nor above hyper's default.
    fn read_buffer(&self) -> usize {
        self.max_body.clamp(16 * 1024, HYPER_MAX_BUF)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// What an [`HttpsServer`] serves: the answers to requests, and what the
/// service wants to know (count, log) about connections that never became
/// one. Every failure is already logged at debug level.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;

    /// A connection over [`Limits::max_connections`] was dropped.
    fn connection_refused(&self, _client: SocketAddr) {}

    /// The TLS handshake failed or did not finish in time.
    fn handshake_failed(&self, _client: SocketAddr) {}

    /// No complete request head arrived within [`Limits::request_timeout`].
    /// `mid_request` tells a client stalled inside its headers from a
    /// connection that was idle (never sent, or between keep-alive
    /// requests): only the first made a request.
    fn request_timed_out(&self, _client: SocketAddr, _mid_request: bool) {}
}

/// A bound, not yet running, server.
pub struct HttpsServer<H> {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: Arc<H>,
    limits: Limits,
}

impl<H: Handler> HttpsServer<H> {
    /// Binds `listen`; `certs` chooses the certificate at each handshake.
    pub async fn bind(
        listen: SocketAddr,
        certs: Arc<dyn ResolvesServerCert>,
        handler: Arc<H>,
        limits: Limits,
    ) -> Result<Self, BindError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(certs);
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| BindError::Listen(listen, e))?;
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            handler,
            limits,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
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
                self.handler.connection_refused(client);
                continue; // over the connection cap: drop it
            };
            let _ = tcp.set_nodelay(true);
            let conn = Connection {
                acceptor: self.acceptor.clone(),
                handler: self.handler.clone(),
                limits: self.limits.clone(),
                client,
            };
            tokio::spawn(conn.serve(tcp, graceful.watcher(), slot));
        }
        drop(self.listener);
        if tokio::time::timeout(self.limits.drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout: closing connections with requests still in flight");
        }
    }
}

/// One accepted connection, from the TLS handshake to its last request.
struct Connection<H> {
    acceptor: TlsAcceptor,
    handler: Arc<H>,
    limits: Limits,
    client: SocketAddr,
}

impl<H: Handler> Connection<H> {
    async fn serve(self, tcp: TcpStream, watcher: Watcher, _slot: OwnedSemaphorePermit) {
        let client = self.client;
        let handshake = self.acceptor.accept(tcp);
        let tls = match tokio::time::timeout(self.limits.handshake_timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%client, error = %e, "TLS handshake failed");
                self.handler.handshake_failed(client);
                return;
            }
            Err(_) => {
                tracing::debug!(%client, "TLS handshake timed out");
                self.handler.handshake_failed(client);
                return;
            }
        };
        let handler = self.handler.clone();
        let svc = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, std::convert::Infallible>(handler.handle(req, client).await) }
        });
        // The header read timeout runs from the start of the connection and
        // between keep-alive requests, so a client that never sends (or
        // stalls in its headers) is closed.
        let (io, mid_request) = RequestProgress::new(tls);
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.request_timeout)
            .max_buf_size(self.limits.read_buffer())
            .serve_connection(TokioIo::new(io), svc);
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(%client, error = %e, "connection ended with an error");
            if e.is_timeout() {
                let mid_request = mid_request.load(Ordering::Relaxed);
                self.handler.request_timed_out(client, mid_request);
            }
        }
    }
}
