//! The webhook's HTTPS endpoint: its routes (`routes.rs`) served by the
//! same transport as the CA ([`ward_ca::https`]: TLS 1.3 only, HTTP/1.1
//! keep-alive, connection and request limits, graceful drain), with the
//! limits of [`webhook_limits`].
//!
//! The certificate and key are read once at start; a rotated certificate
//! needs a restart (a rolling restart of the webhook Deployment).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::sign::SingleCertAndKey;
use time::OffsetDateTime;
use ward_ca::https::{BindError, HttpsServer, Limits};

use super::metrics::InjectorMetrics;
use super::routes::Routes;
use super::serving_cert::{self, CertError, TlsFiles};
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
}

impl InjectorServer {
    /// Reads the certificate and key `tls` names, and binds `listen`.
    pub async fn bind(
        listen: SocketAddr,
        tls: TlsFiles,
        config: Config,
        limits: Limits,
    ) -> Result<Self, ServeError> {
        let loaded = serving_cert::load(&tls, OffsetDateTime::now_utc())?;
        let metrics = Arc::new(InjectorMetrics::new());
        metrics.cert_expiration.set(loaded.not_after as f64);
        let routes = Arc::new(Routes {
            config: Arc::new(config),
            metrics,
            max_body: limits.max_body,
            request_timeout: limits.request_timeout,
        });
        let certs = Arc::new(SingleCertAndKey::from(loaded.certified));
        let https = HttpsServer::bind(listen, certs, routes, limits).await?;
        Ok(Self { https })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.https.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.https.run(shutdown).await;
    }
}
