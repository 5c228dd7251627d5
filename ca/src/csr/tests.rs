use super::*;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

fn csr_with_sans(key: &KeyPair, sans: Vec<SanType>) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

#[test]
fn accepts_p256_and_extracts_only_key_and_id() {
    let key = KeyPair::generate().unwrap();
    let pem = csr_with_sans(
        &key,
        vec![
            uri("spiffe://td/ns/a/sa/b"),
            SanType::DnsName("x".try_into().unwrap()),
        ],
    );
    let csr = check_pem(pem.as_bytes()).unwrap();
    assert_eq!(csr.requested.as_str(), "spiffe://td/ns/a/sa/b");
    use rcgen::PublicKeyData;
    assert_eq!(csr.public_key.der_bytes(), key.public_key_raw());
}

#[test]
fn accepts_p384_ed25519_and_rsa2048() {
    for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        let key = KeyPair::generate_for(alg).unwrap();
        let pem = csr_with_sans(&key, vec![uri("spiffe://td/ns/a/sa/b")]);
        assert!(check_pem(pem.as_bytes()).is_ok(), "{alg:?}");
    }
    let csr = check_pem(&fixture("rsa2048.csr")).unwrap();
    assert_eq!(
        csr.requested.as_str(),
        "spiffe://test.ward/ns/default/sa/rsa"
    );
}

#[test]
fn refuses_weak_keys_and_old_hashes() {
    assert!(matches!(
        check_pem(&fixture("rsa1024.csr")),
        Err(CsrError::WeakKey(_))
    ));
    assert!(matches!(
        check_pem(&fixture("p224.csr")),
        Err(CsrError::WeakKey(_))
    ));
    assert!(matches!(
        check_pem(&fixture("rsa2048-sha1.csr")),
        Err(CsrError::UnsupportedAlgorithm(_))
    ));
}

#[test]
fn refuses_tampered_signature() {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri("spiffe://td/ns/a/sa/b")];
    let mut der = params.serialize_request(&key).unwrap().der().to_vec();
    // The signature BIT STRING ends the DER; flip a bit inside it.
    let last = der.len() - 5;
    der[last] ^= 0x01;
    assert_eq!(check_der(&der).unwrap_err(), CsrError::BadSignature);
}

#[test]
fn refuses_missing_multiple_and_invalid_ids() {
    let key = KeyPair::generate().unwrap();
    let none = csr_with_sans(&key, vec![SanType::DnsName("only-dns".try_into().unwrap())]);
    assert_eq!(
        check_pem(none.as_bytes()).unwrap_err(),
        CsrError::NoSpiffeId
    );
    let two = csr_with_sans(
        &key,
        vec![uri("spiffe://td/ns/a/sa/b"), uri("spiffe://td/ns/a/sa/c")],
    );
    assert_eq!(
        check_pem(two.as_bytes()).unwrap_err(),
        CsrError::ManyUris(2)
    );
    for bad in [
        "spiffe://td/ns/../sa/b",
        "spiffe://TD/ns/a/sa/b",
        "spiffe://td//a",
        "https://td/x",
    ] {
        let pem = csr_with_sans(&key, vec![uri(bad)]);
        assert!(
            matches!(check_pem(pem.as_bytes()), Err(CsrError::InvalidId(_))),
            "{bad}"
        );
    }
}

#[test]
fn refuses_non_csr_input() {
    assert_eq!(check_pem(b"hello").unwrap_err(), CsrError::NotPem);
    let cert_pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    assert_eq!(
        check_pem(cert_pem.as_bytes()).unwrap_err(),
        CsrError::NotPem
    );
    let junk = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
    assert!(matches!(
        check_pem(junk.as_bytes()),
        Err(CsrError::Malformed(_))
    ));
}
