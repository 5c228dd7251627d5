//! Key generation and the certificate signing request the proxy sends.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use ward_config::SpiffeId;

/// A fresh ECDSA P-256 key (never written anywhere) and a PEM CSR asking
/// for exactly `id`.
pub fn new_key_and_csr(id: &SpiffeId) -> Result<(KeyPair, String), rcgen::Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key, csr))
}
