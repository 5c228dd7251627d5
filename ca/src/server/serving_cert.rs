//! The CA's own TLS server certificate: issued from the intermediate at start
//! for the configured names, re-issued at half its lifetime, swapped in for
//! new handshakes only (open connections keep theirs).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rcgen::KeyPair;
use rustls::crypto::aws_lc_rs::sign::any_ecdsa_type;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use crate::authority::{Authority, IssueError};

const SERVING_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwap<CertifiedKey>,
    authority: Arc<Authority>,
    names: Vec<String>,
}

impl ServingCert {
    pub fn new(authority: Arc<Authority>, names: Vec<String>) -> Result<Arc<Self>, IssueError> {
        let first = issue(&authority, &names)?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(first),
            authority,
            names,
        }))
    }

    /// Re-issues the certificate at half its lifetime, forever.
    pub async fn rotate_forever(self: Arc<Self>) {
        let mut wait = SERVING_CERT_TTL / 2;
        loop {
            tokio::time::sleep(wait).await;
            match issue(&self.authority, &self.names) {
                Ok(cert) => {
                    self.current.store(Arc::new(cert));
                    wait = SERVING_CERT_TTL / 2;
                    tracing::info!("rotated the CA serving certificate");
                }
                Err(e) => {
                    wait = RETRY_AFTER_FAILURE;
                    tracing::error!(error = %e, "cannot rotate the CA serving certificate; retrying");
                }
            }
        }
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn issue(authority: &Authority, names: &[String]) -> Result<CertifiedKey, IssueError> {
    let key = KeyPair::generate()?;
    let issued =
        authority.issue_serving_cert(&key, names, SERVING_CERT_TTL, OffsetDateTime::now_utc())?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer =
        any_ecdsa_type(&der).map_err(|e| IssueError::Sign(rcgen::Error::X509(e.to_string())))?;
    let chain = vec![issued.leaf, authority.intermediate().clone()];
    Ok(CertifiedKey::new(chain, signer))
}
