//! The SPIFFE X509-SVID rules a peer's leaf certificate must satisfy beyond
//! chain validation: exactly one URI SAN, holding a valid SPIFFE ID of our
//! trust domain, and not a CA certificate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ward_config::{SpiffeId, TrustDomain};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a peer certificate is not a usable SVID. `reason()` labels metrics.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SvidError {
    #[error("peer certificate is unreadable")]
    Unreadable,
    #[error("peer certificate is a CA certificate, not an SVID")]
    IsCa,
    #[error("peer certificate has {0} URI SANs; an SVID has exactly one")]
    UriCount(usize),
    #[error("peer certificate holds an invalid SPIFFE ID: {0}")]
    InvalidId(String),
    #[error("peer identity {0} is outside trust domain {1}")]
    ForeignTrustDomain(String, String),
    #[error("peer presented {presented}, expected {expected}")]
    UnexpectedIdentity { presented: String, expected: String },
}

impl SvidError {
    pub fn reason(&self) -> &'static str {
        match self {
            SvidError::Unreadable => "unreadable_certificate",
            SvidError::IsCa => "ca_certificate",
            SvidError::UriCount(_) => "uri_san_count",
            SvidError::InvalidId(_) => "invalid_spiffe_id",
            SvidError::ForeignTrustDomain(..) => "wrong_trust_domain",
            SvidError::UnexpectedIdentity { .. } => "unexpected_identity",
        }
    }
}

/// The SPIFFE ID of a leaf certificate that already chained to our roots.
pub fn peer_id(leaf_der: &[u8], trust_domain: &TrustDomain) -> Result<SpiffeId, SvidError> {
    let (_, cert) = X509Certificate::from_der(leaf_der).map_err(|_| SvidError::Unreadable)?;
    if cert.is_ca() {
        return Err(SvidError::IsCa);
    }
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(_) => return Err(SvidError::Unreadable),
    };
    let [uri] = uris.as_slice() else {
        return Err(SvidError::UriCount(uris.len()));
    };
    let id = SpiffeId::parse(uri).map_err(|e| SvidError::InvalidId(e.to_string()))?;
    id.require_trust_domain(trust_domain)
        .map_err(|_| SvidError::ForeignTrustDomain(id.to_string(), trust_domain.to_string()))?;
    Ok(id)
}

/// Whether a certificate of the peer's `chain` has expired. A resumed TLS
/// 1.3 session does not verify the chain again: rustls keeps a session for
/// up to 24 hours, while an SVID lives an hour or so, and letting it expire
/// (the CA refusing renewal) is how the mesh revokes a workload. Checked
/// after every handshake, so a session outlives no certificate it began
/// with. An unreadable certificate counts as expired.
pub fn chain_expired(chain: &[rustls::pki_types::CertificateDer<'_>]) -> bool {
    chain_not_after(chain).is_none_or(|t| t < SystemTime::now())
}

/// The earliest notAfter in `chain`: what an authenticated connection must
/// not be taken again past. `None` if the chain is empty or a
/// certificate is unreadable.
pub fn chain_not_after(chain: &[rustls::pki_types::CertificateDer<'_>]) -> Option<SystemTime> {
    let mut earliest: Option<SystemTime> = None;
    for der in chain {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
        let t = UNIX_EPOCH + Duration::from_secs(secs);
        earliest = Some(earliest.map_or(t, |e| e.min(t)));
    }
    earliest
}

/// The SVID rule a handshake failed on, if that is why it failed (rustls
/// carries our error inside `CertificateError::Other`).
pub fn svid_rejection(err: &rustls::Error) -> Option<&SvidError> {
    match err {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            other.0.downcast_ref::<SvidError>()
        }
        _ => None,
    }
}
