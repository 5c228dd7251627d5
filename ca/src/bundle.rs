//! Trust bundles: the set of root certificates peers trust, as PEM (for
//! ConfigMaps and `--ca-bundle`) and as a SPIFFE bundle (JWK Set with
//! `use: x509-svid`). A bundle may hold several roots so that a root can be
//! rotated without a flag day: add the new root, wait for every peer to
//! refresh, switch issuance, remove the old one.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::authority::pem_cert;

/// Why a bundle file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("the trust bundle holds no certificate")]
    Empty,
    #[error("certificate {0} in the trust bundle is unreadable: {1}")]
    Unreadable(usize, String),
    #[error("certificate {0} in the trust bundle is not a CA certificate")]
    NotCa(usize),
    #[error(
        "certificate {0} in the trust bundle has an unsupported key (use EC P-256/P-384 or RSA)"
    )]
    UnsupportedKey(usize),
}

/// A validated, non-empty list of CA certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// Parses PEM text holding one or more CA certificates.
    pub fn from_pem(pem: &str) -> Result<Self, BundleError> {
        let mut roots = Vec::new();
        for (i, block) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
            let der = block.map_err(|e| BundleError::Unreadable(i, e.to_string()))?;
            let (_, cert) = X509Certificate::from_der(&der)
                .map_err(|e| BundleError::Unreadable(i, e.to_string()))?;
            if !cert.is_ca() {
                return Err(BundleError::NotCa(i));
            }
            jwk_key(&cert).ok_or(BundleError::UnsupportedKey(i))?;
            roots.push(der);
        }
        if roots.is_empty() {
            return Err(BundleError::Empty);
        }
        Ok(Self { roots })
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn contains(&self, cert: &[u8]) -> bool {
        self.roots.iter().any(|r| r.as_ref() == cert)
    }

    pub fn to_pem(&self) -> String {
        self.roots.iter().map(|r| pem_cert(r)).collect()
    }

    /// The SPIFFE bundle document (JWK Set) for this trust domain.
    pub fn to_spiffe_json(&self, sequence: u64, refresh_hint: Duration) -> Value {
        let keys: Vec<Value> = self
            .roots
            .iter()
            .filter_map(|der| {
                let (_, cert) = X509Certificate::from_der(der).ok()?;
                let mut jwk = jwk_key(&cert)?;
                jwk["use"] = json!("x509-svid");
                jwk["x5c"] = json!([STANDARD.encode(der)]);
                Some(jwk)
            })
            .collect();
        json!({
            "keys": keys,
            "spiffe_sequence": sequence,
            "spiffe_refresh_hint": refresh_hint.as_secs(),
        })
    }
}

/// The public-key members of a JWK for the certificate's key.
fn jwk_key(cert: &X509Certificate<'_>) -> Option<Value> {
    let spki = cert.public_key();
    match spki.parsed().ok()? {
        PublicKey::EC(point) => {
            let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
            let (crv, len) = if curve == OID_EC_P256 {
                ("P-256", 32)
            } else if curve == OID_NIST_EC_P384 {
                ("P-384", 48)
            } else {
                return None;
            };
            let data = point.data();
            // Uncompressed point: 0x04 || X || Y.
            if data.len() != 1 + 2 * len || data[0] != 0x04 {
                return None;
            }
            Some(json!({
                "kty": "EC",
                "crv": crv,
                "x": URL_SAFE_NO_PAD.encode(&data[1..1 + len]),
                "y": URL_SAFE_NO_PAD.encode(&data[1 + len..]),
            }))
        }
        PublicKey::RSA(rsa) => Some(json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(strip_leading_zeros(rsa.modulus)),
            "e": URL_SAFE_NO_PAD.encode(strip_leading_zeros(rsa.exponent)),
        })),
        _ => None,
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}
