//! The CA's HTTPS API, end to end: a real `CaServer` on 127.0.0.1:0, real
//! TLS 1.3 (rustls, aws-lc-rs), hyper's HTTP/1 client. Each denial is checked
//! on the wire (status, JSON `reason`), in /metrics and in the audit log.

mod support;

use std::io::Write;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{Method, StatusCode};

use rustls::pki_types::CertificateDer;
use serde_json::Value;
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_SIG_ECDSA_WITH_SHA256, OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use support::*;

const WEB: &str = "spiffe://test.ward/ns/default/sa/web";

/// Checks the SPIFFE X509-SVID profile of `leaf` (issued between `start` and
/// `end` for `identity` over `spki_der`) and its chain to `root`. Returns the
/// serial as lowercase hex.
fn check_svid(
    leaf_der: &[u8],
    int_der: &[u8],
    root_der: &[u8],
    identity: &str,
    spki_der: &[u8],
    start: OffsetDateTime,
    end: OffsetDateTime,
) -> String {
    let (rest, leaf) = X509Certificate::from_der(leaf_der).expect("leaf parses");
    assert!(rest.is_empty());
    let (_, int) = X509Certificate::from_der(int_der).expect("intermediate parses");
    let (_, root) = X509Certificate::from_der(root_der).expect("root parses");

    assert_eq!(leaf.version().0, 2, "X.509 v3");
    assert_eq!(
        leaf.public_key().raw,
        spki_der,
        "the leaf certifies the CSR's key, nothing else"
    );

    // Exactly one URI SAN, the authorized identity, and no other SAN.
    let san = leaf
        .subject_alternative_name()
        .unwrap()
        .expect("SAN extension present");
    let names: Vec<&GeneralName> = san.value.general_names.iter().collect();
    assert_eq!(names.len(), 1, "exactly one SAN: {names:?}");
    assert!(
        matches!(names[0], GeneralName::URI(u) if *u == identity),
        "URI SAN {names:?} != {identity}"
    );
    if leaf.subject().iter_attributes().next().is_none() {
        assert!(
            san.critical,
            "RFC 5280 4.1.2.6: empty subject requires a critical SAN"
        );
    }

    // CA:false, critical.
    let bc = leaf
        .basic_constraints()
        .unwrap()
        .expect("basicConstraints present");
    assert!(bc.critical, "basicConstraints critical");
    assert!(!bc.value.ca, "CA:false");
    assert!(bc.value.path_len_constraint.is_none());
    assert!(!leaf.is_ca());

    // keyUsage critical and exactly digitalSignature.
    let ku = leaf.key_usage().unwrap().expect("keyUsage present");
    assert!(ku.critical, "keyUsage critical");
    assert!(ku.value.digital_signature());
    assert_eq!(
        ku.value.flags, 1,
        "keyUsage is exactly digitalSignature: {}",
        ku.value
    );

    // EKU serverAuth + clientAuth, nothing else.
    let eku = leaf
        .extended_key_usage()
        .unwrap()
        .expect("extendedKeyUsage present");
    assert!(
        eku.value.server_auth && eku.value.client_auth,
        "{:?}",
        eku.value
    );
    assert!(!eku.value.any && !eku.value.code_signing && !eku.value.email_protection);
    assert!(!eku.value.time_stamping && !eku.value.ocsp_signing && eku.value.other.is_empty());

    // Serial: positive DER INTEGER with at least 64 bits.
    let raw = leaf.raw_serial();
    assert!(
        !raw.is_empty() && raw[0] & 0x80 == 0,
        "serial must be positive: {raw:02x?}"
    );
    let significant: &[u8] = &raw[raw
        .iter()
        .position(|b| *b != 0)
        .expect("serial is not zero")..];
    let bits = significant.len() * 8 - significant[0].leading_zeros() as usize;
    assert!(bits >= 64, "serial has {bits} bits");

    // Validity: backdated a little, ~24 h ahead, inside the intermediate's.
    let not_before = leaf.validity().not_before.to_datetime();
    let not_after = leaf.validity().not_after.to_datetime();
    let backdate = start - not_before;
    assert!(
        backdate > time::Duration::ZERO,
        "notBefore {not_before} must be before the request ({start})"
    );
    assert!(
        backdate <= time::Duration::minutes(10),
        "notBefore backdated by {backdate}"
    );
    let ttl = time::Duration::try_from(SVID_TTL).unwrap();
    assert!(
        not_after >= start + ttl - time::Duration::seconds(2),
        "notAfter {not_after} is not ~24 h after {start}"
    );
    assert!(
        not_after <= end + ttl + time::Duration::seconds(1),
        "notAfter {not_after} is after {end} + 24 h"
    );
    assert!(not_before >= int.validity().not_before.to_datetime());
    assert!(not_after <= int.validity().not_after.to_datetime());

    // Issued by the intermediate, which is issued by the root.
    assert_eq!(
        leaf.issuer().as_raw(),
        int.subject().as_raw(),
        "leaf issuer == intermediate subject"
    );
    assert_eq!(int.issuer().as_raw(), root.subject().as_raw());
    assert_eq!(
        leaf.signature_algorithm.algorithm,
        OID_SIG_ECDSA_WITH_SHA256
    );
    leaf.verify_signature(Some(int.public_key()))
        .expect("leaf signed by the intermediate");
    int.verify_signature(Some(root.public_key()))
        .expect("intermediate signed by the root");
    root.verify_signature(None).expect("root self-signed");
    assert!(int.is_ca() && root.is_ca());
    // RFC 5280 4.2.1.1/4.2.1.2: the leaf's AKI names the intermediate's SKI.
    let ski = int
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
            _ => None,
        })
        .expect("intermediate has a subjectKeyIdentifier");
    let aki = leaf
        .get_extension_unique(&OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
        .unwrap()
        .expect("leaf has an authorityKeyIdentifier");
    match aki.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(a) => {
            assert_eq!(
                a.key_identifier.as_ref().map(|k| k.0),
                Some(ski),
                "AKI == intermediate SKI"
            )
        }
        other => panic!("unexpected AKI {other:?}"),
    }
    hex(significant)
}

fn rfc3339(t: &str) -> OffsetDateTime {
    OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
}

/// 1. The happy path, the certificate profile, the chain, the audit line,
/// the metric, and two requests on one keep-alive connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_spiffe_svid_chain_and_keeps_connection_alive() {
    let srv = TestServer::start().await;
    let (token, claims) = srv.token(WEB);
    assert_eq!(srv.metric("ward_ca_svids_issued_total").await, 0.0);

    let mut conn = srv.connect().await;
    assert_eq!(conn.tls_version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(conn.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let auth = bearer(&token);
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/pkcs10"),
    ];

    let mut serials = Vec::new();
    for round in 0..2 {
        let (key, csr) = csr_for(WEB);
        let start = OffsetDateTime::now_utc();
        let resp = conn.send(Method::POST, "/v1/svid", &headers, csr).await;
        let end = OffsetDateTime::now_utc();
        assert_eq!(
            resp.status,
            StatusCode::OK,
            "round {round}: {}",
            resp.text()
        );
        assert_eq!(resp.header("content-type"), Some("application/x-pem-file"));
        let text = resp.text();
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{text}");
        let chain = pem_certs(&resp.body);
        assert_eq!(chain.len(), 2, "leaf then intermediate: {text}");
        let int_file = pem_certs(&std::fs::read(srv.ca.path("intermediate.pem")).unwrap());
        assert_eq!(
            chain[1], int_file[0],
            "second certificate is intermediate.pem"
        );
        assert_eq!(&chain[1], srv.authority.intermediate());
        let root = pem_certs(&srv.root_pem);
        let serial = check_svid(
            &chain[0],
            &chain[1],
            &root[0],
            WEB,
            &rcgen::PublicKeyData::subject_public_key_info(&key),
            start,
            end,
        );

        // Audit: one `issued` line per certificate, naming serial and token.
        let lines = srv.audit();
        assert_eq!(lines.len(), round + 1, "{lines:?}");
        let line = &lines[round];
        assert_audit_time(line);
        assert_eq!(line["result"], "issued", "{line}");
        assert!(line.get("reason").is_none(), "{line}");
        assert_eq!(line["identity"], WEB);
        assert_eq!(
            line["serial"],
            serial.as_str(),
            "audit serial is the certificate's, lowercase hex"
        );
        assert_eq!(line["token_id"], claims.jti.as_str());
        assert_eq!(
            line["client"],
            conn.local.to_string(),
            "same keep-alive connection"
        );
        let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
        let audited = rfc3339(line["not_after"].as_str().unwrap());
        let actual = leaf.validity().not_after.to_datetime();
        assert!(
            (audited - actual).abs() < time::Duration::seconds(1),
            "audit not_after {audited} vs cert {actual}"
        );

        assert_eq!(
            srv.metric("ward_ca_svids_issued_total").await,
            (round + 1) as f64
        );
        serials.push(serial);

        if round == 0 {
            openssl_verify(&srv, &text).await;
        }
    }
    assert_ne!(serials[0], serials[1], "serials are unique");
    assert_eq!(
        srv.metric("ward_ca_issuance_duration_seconds_count").await,
        2.0
    );
    srv.shutdown().await;
}

/// `openssl verify -CAfile root.pem -untrusted intermediate.pem leaf.pem`.
async fn openssl_verify(srv: &TestServer, chain_pem: &str) {
    let work = tempfile::tempdir().unwrap();
    let blocks: Vec<String> = chain_pem
        .split_inclusive("-----END CERTIFICATE-----")
        .filter(|b| b.contains("BEGIN"))
        .map(|b| format!("{}\n", b.trim_start()))
        .collect();
    assert_eq!(blocks.len(), 2);
    std::fs::write(work.path().join("leaf.pem"), &blocks[0]).unwrap();
    std::fs::write(work.path().join("intermediate.pem"), &blocks[1]).unwrap();
    std::fs::write(work.path().join("root.pem"), &srv.root_pem).unwrap();
    let args = [
        "verify",
        "-CAfile",
        "root.pem",
        "-untrusted",
        "intermediate.pem",
        "leaf.pem",
    ];
    if let Some((ok, out)) = openssl(work.path(), &args).await {
        assert!(ok, "openssl verify failed: {out}");
        assert!(out.contains("leaf.pem: OK"), "{out}");
        // The profile is also acceptable for TLS clients and servers.
        for purpose in ["sslclient", "sslserver"] {
            let mut args = args.to_vec();
            args.splice(1..1, ["-purpose", purpose]);
            let (ok, out) = openssl(work.path(), &args).await.unwrap();
            assert!(ok, "openssl verify -purpose {purpose}: {out}");
        }
    }
}

/// 10 (accepted part). An RSA 2048 / SHA-256 CSR made by OpenSSL is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_rsa2048_csr_from_openssl() {
    let srv = TestServer::start().await;
    let id = "spiffe://test.ward/ns/default/sa/rsa";
    let (token, _) = srv.token(id);
    let csr_pem = fixture("rsa2048.csr");
    let resp = srv.post_svid(Some(&bearer(&token)), csr_pem.clone()).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let chain = pem_certs(&resp.body);
    assert_eq!(chain.len(), 2);
    let (_, der) = pkcs8::der::pem::decode_vec(&csr_pem).unwrap();
    let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    assert_eq!(
        leaf.public_key().raw,
        csr.certification_request_info.subject_pki.raw
    );
    assert!(matches!(
        leaf.public_key().parsed().unwrap(),
        PublicKey::RSA(_)
    ));
    let root = pem_certs(&srv.root_pem);
    let now = OffsetDateTime::now_utc();
    check_svid(
        &chain[0],
        &chain[1],
        &root[0],
        id,
        leaf.public_key().raw,
        now,
        now,
    );
    assert_eq!(srv.metric("ward_ca_svids_issued_total").await, 1.0);
    assert_eq!(srv.audit().last().unwrap()["result"], "issued");
}

/// The audit log cannot be written: the certificate is not released (fail
/// closed), the refusal is 503 `unavailable`, and the write error is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_release_certificate_when_audit_fails() {
    let full = std::path::PathBuf::from("/dev/full");
    if !full.exists() {
        eprintln!("SKIPPED: /dev/full does not exist, cannot make audit writes fail");
        return;
    }
    // Never read srv.audit() here: /dev/full reads as endless zeros.
    let srv = TestServer::start_full(ward_ca::server::Limits::default(), Some(full)).await;
    let (token, _) = srv.token(WEB);
    let (_, csr) = csr_for(WEB);
    srv.expect_denied(
        Some(&bearer(&token)),
        csr,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await;
    assert_eq!(srv.metric("ward_ca_audit_write_errors_total").await, 1.0);
    assert_eq!(srv.metric("ward_ca_svids_issued_total").await, 0.0);
}

fn jwk_matches_cert(jwk: &Value, der: &CertificateDer<'_>) {
    assert_eq!(jwk["use"], "x509-svid", "{jwk}");
    assert_eq!(jwk["kty"], "EC", "{jwk}");
    assert_eq!(jwk["crv"], "P-256", "{jwk}");
    let x5c = jwk["x5c"].as_array().expect("x5c array");
    assert_eq!(x5c.len(), 1, "{jwk}");
    assert_eq!(x5c[0].as_str().unwrap(), STANDARD.encode(der.as_ref()));
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let point = cert.public_key().subject_public_key.data.as_ref();
    assert_eq!(point.len(), 65);
    assert_eq!(
        URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap(),
        &point[1..33]
    );
    assert_eq!(
        URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap(),
        &point[33..]
    );
}

/// 14. The trust bundle as PEM and as a SPIFFE bundle, before and after a
/// second root is added for a root rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_trust_bundle_pem_and_spiffe_json() {
    let srv = TestServer::start().await;
    let root = pem_certs(&srv.root_pem);
    assert_eq!(root.len(), 1);

    let resp = srv.get("/v1/bundle").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("content-type"), Some("application/x-pem-file"));
    assert_eq!(pem_certs(&resp.body), root);

    let resp = srv.get("/v1/bundle.json").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let doc = resp.json();
    let keys = doc["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1, "{doc}");
    jwk_matches_cert(&keys[0], &root[0]);
    let seq1 = doc["spiffe_sequence"]
        .as_u64()
        .expect("integer spiffe_sequence");
    let hint = doc["spiffe_refresh_hint"]
        .as_u64()
        .expect("integer spiffe_refresh_hint");
    assert!(hint > 0, "{doc}");

    // Root rotation, step 1: the bundle gains a second root.
    let other_dir = tempfile::tempdir().unwrap();
    new_ca(other_dir.path(), TD);
    let other_pem = std::fs::read(other_dir.path().join("root.pem")).unwrap();
    let other = pem_certs(&other_pem);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(srv.ca.path("trust-bundle.pem"))
        .unwrap();
    f.write_all(&other_pem).unwrap();
    drop(f);

    let resp = srv.get("/v1/bundle").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(
        pem_certs(&resp.body),
        vec![root[0].clone(), other[0].clone()]
    );

    let doc = srv.get("/v1/bundle.json").await.json();
    let keys = doc["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2, "{doc}");
    jwk_matches_cert(&keys[0], &root[0]);
    jwk_matches_cert(&keys[1], &other[0]);
    let seq2 = doc["spiffe_sequence"]
        .as_u64()
        .expect("integer spiffe_sequence");
    assert!(
        seq2 >= seq1,
        "spiffe_sequence went back from {seq1} to {seq2}"
    );
    assert_eq!(doc["spiffe_refresh_hint"].as_u64(), Some(hint));
}

/// 15. Health and the intermediate expiry gauge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_expiry_metric() {
    let srv = TestServer::start().await;
    let resp = srv.get("/healthz").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.text().trim_end(), "ok");

    let metrics = srv.metrics().await;
    assert!(
        metrics.contains("# TYPE ward_ca_intermediate_expiry_seconds gauge"),
        "{metrics}"
    );
    let left = metric_value(&metrics, "ward_ca_intermediate_expiry_seconds").expect("expiry gauge");
    let year = 365.0 * 86_400.0;
    assert!(left > 0.0, "{left}");
    assert!(
        (year - 3600.0..=year).contains(&left),
        "expiry in {left} s, expected ~365 days"
    );
    for family in [
        "ward_ca_svids_issued_total",
        "ward_ca_tls_handshake_errors_total",
        "ward_ca_audit_write_errors_total",
        "ward_ca_connections_refused_total",
    ] {
        assert_eq!(
            metric_value(&metrics, family),
            Some(0.0),
            "{family} in {metrics}"
        );
    }
}

/// The CA's own serving certificate covers the configured names (DNS and
/// IP), chains to the root, and is refused for any other name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_certificate_covers_configured_names() {
    use rustls::pki_types::ServerName;
    use tokio_rustls::TlsConnector;

    let srv = TestServer::start().await;
    for name in ["localhost", "127.0.0.1"] {
        let tcp = srv.tcp().await;
        let server_name = ServerName::try_from(name).unwrap();
        let tls = bounded(
            "handshake",
            TlsConnector::from(srv.tls13()).connect(server_name, tcp),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let chain = tls.get_ref().1.peer_certificates().unwrap().to_vec();
        assert_eq!(chain.len(), 2, "serving leaf + intermediate");
        assert_eq!(&chain[1], srv.authority.intermediate());
        let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
        assert!(!leaf.is_ca());
        let eku = leaf.extended_key_usage().unwrap().expect("EKU");
        assert!(eku.value.server_auth);
    }
    let tcp = srv.tcp().await;
    let wrong = ServerName::try_from("ca.example.com").unwrap();
    let result = bounded(
        "handshake",
        TlsConnector::from(srv.tls13()).connect(wrong, tcp),
    )
    .await;
    assert!(
        result.is_err(),
        "serving certificate accepted for a name it was not issued for"
    );
}
