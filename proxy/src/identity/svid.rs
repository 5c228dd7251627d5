//! An installed workload identity: the SVID chain and its private key, held
//! only in memory.

use std::sync::Arc;

use rcgen::KeyPair;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;
use ward_config::SpiffeId;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, thiserror::Error)]
pub enum SvidInstallError {
    #[error("the CA's answer holds no certificate")]
    Empty,
    #[error("the CA's answer is not a PEM chain: {0}")]
    Unreadable(String),
    #[error("the issued certificate is for another key")]
    WrongKey,
    #[error("the issued certificate names {0}, not the identity that was requested")]
    WrongIdentity(String),
    #[error("the key cannot be used for TLS: {0}")]
    Key(String),
}

/// A verified SVID with its key, ready for rustls.
#[derive(Clone)]
pub struct Svid {
    pub id: SpiffeId,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub certified: Arc<CertifiedKey>,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// Checks that the CA returned a chain for our key and identity, and
    /// bundles it with the key.
    pub fn install(
        key: &KeyPair,
        chain_pem: &str,
        requested: &SpiffeId,
    ) -> Result<Self, SvidInstallError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SvidInstallError::Unreadable(e.to_string()))?;
        let leaf = chain.first().ok_or(SvidInstallError::Empty)?;
        let (_, cert) = X509Certificate::from_der(leaf)
            .map_err(|e| SvidInstallError::Unreadable(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(SvidInstallError::WrongKey);
        }
        let td = ward_config::TrustDomain::new(requested.trust_domain_name())
            .map_err(|e| SvidInstallError::Unreadable(e.to_string()))?;
        let id = crate::tls::peer_id(leaf, &td)
            .map_err(|e| SvidInstallError::WrongIdentity(e.to_string()))?;
        if &id != requested {
            return Err(SvidInstallError::WrongIdentity(id.to_string()));
        }
        let not_before = cert.validity().not_before.to_datetime();
        let not_after = cert.validity().not_after.to_datetime();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&der)
            .map_err(|e| SvidInstallError::Key(e.to_string()))?;
        Ok(Self {
            id,
            not_before,
            not_after,
            certified: Arc::new(CertifiedKey::new(chain, signer)),
        })
    }
}
