//! The CA's HTTPS endpoint: [`Routes`] served by the shared
//! [`crate::https`] transport (TLS 1.3 only, HTTP/1.1 keep-alive, the
//! limits in [`Limits`], graceful drain), with a serving certificate the CA
//! issues itself and rotates ([`ServingCert`]).

mod routes;
mod serving_cert;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::authority::IssueError;
pub use crate::https::Limits;
use crate::https::{BindError, Handler, HttpsServer};
use crate::service::{Denial, DenyReason, SvidService};
use crate::store::CaDir;
pub use routes::Routes;
pub use serving_cert::ServingCert;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot create the serving certificate: {0}")]
    ServingCert(#[from] IssueError),
}

/// A bound, not yet running, CA server.
pub struct CaServer {
    https: HttpsServer<Routes>,
    serving: Arc<ServingCert>,
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
        let routes = Arc::new(Routes {
            service,
            dir,
            max_body: limits.max_body,
            request_timeout: limits.request_timeout,
        });
        let https = HttpsServer::bind(listen, serving.clone(), routes, limits).await?;
        Ok(Self { https, serving })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.https.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let rotation = tokio::spawn(self.serving.clone().rotate_forever());
        self.https.run(shutdown).await;
        rotation.abort();
    }
}

/// The CA counts what the transport sees; a client stalled inside its
/// headers is a refused request like any other (audited, 408's reason).
impl Handler for Routes {
    fn handle(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send {
        Routes::handle(self, req, client)
    }

    fn connection_refused(&self, _client: SocketAddr) {
        self.service.metrics.connections_refused.inc();
    }

    fn handshake_failed(&self, _client: SocketAddr) {
        self.service.metrics.handshake_errors.inc();
    }

    fn request_timed_out(&self, client: SocketAddr, mid_request: bool) {
        if mid_request {
            self.service
                .reject(&Denial::from(DenyReason::Timeout), client);
        } else {
            // Idle keep-alive, or nothing ever sent: not a request.
            self.service.metrics.connection_timeouts.inc();
        }
    }
}
