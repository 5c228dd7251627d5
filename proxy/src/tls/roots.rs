//! Trust bundles as rustls wants them: PEM text with one or more root
//! certificates, parsed into a root store. Used for the CA's endpoint, the
//! initial bundle and every refreshed one.

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why a PEM bundle is unusable.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("unreadable PEM: {0}")]
    Pem(String),
    #[error("not a usable root certificate: {0}")]
    Root(String),
    #[error("no certificate in the bundle")]
    Empty,
}

/// Parses every certificate of `pem` into a root store; at least one.
pub fn roots_from_pem(pem: &str) -> Result<RootCertStore, RootsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| RootsError::Pem(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| RootsError::Root(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(RootsError::Empty);
    }
    Ok(roots)
}
