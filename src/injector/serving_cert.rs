//! The webhook's TLS certificate and key, read from PEM files and read
//! again every `reload_interval`. In Kubernetes they are a Secret that
//! cert-manager rotates: the kubelet swaps the mounted files in place
//! (a `..data` symlink) and nothing restarts the webhook, so without a
//! reload the certificate it started with would expire in use.
//!
//! A pair is used only if both files parse, the key is the certificate's,
//! and the certificate has not expired: the API server would refuse an
//! expired one anyway, and saying so beats a failing webhook with nothing
//! in the log. At start an unfit pair stops the server; later it is
//! logged and counted, and the last good pair stays in use. A new pair
//! serves new handshakes; open connections keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, InconsistentKeys};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::metrics::InjectorMetrics;

/// Where the certificate chain and its key are, and how often to look.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM key: PKCS#8, PKCS#1 or SEC1.
    pub key: PathBuf,
    /// How often both files are read again; a changed pair is checked and,
    /// if fit, used for new connections.
    pub reload_interval: Duration,
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

/// The certificate new handshakes get: the last fit pair from the files.
pub struct ServingCert {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
    /// The files as the last look read them; `None` if it could not.
    seen: Mutex<Option<Pem>>,
    metrics: Arc<InjectorMetrics>,
}

impl ServingCert {
    /// Reads and checks the pair `files` names.
    pub fn load(files: TlsFiles, metrics: Arc<InjectorMetrics>) -> Result<Self, CertError> {
        let pem = Pem::read(&files)?;
        let loaded = parse(&files, &pem, OffsetDateTime::now_utc())?;
        metrics.cert_expiration.set(loaded.not_after as f64);
        Ok(Self {
            files,
            current: ArcSwap::from_pointee(loaded.certified),
            seen: Mutex::new(Some(pem)),
            metrics,
        })
    }

    /// Looks at the files every `reload_interval`, forever.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.files.reload_interval).await;
            let this = self.clone();
            // File reads block: off the async workers.
            let _ = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
        }
    }

    /// Reads the files; if they differ from the last look, serves the new
    /// pair when it is fit. Each change is counted (and logged) once, so a
    /// bad pair left in place does not count up at every look.
    fn reload_if_changed(&self) {
        let read = Pem::read(&self.files);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let loaded = match read {
            Ok(pem) if seen.as_ref() == Some(&pem) => return,
            Err(_) if seen.is_none() => return,
            Ok(pem) => {
                let loaded = parse(&self.files, &pem, OffsetDateTime::now_utc());
                *seen = Some(pem);
                loaded
            }
            Err(e) => {
                *seen = None;
                Err(e)
            }
        };
        match loaded {
            Ok(loaded) => {
                self.current.store(Arc::new(loaded.certified));
                self.metrics.cert_expiration.set(loaded.not_after as f64);
                self.metrics.cert_reloaded(true);
                tracing::info!(
                    cert = %self.files.cert.display(),
                    not_after = loaded.not_after,
                    "serving certificate reloaded"
                );
            }
            Err(e) => {
                self.metrics.cert_reloaded(false);
                tracing::error!(
                    error = %e,
                    "serving certificate not reloaded; the current one stays in use"
                );
            }
        }
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// The two files' contents.
#[derive(PartialEq, Eq)]
struct Pem {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Pem {
    fn read(files: &TlsFiles) -> Result<Self, CertError> {
        let cert = std::fs::read(&files.cert).map_err(|e| cert_error(&files.cert, e))?;
        let key = std::fs::read(&files.key).map_err(|e| CertError::Key {
            path: files.key.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self { cert, key })
    }
}

/// A pair fit to serve.
struct Loaded {
    certified: CertifiedKey,
    /// The leaf's notAfter, Unix time.
    not_after: i64,
}

/// Checks a pair given as the PEM contents of `files`.
fn parse(files: &TlsFiles, pem: &Pem, now: OffsetDateTime) -> Result<Loaded, CertError> {
    let chain = CertificateDer::pem_slice_iter(&pem.cert)
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
    let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| key_error(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    fn reloads(metrics: &InjectorMetrics, result: &str) -> String {
        let series = format!("ward_injector_cert_reloads_total{{result=\"{result}\"}} ");
        let text = metrics.render();
        let line = text.lines().find(|l| l.starts_with(&series)).unwrap();
        line[series.len()..].to_string()
    }

    #[test]
    fn each_change_is_counted_once_and_an_unfit_pair_keeps_the_current_one() {
        let tmp = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: tmp.path().join("tls.crt"),
            key: tmp.path().join("tls.key"),
            reload_interval: Duration::from_secs(1),
        };
        let ((cert_a, key_a), (cert_b, key_b)) = (pair(), pair());
        std::fs::write(&files.cert, &cert_a).unwrap();
        std::fs::write(&files.key, &key_a).unwrap();
        let metrics = Arc::new(InjectorMetrics::new());
        let serving = ServingCert::load(files.clone(), metrics.clone()).unwrap();
        let served = || serving.current.load().cert[0].clone();
        let first = served();
        let counts = || (reloads(&metrics, "success"), reloads(&metrics, "failure"));

        serving.reload_if_changed();
        assert_eq!(counts(), ("0".into(), "0".into()), "nothing changed");

        // A new certificate whose key has not arrived: refused once.
        std::fs::write(&files.cert, &cert_b).unwrap();
        serving.reload_if_changed();
        serving.reload_if_changed();
        assert_eq!(counts(), ("0".into(), "1".into()));
        assert_eq!(served(), first);

        // Unreadable: refused once more, then quiet.
        std::fs::remove_file(&files.key).unwrap();
        serving.reload_if_changed();
        serving.reload_if_changed();
        assert_eq!(counts(), ("0".into(), "2".into()));

        std::fs::write(&files.key, &key_b).unwrap();
        serving.reload_if_changed();
        assert_eq!(counts(), ("1".into(), "2".into()));
        assert_ne!(served(), first);
    }
}
