//! The webhook's HTTPS endpoint: TLS 1.3 only (aws-lc-rs; the API server
//! speaks it), HTTP/1.1 keep-alive, with limits that keep one client from
//! starving the rest: a connection cap, a TLS handshake timeout, a header
//! read timeout, a body size and read timeout (see [`Limits`]). Shutdown
//! stops accepting and lets in-flight reviews finish within a grace period.
//!
//! HTTP/1.1 only, like the CA: one protocol means one set of timeouts to
//! get right, and the API server falls back to it. The certificate and key
//! are read once at start; a rotated certificate needs a restart (a rolling
//! restart of the webhook Deployment).
//!
//! | route          | answer                                                  |
//! |----------------|---------------------------------------------------------|
//! | `POST /mutate` | the AdmissionReview answer, or 400 with `{"error": ...}` |
//! | `GET /healthz` | `ok`                                                    |

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::review;
use crate::inject::Config;

/// The path the MutatingWebhookConfiguration's `clientConfig` must name.
pub const MUTATE_PATH: &str = "/mutate";

/// Resource limits of the endpoint.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted AdmissionReview. The API server caps a whole
    /// object at about 1.5 MiB (etcd's limit); old and new objects on an
    /// UPDATE double that.
    pub max_body: usize,
    /// Time to receive a request's headers, and separately its body. The
    /// API server's own webhook timeout is 10 s by default.
    pub request_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    /// How long in-flight requests may run after shutdown begins.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: 4 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("--tls-cert {}: {reason}", .path.display())]
    Cert { path: PathBuf, reason: String },
    #[error("--tls-key {}: {reason}", .path.display())]
    Key { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A bound, not yet running, webhook server.
pub struct InjectorServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    routes: Arc<Routes>,
    limits: Limits,
}

impl InjectorServer {
    /// Reads the PEM certificate chain and key, and binds `listen`.
    pub async fn bind(
        listen: SocketAddr,
        cert: &Path,
        key: &Path,
        config: Config,
        limits: Limits,
    ) -> Result<Self, ServeError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| ServeError::Cert {
                path: cert.to_path_buf(),
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(ServeError::Cert {
                path: cert.to_path_buf(),
                reason: "no CERTIFICATE in the file".to_string(),
            });
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| ServeError::Key {
            path: key.to_path_buf(),
            reason: e.to_string(),
        })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| ServeError::Bind(listen, e))?;
        let routes = Arc::new(Routes {
            config: Arc::new(config),
            max_body: limits.max_body,
            request_timeout: limits.request_timeout,
        });
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            routes,
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
                tracing::warn!(%client, "connection cap reached; dropping a connection");
                continue;
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
                        tracing::debug!(%client, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%client, "TLS handshake timed out");
                        return;
                    }
                };
                let svc = service_fn(move |req| {
                    let routes = routes.clone();
                    async move { Ok::<_, std::convert::Infallible>(routes.handle(req).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.request_timeout)
                    .serve_connection(TokioIo::new(tls), svc);
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%client, error = %e, "connection ended with an error");
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
    }
}

struct Routes {
    config: Arc<Config>,
    max_body: usize,
    request_timeout: Duration,
}

type Resp = Response<Full<Bytes>>;

impl Routes {
    async fn handle(&self, req: Request<Incoming>) -> Resp {
        let (allowed, allow) = match req.uri().path() {
            MUTATE_PATH => (Method::POST, "POST"),
            "/healthz" => (Method::GET, "GET"),
            _ => return json_error(StatusCode::NOT_FOUND, "no such endpoint"),
        };
        if req.method() != allowed {
            let mut resp = json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
            return resp;
        }
        if allowed == Method::GET {
            return ok("text/plain", Bytes::from_static(b"ok\n"));
        }
        let body = match self.read_body(req).await {
            Ok(body) => body,
            Err((status, message)) => {
                // The rest of the body may still be in flight: do not reuse
                // the connection.
                let mut resp = json_error(status, &message);
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                return resp;
            }
        };
        // Parsing and injecting up to max_body of JSON is CPU work: off the
        // async workers, so one large review does not stall the others'
        // timers and the accept loop.
        let config = self.config.clone();
        let reviewed = tokio::task::spawn_blocking(move || review::review(&config, &body)).await;
        let Ok(reviewed) = reviewed else {
            tracing::error!("an admission review task failed");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        };
        match reviewed {
            Ok((answer, decision)) => {
                tracing::info!(
                    uid = %decision.uid,
                    object = %decision.object,
                    result = %decision.result,
                    "admission review"
                );
                ok("application/json", answer.to_string().into())
            }
            Err(e) => {
                tracing::warn!(error = %e, "malformed admission review");
                json_error(StatusCode::BAD_REQUEST, &e.to_string())
            }
        }
    }

    async fn read_body(&self, req: Request<Incoming>) -> Result<Bytes, (StatusCode, String)> {
        let too_large = || {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {} bytes", self.max_body),
            )
        };
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(too_large());
        }
        let limited = Limited::new(req.into_body(), self.max_body);
        match tokio::time::timeout(self.request_timeout, limited.collect()).await {
            Err(_) => Err((
                StatusCode::REQUEST_TIMEOUT,
                "the body was not received in time".to_string(),
            )),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
            Ok(Err(e)) => Err((
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )),
        }
    }
}

fn ok(content_type: &'static str, body: Bytes) -> Resp {
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json_error(status: StatusCode, message: &str) -> Resp {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut resp = ok("application/json", body.into());
    *resp.status_mut() = status;
    resp
}
