//! The webhook's HTTPS endpoint: its routes (`routes.rs`) served by the
//! same transport as the CA ([`ward_ca::https`]: TLS 1.3 only, HTTP/1.1
//! keep-alive, connection and request limits, graceful drain), with the
//! limits of [`webhook_limits`].
//!
//! The certificate and key are read once at start; a rotated certificate
//! needs a restart (a rolling restart of the webhook Deployment).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use ward_ca::https::{BindError, HttpsServer, Limits};

use super::routes::Routes;
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
    #[error("--tls-cert {}: {reason}", .path.display())]
    Cert { path: PathBuf, reason: String },
    #[error("--tls-key {}: {reason}", .path.display())]
    Key { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A bound, not yet running, webhook server.
pub struct InjectorServer {
    https: HttpsServer<Routes>,
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
        let certified = CertifiedKey::from_der(chain, key_der, &aws_lc_rs::default_provider())?;
        let routes = Arc::new(Routes {
            config: Arc::new(config),
            max_body: limits.max_body,
            request_timeout: limits.request_timeout,
        });
        let certs = Arc::new(SingleCertAndKey::from(certified));
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
