//! The CA directory: what `ward ca init` writes and every other `ward ca`
//! command reads.
//!
//! ```text
//! DIR/root.pem               self-signed root (CA, pathlen 1, 10 y)
//! DIR/root-key.pem           root key, PKCS#8 encrypted; nothing reads it after
//!                            init: move it to offline storage
//! DIR/intermediate.pem       signing CA (pathlen 0, 1 y), signed by the root
//! DIR/intermediate-key.pem   signing key, PKCS#8 encrypted
//! DIR/trust-bundle.pem       the roots peers trust; starts as root.pem, may
//!                            hold several roots during a root rotation
//! ```
//!
//! Every file is created 0600 through a temporary file and a rename, so a
//! crash never leaves a half-written key. The trust domain is recorded in the
//! CA certificates themselves (URI SAN `spiffe://<td>`), so the directory is
//! self-describing. Loading checks everything it can: the key matches the
//! certificate, the intermediate chains to the root and is still valid.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use ward_config::TrustDomain;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::authority::{Authority, IssueError, random_serial};
use crate::bundle::TrustBundle;
use crate::keys::{self, KeyError, Passphrase};

pub const ROOT_CERT: &str = "root.pem";
pub const ROOT_KEY: &str = "root-key.pem";
pub const INTERMEDIATE_CERT: &str = "intermediate.pem";
pub const INTERMEDIATE_KEY: &str = "intermediate-key.pem";
pub const TRUST_BUNDLE: &str = "trust-bundle.pem";
const ALL_FILES: [&str; 5] = [
    ROOT_CERT,
    ROOT_KEY,
    INTERMEDIATE_CERT,
    INTERMEDIATE_KEY,
    TRUST_BUNDLE,
];

/// Errors reading or writing the CA directory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{0} already holds a CA (found {1}); pass --force to replace it (this invalidates every issued SVID)"
    )]
    AlreadyExists(PathBuf, &'static str),
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {error}")]
    Key { path: PathBuf, error: KeyError },
    #[error("{path}: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("cannot create the CA: {0}")]
    Create(#[from] IssueError),
}

impl From<rcgen::Error> for StoreError {
    fn from(e: rcgen::Error) -> Self {
        StoreError::Create(IssueError::Sign(e))
    }
}

/// What `ward ca init` is asked to do.
pub struct InitOptions {
    pub trust_domain: TrustDomain,
    /// `None` writes plaintext keys; only on the operator's explicit request.
    pub passphrase: Option<Passphrase>,
    pub force: bool,
    pub root_ttl: Duration,
    pub intermediate_ttl: Duration,
}

/// A CA directory on disk.
#[derive(Debug, Clone)]
pub struct CaDir {
    dir: PathBuf,
}

impl CaDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Creates a root and an intermediate CA and writes them (see module doc).
    pub fn init(&self, opts: &InitOptions, now: OffsetDateTime) -> Result<(), StoreError> {
        if let Some(found) = ALL_FILES
            .iter()
            .find(|f| !opts.force && self.path(f).exists())
        {
            return Err(StoreError::AlreadyExists(self.dir.clone(), found));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|error| StoreError::Io {
                path: self.dir.clone(),
                error,
            })?;

        let td = &opts.trust_domain;
        let root_key = KeyPair::generate()?;
        let root_params = ca_params(td, "root", 1, now, opts.root_ttl)?;
        let root = root_params.self_signed(&root_key)?;
        let root_issuer = Issuer::from_params(&root_params, &root_key);

        let int_key = KeyPair::generate()?;
        let int_ttl = opts.intermediate_ttl.min(opts.root_ttl);
        let mut int_params = ca_params(td, "intermediate", 0, now, int_ttl)?;
        int_params.use_authority_key_identifier_extension = true;
        let intermediate = int_params.signed_by(&int_key, &root_issuer)?;

        let seal = |key: &KeyPair, file: &str| {
            keys::seal(key, opts.passphrase.as_ref()).map_err(|error| StoreError::Key {
                path: self.path(file),
                error,
            })
        };
        self.write(ROOT_KEY, seal(&root_key, ROOT_KEY)?.as_bytes())?;
        self.write(
            INTERMEDIATE_KEY,
            seal(&int_key, INTERMEDIATE_KEY)?.as_bytes(),
        )?;
        self.write(ROOT_CERT, root.pem().as_bytes())?;
        self.write(INTERMEDIATE_CERT, intermediate.pem().as_bytes())?;
        self.write(TRUST_BUNDLE, root.pem().as_bytes())?;
        Ok(())
    }

    /// Loads the intermediate and its key, checking that they belong together,
    /// chain to the root, and are valid at `now`.
    pub fn load(
        &self,
        passphrase: Option<&Passphrase>,
        now: OffsetDateTime,
    ) -> Result<Authority, StoreError> {
        let root_der = self.read_cert(ROOT_CERT)?;
        let int_der = self.read_cert(INTERMEDIATE_CERT)?;
        let key_path = self.path(INTERMEDIATE_KEY);
        let key_pem = self.read(INTERMEDIATE_KEY)?;
        if keys::is_plaintext(&key_pem) {
            tracing::warn!(path = %key_path.display(), "the CA signing key is stored unencrypted");
        }
        let key = keys::open(&key_pem, passphrase).map_err(|error| StoreError::Key {
            path: key_path.clone(),
            error,
        })?;

        let bad = |reason: String| StoreError::BadCertificate {
            path: self.path(INTERMEDIATE_CERT),
            reason,
        };
        let (_, int) = X509Certificate::from_der(&int_der).map_err(|e| bad(e.to_string()))?;
        let (_, root) = X509Certificate::from_der(&root_der).map_err(|e| bad(e.to_string()))?;
        if int.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(bad(format!(
                "does not match the key in {}",
                key_path.display()
            )));
        }
        if !int.is_ca() {
            return Err(bad("is not a CA certificate".into()));
        }
        int.verify_signature(Some(root.public_key())).map_err(|_| {
            bad(format!(
                "is not signed by {}",
                self.path(ROOT_CERT).display()
            ))
        })?;
        let not_before = int.validity().not_before.to_datetime();
        let not_after = int.validity().not_after.to_datetime();
        if now >= not_after {
            return Err(bad(format!(
                "expired at {not_after}: create a new intermediate"
            )));
        }
        if now < not_before {
            return Err(bad(format!(
                "is not valid before {not_before}: check this host's clock"
            )));
        }
        let trust_domain = trust_domain_of(&int).map_err(bad)?;
        let intermediate = CertificateDer::from(int_der.clone());
        Ok(Authority::new(
            trust_domain,
            intermediate,
            key,
            (not_before, not_after),
        )?)
    }

    /// Reads the trust bundle and its sequence number: the file's
    /// modification time in milliseconds, which grows with every edit (adding
    /// or removing a root), as SPIFFE bundle consumers expect. Restoring an
    /// old file with its old timestamp (`cp -p`) would move it backwards.
    pub fn load_bundle(&self) -> Result<(TrustBundle, u64), StoreError> {
        let path = self.path(TRUST_BUNDLE);
        let pem = self.read(TRUST_BUNDLE)?;
        let bundle = TrustBundle::from_pem(&pem).map_err(|e| StoreError::BadCertificate {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let sequence = fs::metadata(&path)
            .and_then(|m| m.modified())
            .map_err(|error| StoreError::Io { path, error })?
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Ok((bundle, sequence))
    }

    /// Checks that the trust bundle is readable and still contains the root
    /// that anchors the intermediate (else every SVID would be untrusted).
    pub fn check_bundle(&self) -> Result<TrustBundle, StoreError> {
        let (bundle, _) = self.load_bundle()?;
        let root = self.read_cert(ROOT_CERT)?;
        if !bundle.contains(&root) {
            return Err(StoreError::BadCertificate {
                path: self.path(TRUST_BUNDLE),
                reason: format!(
                    "does not contain {}: peers would reject every SVID",
                    self.path(ROOT_CERT).display()
                ),
            });
        }
        Ok(bundle)
    }

    fn read(&self, file: &str) -> Result<String, StoreError> {
        let path = self.path(file);
        fs::read_to_string(&path).map_err(|error| StoreError::Io { path, error })
    }

    fn read_cert(&self, file: &str) -> Result<Vec<u8>, StoreError> {
        let pem = self.read(file)?;
        let (label, der) = pkcs8::der::pem::decode_vec(pem.as_bytes()).map_err(|e| {
            StoreError::BadCertificate {
                path: self.path(file),
                reason: e.to_string(),
            }
        })?;
        if label != "CERTIFICATE" {
            return Err(StoreError::BadCertificate {
                path: self.path(file),
                reason: format!("expected a CERTIFICATE PEM block, found {label:?}"),
            });
        }
        Ok(der)
    }

    /// Writes `file` with mode 0600 via a temporary file and a rename.
    fn write(&self, file: &str, contents: &[u8]) -> Result<(), StoreError> {
        let path = self.path(file);
        let tmp = self.path(&format!(".{file}.tmp"));
        let io = |error| StoreError::Io {
            path: path.clone(),
            error,
        };
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(contents).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)
    }
}

/// Parameters shared by the root and the intermediate.
fn ca_params(
    td: &TrustDomain,
    role: &str,
    path_len: u8,
    now: OffsetDateTime,
    ttl: Duration,
) -> Result<CertificateParams, StoreError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ward");
    dn.push(DnType::CommonName, format!("ward {role} CA for {td}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![SanType::URI(td.id().as_str().try_into()?)];
    params.not_before = now - crate::authority::CLOCK_SKEW_BACKDATE;
    params.not_after = crate::authority::add_ttl(now, ttl)?;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    Ok(params)
}

/// The trust domain a CA certificate was created for (its `spiffe://td` SAN).
fn trust_domain_of(cert: &X509Certificate<'_>) -> Result<TrustDomain, String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| e.to_string())?
        .ok_or("has no spiffe://<trust-domain> URI SAN; was it made by `ward ca init`?")?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(uri) => uri.strip_prefix("spiffe://"),
            _ => None,
        })
        .ok_or_else(|| "has no spiffe://<trust-domain> URI SAN".to_string())
        .and_then(|td| TrustDomain::new(td).map_err(|e| e.to_string()))
}
