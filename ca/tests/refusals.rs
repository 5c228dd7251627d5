//! The CA's HTTPS API, refusals: every bad request gets a clear 4xx on the
//! wire (status, JSON `reason`), is counted in /metrics and written to the
//! audit log, and nothing is issued.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use rcgen::{CertificateParams, KeyPair, SanType};
use time::OffsetDateTime;

use support::*;

const WEB: &str = "spiffe://test.ward/ns/default/sa/web";
/// 2. No, or a non-Bearer, Authorization header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_missing_and_malformed_authorization() {
    let srv = TestServer::start().await;
    let (_, csr) = csr_for(WEB);

    let resp = srv
        .expect_denied(
            None,
            csr.clone(),
            StatusCode::UNAUTHORIZED,
            "missing_authorization",
        )
        .await;
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    srv.expect_audit_denied("missing_authorization", resp.client, None, None);

    for header in ["Basic x", "Bearer", "Bearer "] {
        let resp = srv
            .expect_denied(
                Some(header),
                csr.clone(),
                StatusCode::UNAUTHORIZED,
                "malformed_authorization",
            )
            .await;
        assert_eq!(
            resp.header("www-authenticate"),
            Some("Bearer"),
            "{header:?}"
        );
        srv.expect_audit_denied("malformed_authorization", resp.client, None, None);
    }
    assert_eq!(srv.denied("malformed_authorization").await, 3.0);

    // The credential is checked before the body is looked at.
    let resp = srv
        .expect_denied(
            None,
            "hello",
            StatusCode::UNAUTHORIZED,
            "missing_authorization",
        )
        .await;
    srv.expect_audit_denied("missing_authorization", resp.client, None, None);
    assert_eq!(srv.audit().len(), 5);
}

/// 3. A token that has already expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_expired_token() {
    let srv = TestServer::start().await;
    let past = OffsetDateTime::now_utc() - time::Duration::hours(2);
    let (token, claims) =
        ward_ca::token::mint(&srv.authority, &id(WEB), Duration::from_secs(3600), past).unwrap();
    assert!(claims.exp < OffsetDateTime::now_utc().unix_timestamp());
    let (_, csr) = csr_for(WEB);
    let resp = srv
        .expect_denied(
            Some(&bearer(&token)),
            csr,
            StatusCode::UNAUTHORIZED,
            "token_expired",
        )
        .await;
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    srv.expect_audit_denied("token_expired", resp.client, None, None);

    // And one issued an hour in the future (beyond the 5 min skew allowance).
    let future = OffsetDateTime::now_utc() + time::Duration::hours(1);
    let (token, _) =
        ward_ca::token::mint(&srv.authority, &id(WEB), Duration::from_secs(3600), future).unwrap();
    let (_, csr) = csr_for(WEB);
    let resp = srv
        .expect_denied(
            Some(&bearer(&token)),
            csr,
            StatusCode::UNAUTHORIZED,
            "token_not_yet_valid",
        )
        .await;
    srv.expect_audit_denied("token_not_yet_valid", resp.client, None, None);
}

/// 4. A token from another CA, and a token that is not a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_foreign_and_garbage_tokens() {
    let srv = TestServer::start().await;
    let other_dir = tempfile::tempdir().unwrap();
    let (_, other) = new_ca(other_dir.path(), TD);
    let (foreign, _) = mint(&other, WEB);
    let (_, csr) = csr_for(WEB);

    let resp = srv
        .expect_denied(
            Some(&bearer(&foreign)),
            csr.clone(),
            StatusCode::UNAUTHORIZED,
            "bad_token_signature",
        )
        .await;
    srv.expect_audit_denied("bad_token_signature", resp.client, None, None);

    let resp = srv
        .expect_denied(
            Some("Bearer garbage"),
            csr,
            StatusCode::UNAUTHORIZED,
            "malformed_token",
        )
        .await;
    srv.expect_audit_denied("malformed_token", resp.client, None, None);
}

/// 5. The token authorizes X, the CSR asks for Y.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_identity_mismatch() {
    let srv = TestServer::start().await;
    let (token, claims) = srv.token(WEB);
    let (_, csr) = csr_for("spiffe://test.ward/ns/default/sa/admin");
    let resp = srv
        .expect_denied(
            Some(&bearer(&token)),
            csr,
            StatusCode::FORBIDDEN,
            "identity_mismatch",
        )
        .await;
    let message = resp.json()["error"].as_str().unwrap().to_string();
    assert!(
        message.contains(WEB) && message.contains("sa/admin"),
        "{message}"
    );
    srv.expect_audit_denied(
        "identity_mismatch",
        resp.client,
        Some(WEB),
        Some(&claims.jti),
    );
}

/// 6. A CSR for another trust domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_csr_for_other_trust_domain() {
    let srv = TestServer::start().await;
    let (token, claims) = srv.token(WEB);
    let (_, csr) = csr_for("spiffe://other.ward/ns/default/sa/web");
    let resp = srv
        .expect_denied(
            Some(&bearer(&token)),
            csr,
            StatusCode::BAD_REQUEST,
            "csr_wrong_trust_domain",
        )
        .await;
    srv.expect_audit_denied(
        "csr_wrong_trust_domain",
        resp.client,
        Some(WEB),
        Some(&claims.jti),
    );
}

/// 7. Two URI SANs, and none at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_csr_without_exactly_one_uri_san() {
    let srv = TestServer::start().await;
    let (token, claims) = srv.token(WEB);
    let key = KeyPair::generate().unwrap();
    let two = csr_with_sans(
        &key,
        vec![
            uri_san(WEB),
            uri_san("spiffe://test.ward/ns/default/sa/other"),
        ],
    );
    let dns_only = csr_with_sans(
        &key,
        vec![SanType::DnsName("web.example".try_into().unwrap())],
    );
    let no_san = csr_with_sans(&key, vec![]);
    for csr in [two, dns_only, no_san] {
        let resp = srv
            .expect_denied(
                Some(&bearer(&token)),
                csr,
                StatusCode::BAD_REQUEST,
                "uri_san_count",
            )
            .await;
        srv.expect_audit_denied("uri_san_count", resp.client, Some(WEB), Some(&claims.jti));
    }
    assert_eq!(srv.denied("uri_san_count").await, 3.0);
}

/// 8. SPIFFE IDs that two parsers could read differently are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_invalid_spiffe_ids() {
    let srv = TestServer::start().await;
    let (token, claims) = srv.token(WEB);
    let bad = [
        "spiffe://test.ward/ns/../sa/web",
        "spiffe://test.ward/ns/default/sa/../sa/web",
        "spiffe://test.ward/ns//sa/web",
        "spiffe://TEST.ward/ns/default/sa/web",
        "spiffe://test.ward/ns/default/sa/web/",
        "spiffe://test.ward/ns/default/sa/w%65b",
    ];
    for uri in bad {
        let (_, csr) = csr_for(uri);
        let resp = srv
            .expect_denied(
                Some(&bearer(&token)),
                csr,
                StatusCode::BAD_REQUEST,
                "invalid_spiffe_id",
            )
            .await;
        srv.expect_audit_denied(
            "invalid_spiffe_id",
            resp.client,
            Some(WEB),
            Some(&claims.jti),
        );
    }
    assert_eq!(srv.denied("invalid_spiffe_id").await, bad.len() as f64);
}

/// 9. A CSR whose self-signature does not verify (no proof of possession).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_csr_with_bad_signature() {
    let srv = TestServer::start().await;
    let (token, claims) = srv.token(WEB);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri_san(WEB)];
    let mut der = params.serialize_request(&key).unwrap().der().to_vec();
    // The signature BIT STRING ends the DER; flip a bit inside its `s`.
    let at = der.len() - 5;
    der[at] ^= 0x01;
    let pem = pkcs8::der::pem::encode_string(
        "CERTIFICATE REQUEST",
        pkcs8::der::pem::LineEnding::LF,
        &der,
    )
    .unwrap();
    let resp = srv
        .expect_denied(
            Some(&bearer(&token)),
            pem,
            StatusCode::BAD_REQUEST,
            "bad_csr_signature",
        )
        .await;
    srv.expect_audit_denied(
        "bad_csr_signature",
        resp.client,
        Some(WEB),
        Some(&claims.jti),
    );
}

/// 10. Weak keys and SHA-1, from OpenSSL-made fixtures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_weak_keys_and_sha1() {
    let srv = TestServer::start().await;
    let weak = "spiffe://test.ward/ns/default/sa/weak";
    let (token, claims) = srv.token(weak);
    for name in ["rsa1024.csr", "p224.csr"] {
        let resp = srv
            .expect_denied(
                Some(&bearer(&token)),
                fixture(name),
                StatusCode::BAD_REQUEST,
                "weak_key",
            )
            .await;
        srv.expect_audit_denied("weak_key", resp.client, Some(weak), Some(&claims.jti));
    }
    assert_eq!(srv.denied("weak_key").await, 2.0);

    let rsa = "spiffe://test.ward/ns/default/sa/rsa";
    let (token, claims) = srv.token(rsa);
    let resp = srv
        .expect_denied(
            Some(&bearer(&token)),
            fixture("rsa2048-sha1.csr"),
            StatusCode::BAD_REQUEST,
            "unsupported_algorithm",
        )
        .await;
    srv.expect_audit_denied(
        "unsupported_algorithm",
        resp.client,
        Some(rsa),
        Some(&claims.jti),
    );
}

/// 13. A body that is not a CSR; unknown paths and wrong methods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_non_csr_and_unknown_routes() {
    let srv = TestServer::start().await;
    let (token, claims) = srv.token(WEB);
    let resp = srv
        .expect_denied(
            Some(&bearer(&token)),
            "hello",
            StatusCode::BAD_REQUEST,
            "malformed_csr",
        )
        .await;
    srv.expect_audit_denied("malformed_csr", resp.client, Some(WEB), Some(&claims.jti));
    let audit_lines = srv.audit().len();

    for (method, path) in [
        (Method::GET, "/nope"),
        (Method::POST, "/v1/svid/extra"),
        (Method::GET, "/v1"),
    ] {
        let resp = srv.request(method.clone(), path, &[], "").await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(resp.reason(), "not_found");
    }
    let resp = srv.get("/v1/svid").await;
    assert_eq!(resp.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.reason(), "method_not_allowed");
    assert_eq!(resp.header("allow"), Some("POST"));
    let resp = srv.request(Method::POST, "/v1/bundle", &[], "").await;
    assert_eq!(resp.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.header("allow"), Some("GET, HEAD"));
    // Routing errors are not SVID decisions: no audit lines, no issuance.
    assert_eq!(srv.audit().len(), audit_lines);
    assert_eq!(srv.metric("ward_ca_svids_issued_total").await, 0.0);
}
