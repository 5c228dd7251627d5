//! The signing authority: the intermediate CA certificate and its key, loaded
//! in memory, and the certificate profiles it issues (X509-SVIDs for
//! workloads, serving certificates for the CA's own HTTPS endpoint).
//!
//! Profiles are fixed here, not taken from requests: the CA copies only the
//! public key and the (separately authorized) SPIFFE ID into a certificate.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SigningKey,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use ward_config::{SpiffeId, TrustDomain};

/// How far notBefore is backdated, so that peers whose clocks run a little
/// behind the CA's accept a brand-new certificate.
pub const CLOCK_SKEW_BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Failures while signing. These are the CA's own faults (expired
/// intermediate, crypto failure), never the caller's.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(
        "the intermediate CA expired at {0}: rotate it with `ward ca init --force` or a new intermediate"
    )]
    IntermediateExpired(OffsetDateTime),
    #[error("cannot sign certificate: {0}")]
    Sign(#[from] rcgen::Error),
    #[error("the system random generator failed")]
    Random,
    #[error("a lifetime of {0:?} is out of range")]
    TtlOutOfRange(Duration),
}

/// A freshly issued certificate with what the audit log and response need.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Leaf first, then the intermediate.
    pub chain_pem: String,
    pub leaf: CertificateDer<'static>,
    /// Lowercase hex of the serial number.
    pub serial: String,
    pub not_after: OffsetDateTime,
}

/// The online signing CA.
pub struct Authority {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    intermediate: CertificateDer<'static>,
    intermediate_pem: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Assembles an authority from an intermediate the caller has already
    /// validated (see `store::CaDir::load`).
    pub(crate) fn new(
        trust_domain: TrustDomain,
        intermediate: CertificateDer<'static>,
        key: KeyPair,
        validity: (OffsetDateTime, OffsetDateTime),
    ) -> Result<Self, rcgen::Error> {
        let issuer = Issuer::from_ca_cert_der(&intermediate, key)?;
        let intermediate_pem = pem_cert(&intermediate);
        Ok(Self {
            trust_domain,
            issuer,
            intermediate,
            intermediate_pem,
            not_before: validity.0,
            not_after: validity.1,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn intermediate(&self) -> &CertificateDer<'static> {
        &self.intermediate
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The intermediate's key, which also signs join tokens.
    pub(crate) fn signing_key(&self) -> &KeyPair {
        self.issuer.key()
    }

    /// Issues an X509-SVID for `id` over the public key `spki`: one URI SAN,
    /// CA:false, digitalSignature (critical), EKU serverAuth + clientAuth, a
    /// random 127-bit serial, and a lifetime capped by the intermediate's.
    pub fn issue_svid(
        &self,
        spki: &impl PublicKeyData,
        id: &SpiffeId,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, IssueError> {
        let uri = SanType::URI(id.as_str().try_into()?);
        self.issue(
            spki,
            vec![uri],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            ttl,
            now,
        )
    }

    /// Issues a TLS server certificate for the CA's own endpoint.
    pub fn issue_serving_cert(
        &self,
        spki: &impl PublicKeyData,
        names: &[String],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, IssueError> {
        let sans = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.as_str().try_into()?)),
            })
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        self.issue(
            spki,
            sans,
            vec![ExtendedKeyUsagePurpose::ServerAuth],
            ttl,
            now,
        )
    }

    fn issue(
        &self,
        spki: &impl PublicKeyData,
        sans: Vec<SanType>,
        ekus: Vec<ExtendedKeyUsagePurpose>,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, IssueError> {
        if now >= self.not_after {
            return Err(IssueError::IntermediateExpired(self.not_after));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = ekus;
        params.use_authority_key_identifier_extension = true;
        // Certificates carry whole seconds; truncate so the audit log and
        // the response state exactly what the certificate says.
        let now = now.replace_nanosecond(0).unwrap_or(now);
        params.not_before = (now - CLOCK_SKEW_BACKDATE).max(self.not_before);
        params.not_after = add_ttl(now, ttl)?.min(self.not_after);
        let serial = random_serial()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(spki, &self.issuer)?;
        let leaf = cert.der().clone();
        let mut chain_pem = cert.pem();
        chain_pem.push_str(&self.intermediate_pem);
        Ok(Issued {
            chain_pem,
            leaf,
            serial: hex(&serial),
            not_after: params.not_after,
        })
    }

    /// Signs `msg` with the intermediate key (ECDSA P-256, ASN.1 signature).
    pub(crate) fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.issuer.key().sign(msg)
    }
}

/// `now + ttl`, refusing lifetimes past the year 9999 instead of panicking.
pub(crate) fn add_ttl(now: OffsetDateTime, ttl: Duration) -> Result<OffsetDateTime, IssueError> {
    time::Duration::try_from(ttl)
        .ok()
        .and_then(|d| now.checked_add(d))
        .filter(|t| t.year() <= 9999)
        .ok_or(IssueError::TtlOutOfRange(ttl))
}

/// 16 random bytes, top bit cleared and the next one set: a positive DER
/// INTEGER of fixed length with 126 bits of entropy (CA/B forum asks for 64).
pub(crate) fn random_serial() -> Result<[u8; 16], IssueError> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| IssueError::Random)?;
    serial[0] &= 0x7f;
    serial[0] |= 0x40; // never shorter than 16 bytes once encoded
    Ok(serial)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn pem_cert(der: &[u8]) -> String {
    pkcs8::der::pem::encode_string("CERTIFICATE", pkcs8::der::pem::LineEnding::LF, der)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_past_year_9999_are_errors_not_panics() {
        let now = OffsetDateTime::now_utc();
        assert!(add_ttl(now, Duration::from_secs(86_400)).is_ok());
        let huge = Duration::from_secs(3_000_000 * 86_400);
        assert!(matches!(
            add_ttl(now, huge),
            Err(IssueError::TtlOutOfRange(_))
        ));
        assert!(matches!(
            add_ttl(now, Duration::MAX),
            Err(IssueError::TtlOutOfRange(_))
        ));
    }

    #[test]
    fn serials_are_positive_fixed_length_and_distinct() {
        let a = random_serial().unwrap();
        let b = random_serial().unwrap();
        assert_ne!(a, b);
        assert_eq!(a[0] & 0xc0, 0x40);
    }
}
