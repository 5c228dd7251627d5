//! The webhook's HTTPS endpoint: its routes (`routes.rs`) served by the
//! same transport as the CA ([`ward_ca::https`]: TLS 1.3 only, HTTP/1.1
//! keep-alive, connection and request limits, graceful drain), with the
//! limits of [`webhook_limits`].
//!
//! The certificate and key are read again every `reload_interval`
//! ([`TlsFiles`]), so a rotated Secret is served without a restart.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use ward_ca::https::{BindError, HttpsServer, Limits};

use super::metrics::InjectorMetrics;
use super::routes::Routes;
use super::serving_cert::{CertError, ServingCert, TlsFiles};
use crate::inject::Config;

/// The webhook's limits: the CA's, with room for a whole AdmissionReview
/// (the API server caps an object at about 1.5 MiB, etcd's limit; old and
/// new objects on an UPDATE double that) and fewer connections (one API
/// server, a few replicas). The API server's own webhook timeout is 10 s
/// by default, as are the header and body timeouts here.
pub fn webhook_limits() -> Limits {
    Limits {
        max_body: 4 * 1024 * 1024,
        max_connections: 1024,
        ..Limits::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// A bound, not yet running, webhook server.
pub struct InjectorServer {
    https: HttpsServer<Routes>,
    serving: Arc<ServingCert>,
}

impl InjectorServer {
    /// Reads the certificate and key `tls` names, and binds `listen`.
    pub async fn bind(
        listen: SocketAddr,
        tls: TlsFiles,
        config: Config,
        limits: Limits,
    ) -> Result<Self, ServeError> {
        let metrics = Arc::new(InjectorMetrics::new());
        let serving = Arc::new(ServingCert::load(tls, metrics.clone())?);
        let routes = Arc::new(Routes {
            config: Arc::new(config),
            metrics,
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
        let reload = tokio::spawn(self.serving.clone().watch());
        self.https.run(shutdown).await;
        reload.abort();
    }
}
