//! Checking a PKCS#10 certificate signing request before anything is signed.
//!
//! The CA takes exactly two things from a CSR: the public key and the one
//! SPIFFE ID it asks for. Everything else (subject, other SANs, requested key
//! usages) is ignored, because the certificate profile is the CA's decision.
//! The proof of possession (the CSR's self-signature) is verified here with an
//! explicit allow-list of algorithms and key sizes, not a library default.

use aws_lc_rs::signature::{self, VerificationAlgorithm};
use ward_config::{SpiffeId, SpiffeIdError};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519, Oid,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// RSA moduli outside this range are refused (weaker than 2048 bits, or
/// larger than a verifier should be made to process).
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

/// Why a CSR was refused. Each variant is a caller error (HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    #[error(
        "the body is not a PEM PKCS#10 certificate request (\"-----BEGIN CERTIFICATE REQUEST-----\")"
    )]
    NotPem,
    #[error("the certificate request is malformed: {0}")]
    Malformed(String),
    #[error("the certificate request's signature does not verify (proof of key possession failed)")]
    BadSignature,
    #[error("unsupported signature algorithm {0}: use ECDSA P-256 with SHA-256")]
    UnsupportedAlgorithm(String),
    #[error(
        "the key is too weak ({0}): use ECDSA P-256, P-384, Ed25519 or RSA of 2048 to 8192 bits"
    )]
    WeakKey(String),
    #[error("the certificate request has no URI SAN: request exactly one SPIFFE ID")]
    NoSpiffeId,
    #[error("the certificate request has {0} URI SANs: request exactly one SPIFFE ID")]
    ManyUris(usize),
    #[error("the requested identity is invalid: {0}")]
    InvalidId(#[from] SpiffeIdError),
}

/// A CSR whose signature verified: its public key and the identity it asks for.
#[derive(Debug)]
pub struct CheckedCsr {
    pub public_key: rcgen::SubjectPublicKeyInfo,
    pub requested: SpiffeId,
}

/// Parses a PEM CSR, checks its algorithm, key strength and signature, and
/// extracts the single requested SPIFFE ID.
pub fn check_pem(pem: &[u8]) -> Result<CheckedCsr, CsrError> {
    let (label, der) = pkcs8::der::pem::decode_vec(pem).map_err(|_| CsrError::NotPem)?;
    if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
        return Err(CsrError::NotPem);
    }
    check_der(&der)
}

/// As [`check_pem`], for DER input.
pub fn check_der(der: &[u8]) -> Result<CheckedCsr, CsrError> {
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(
            "trailing bytes after the request".into(),
        ));
    }
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    let algorithm = verification_algorithm(&csr)?;
    signature::UnparsedPublicKey::new(algorithm, spki.subject_public_key.data.as_ref())
        .verify(info.raw, csr.signature_value.data.as_ref())
        .map_err(|_| CsrError::BadSignature)?;
    let requested = requested_id(&csr)?;
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| CsrError::Malformed(format!("public key: {e}")))?;
    Ok(CheckedCsr {
        public_key,
        requested,
    })
}

/// Picks the verifier for the (key type, signature algorithm) pair, refusing
/// weak keys and algorithms outside the allow-list.
fn verification_algorithm(
    csr: &X509CertificationRequest<'_>,
) -> Result<&'static dyn VerificationAlgorithm, CsrError> {
    let spki = &csr.certification_request_info.subject_pki;
    let sig = &csr.signature_algorithm.algorithm;
    let unsupported = || CsrError::UnsupportedAlgorithm(sig.to_id_string());
    let key_alg = &spki.algorithm.algorithm;
    if *key_alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve: Oid<'_> = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::Malformed("EC key without a named curve".into()))?;
        let p256 = curve == OID_EC_P256;
        let p384 = curve == OID_NIST_EC_P384;
        if !p256 && !p384 {
            return Err(CsrError::WeakKey(format!(
                "EC curve {}",
                curve.to_id_string()
            )));
        }
        return match (p256, sig) {
            (true, s) if *s == OID_SIG_ECDSA_WITH_SHA256 => Ok(&signature::ECDSA_P256_SHA256_ASN1),
            (true, s) if *s == OID_SIG_ECDSA_WITH_SHA384 => Ok(&signature::ECDSA_P256_SHA384_ASN1),
            (false, s) if *s == OID_SIG_ECDSA_WITH_SHA256 => Ok(&signature::ECDSA_P384_SHA256_ASN1),
            (false, s) if *s == OID_SIG_ECDSA_WITH_SHA384 => Ok(&signature::ECDSA_P384_SHA384_ASN1),
            _ => Err(unsupported()),
        };
    }
    if *key_alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(CsrError::Malformed("unreadable RSA public key".into())),
        };
        if bits < RSA_MIN_BITS {
            return Err(CsrError::WeakKey(format!("RSA {bits} bits")));
        }
        if bits > RSA_MAX_BITS {
            return Err(CsrError::UnsupportedAlgorithm(format!("RSA {bits} bits")));
        }
        return match sig {
            s if *s == OID_PKCS1_SHA256WITHRSA => Ok(&signature::RSA_PKCS1_2048_8192_SHA256),
            s if *s == OID_PKCS1_SHA384WITHRSA => Ok(&signature::RSA_PKCS1_2048_8192_SHA384),
            s if *s == OID_PKCS1_SHA512WITHRSA => Ok(&signature::RSA_PKCS1_2048_8192_SHA512),
            _ => Err(unsupported()),
        };
    }
    if *key_alg == OID_SIG_ED25519 && *sig == OID_SIG_ED25519 {
        return Ok(&signature::ED25519);
    }
    Err(CsrError::UnsupportedAlgorithm(format!(
        "key {} with signature {}",
        key_alg.to_id_string(),
        sig.to_id_string()
    )))
}

/// The one URI SAN across every extension request in the CSR.
fn requested_id(csr: &X509CertificationRequest<'_>) -> Result<SpiffeId, CsrError> {
    let mut uris = Vec::new();
    for attr in csr.certification_request_info.iter_attributes() {
        if let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() {
            for ext in &req.extensions {
                if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
                    uris.extend(san.general_names.iter().filter_map(|n| match n {
                        GeneralName::URI(u) => Some(*u),
                        _ => None,
                    }));
                }
            }
        }
    }
    match uris.as_slice() {
        [] => Err(CsrError::NoSpiffeId),
        [one] => Ok(SpiffeId::parse(one)?),
        many => Err(CsrError::ManyUris(many.len())),
    }
}

#[cfg(test)]
mod tests;
