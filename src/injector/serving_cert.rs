//! The webhook's TLS certificate and key, read from PEM files (in
//! Kubernetes, a Secret that cert-manager fills). A pair is used only if
//! both files parse, the key is the certificate's, and the certificate
//! has not expired: the API server would refuse an expired one anyway, and
//! saying so at start beats a failing webhook with nothing in the log.

use std::path::{Path, PathBuf};

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, InconsistentKeys};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Where the certificate chain and its key are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM key: PKCS#8, PKCS#1 or SEC1.
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("--tls-cert {}: {reason}", .path.display())]
    Cert { path: PathBuf, reason: String },
    #[error("--tls-key {}: {reason}", .path.display())]
    Key { path: PathBuf, reason: String },
    #[error(
        "--tls-key {} is not the key of the certificate in --tls-cert {}",
        .key.display(),
        .cert.display()
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("--tls-cert {}: the certificate expired at {not_after}", .path.display())]
    Expired { path: PathBuf, not_after: String },
}

/// A pair fit to serve.
pub struct Loaded {
    pub certified: CertifiedKey,
    /// The leaf's notAfter, Unix time.
    pub not_after: i64,
}

/// Reads and checks the pair `files` names.
pub fn load(files: &TlsFiles, now: OffsetDateTime) -> Result<Loaded, CertError> {
    let cert = std::fs::read(&files.cert).map_err(|e| cert_error(&files.cert, e))?;
    let key = std::fs::read(&files.key).map_err(|e| CertError::Key {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    parse(files, &cert, &key, now)
}

/// Checks a pair given as the PEM contents of `files`.
fn parse(
    files: &TlsFiles,
    cert: &[u8],
    key: &[u8],
    now: OffsetDateTime,
) -> Result<Loaded, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(&files.cert, e))?;
    let Some(leaf) = chain.first() else {
        return Err(cert_error(&files.cert, "no CERTIFICATE in the file"));
    };
    let (_, parsed) = X509Certificate::from_der(leaf).map_err(|e| cert_error(&files.cert, e))?;
    let not_after = parsed.validity().not_after.timestamp();
    if not_after <= now.unix_timestamp() {
        let not_after = OffsetDateTime::from_unix_timestamp(not_after)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| not_after.to_string());
        return Err(CertError::Expired {
            path: files.cert.clone(),
            not_after,
        });
    }
    let key_error = |reason: String| CertError::Key {
        path: files.key.clone(),
        reason,
    };
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| key_error(e.to_string()))?;
    let signer = aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_error(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        // A key that cannot tell its public half is taken on trust, as
        // rustls itself does.
        Ok(()) | Err(TlsError::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(Loaded {
            certified,
            not_after,
        }),
        Err(TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(CertError::Mismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
        }
        Err(e) => Err(cert_error(&files.cert, e)),
    }
}

fn cert_error(path: &Path, reason: impl ToString) -> CertError {
    CertError::Cert {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}
