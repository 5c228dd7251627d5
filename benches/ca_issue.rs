//! Cost of one SVID issuance inside the CA, without network:
//! - `csr_verify_and_sign`: CSR parse + proof-of-possession check + signing
//! - `token_verify`: join-token signature and claims check
//! - `issue_decision`: the whole decision (token, CSR, identity binding, sign,
//!   metrics), as `POST /v1/svid` runs it minus HTTP, TLS and the audit write.
//!
//! Run: `cargo bench --bench ca_issue`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use time::OffsetDateTime;
use ward_ca::audit::AuditLog;
use ward_ca::metrics::CaMetrics;
use ward_ca::service::SvidService;
use ward_ca::store::{CaDir, InitOptions};
use ward_ca::token::{self, JoinTokens};
use ward_config::TrustDomain;
use ward_proxy::identity::csr::new_key_and_csr;

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CaDir::new(tmp.path());
    let now = OffsetDateTime::now_utc();
    let td = TrustDomain::new("bench.ward").expect("td");
    let opts = InitOptions {
        trust_domain: td.clone(),
        passphrase: None,
        force: false,
        root_ttl: Duration::from_secs(3650 * 86_400),
        intermediate_ttl: Duration::from_secs(365 * 86_400),
    };
    dir.init(&opts, now).expect("init");
    let authority = dir.load(None, now).expect("load");
    let id = td.workload("bench", "client").expect("id");
    let (_key, csr) = new_key_and_csr(&id).expect("csr");
    let (tok, _) = token::mint(&authority, &id, Duration::from_secs(3600), now).expect("token");
    let tokens = JoinTokens::new(&authority);

    c.bench_function("csr_verify_and_sign", |b| {
        b.iter(|| {
            let checked = ward_ca::csr::check_pem(csr.as_bytes()).expect("csr");
            authority
                .issue_svid(
                    &checked.public_key,
                    &checked.requested,
                    Duration::from_secs(86_400),
                    now,
                )
                .expect("issue")
        })
    });
    c.bench_function("token_verify", |b| {
        b.iter(|| tokens.verify(&tok, now).expect("token"))
    });

    let service = SvidService {
        authenticator: Arc::new(JoinTokens::new(&authority)),
        authority: Arc::new(authority),
        audit: AuditLog::disabled(),
        metrics: CaMetrics::new(),
        svid_ttl: Duration::from_secs(86_400),
    };
    let header = format!("Bearer {tok}");
    let client: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    c.bench_function("issue_decision", |b| {
        b.iter(|| {
            rt.block_on(service.issue(Some(header.as_bytes()), csr.as_bytes(), client))
                .expect("issued")
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
