//! Helpers shared by the end-to-end tests.
#![allow(dead_code)] // each test binary uses a subset

pub mod adversary;
pub mod apps;
pub mod deploy;
pub mod https;
#[path = "../../ca/tests/support/kube_api.rs"]
pub mod kube_api;
pub mod lab;
pub mod mesh;
pub mod pair;
pub mod pods;
pub mod process;
pub mod tools;

use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use time::OffsetDateTime;
use ward_ca::authority::Authority;
use ward_ca::store::{CaDir, InitOptions};
use ward_config::{SpiffeId, TrustDomain};
use ward_proxy::identity::Svid;
use ward_proxy::identity::csr::new_key_and_csr;

/// A throwaway CA (plaintext keys) in a temporary directory.
pub fn ca(td: &str) -> (tempfile::TempDir, CaDir, Authority) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CaDir::new(tmp.path());
    let now = OffsetDateTime::now_utc();
    let opts = InitOptions {
        trust_domain: TrustDomain::new(td).expect("trust domain"),
        passphrase: None,
        force: false,
        root_ttl: Duration::from_secs(3650 * 86_400),
        intermediate_ttl: Duration::from_secs(365 * 86_400),
    };
    dir.init(&opts, now).expect("init");
    let authority = dir.load(None, now).expect("load");
    (tmp, dir, authority)
}

/// An SVID for `id`, issued in-process through the same CSR checks the
/// HTTPS API applies.
pub fn svid(authority: &Authority, id: &SpiffeId, ttl: Duration) -> Svid {
    let (key, csr) = new_key_and_csr(id).expect("key and csr");
    let checked = ward_ca::csr::check_pem(csr.as_bytes()).expect("csr");
    let issued = authority
        .issue_svid(&checked.public_key, id, ttl, OffsetDateTime::now_utc())
        .expect("issue");
    Svid::install(&key, &issued.chain_pem, id).expect("install")
}

pub fn roots(dir: &CaDir) -> Arc<RootCertStore> {
    let pem = std::fs::read_to_string(dir.path(ward_ca::store::TRUST_BUNDLE)).expect("bundle");
    Arc::new(ward_proxy::tls::roots::roots_from_pem(&pem).expect("roots"))
}
