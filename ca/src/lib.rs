//! ward-ca: ward's small certificate authority. It keeps a root and an
//! intermediate CA (keys encrypted at rest), authenticates workloads by
//! bearer credential, issues short-lived SPIFFE X509-SVIDs from CSRs over
//! HTTPS, publishes the trust bundle, audit-logs every decision and exports
//! Prometheus metrics.
#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod authority;
pub mod bundle;
pub mod csr;
pub mod https;
pub mod keys;
pub mod kubernetes;
pub mod metrics;
pub mod server;
pub mod service;
pub mod store;
pub mod token;

#[cfg(test)]
pub(crate) mod test_support {
    use std::time::Duration;

    use crate::authority::Authority;
    use crate::store::{CaDir, InitOptions};

    /// A fresh CA with plaintext keys in a temporary directory.
    pub fn authority(td: &str) -> (tempfile::TempDir, Authority) {
        let dir = tempfile::tempdir().unwrap();
        let ca = CaDir::new(dir.path());
        let now = time::OffsetDateTime::now_utc();
        let opts = InitOptions {
            trust_domain: ward_config::TrustDomain::new(td).unwrap(),
            passphrase: None,
            force: false,
            root_ttl: Duration::from_secs(10 * 365 * 86_400),
            intermediate_ttl: Duration::from_secs(365 * 86_400),
        };
        ca.init(&opts, now).unwrap();
        let authority = ca.load(None, now).unwrap();
        (dir, authority)
    }
}
