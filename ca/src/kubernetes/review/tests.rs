//! The interpretation of recorded TokenReview answers (ca/tests/data/tokenreview).

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus};
use ward_config::TrustDomain;

use super::*;

fn recorded(json: &str) -> TokenReviewStatus {
    let review: TokenReview = serde_json::from_str(json).unwrap();
    review.status.expect("the recording has a status")
}

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

fn interpret_recorded(json: &str) -> Result<Authenticated, AuthError> {
    interpret(Some(&recorded(json)), "ward", true, &td())
}

#[test]
fn an_authenticated_service_account_gets_exactly_its_spiffe_id() {
    let auth = interpret_recorded(include_str!(
        "../../../tests/data/tokenreview/authenticated.json"
    ))
    .unwrap();
    assert_eq!(
        auth.identity.as_str(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert_eq!(
        auth.credential_id,
        "k8s:pod=shop/web-7d9f8c6b5-x2k4q,JTI=0b6f1c52-3e0a-4d57-b2f4-8f1e9c6a7d30"
    );
}

#[test]
fn without_pod_information_the_account_uid_identifies_the_credential() {
    let mut status = recorded(include_str!(
        "../../../tests/data/tokenreview/authenticated.json"
    ));
    status.user.as_mut().unwrap().extra = None;
    assert_eq!(
        interpret(Some(&status), "ward", true, &td()).unwrap_err(),
        AuthError::NotPodBound,
        "a token not bound to a pod is refused unless allowed"
    );
    let auth = interpret(Some(&status), "ward", false, &td()).unwrap();
    assert_eq!(
        auth.credential_id,
        "k8s:uid=4e3c2f1a-6b7d-4f0e-9a8b-1c2d3e4f5a6b"
    );
}

#[test]
fn unauthenticated_answers_carry_the_api_servers_reason() {
    for (json, words) in [
        (
            include_str!("../../../tests/data/tokenreview/expired.json"),
            "has expired",
        ),
        (
            include_str!("../../../tests/data/tokenreview/wrong-audience.json"),
            "is invalid for the target audiences",
        ),
    ] {
        match interpret_recorded(json) {
            Err(e @ AuthError::Unauthenticated(_)) => {
                assert!(e.to_string().contains(words), "{e}");
                assert_eq!(e.reason(), "token_unauthenticated");
            }
            other => panic!("expected Unauthenticated, got {other:?}"),
        }
    }
}

#[test]
fn an_answer_without_our_audience_is_refused_even_when_authenticated() {
    // No `audiences`: the token is valid for the API server itself.
    let err = interpret_recorded(include_str!(
        "../../../tests/data/tokenreview/audience-unaware.json"
    ))
    .unwrap_err();
    assert_eq!(
        err,
        AuthError::WrongAudience {
            expected: "ward".into(),
            got: vec![]
        }
    );
    // Another audience than the one asked for.
    let status = recorded(include_str!(
        "../../../tests/data/tokenreview/authenticated.json"
    ));
    let err = interpret(Some(&status), "ward-staging", true, &td()).unwrap_err();
    assert_eq!(err.reason(), "wrong_audience");
}

#[test]
fn users_and_invalid_names_are_not_service_accounts() {
    let err =
        interpret_recorded(include_str!("../../../tests/data/tokenreview/user.json")).unwrap_err();
    assert_eq!(
        err,
        AuthError::NotServiceAccount("oidc:alice@example.com".into())
    );

    let base = recorded(include_str!(
        "../../../tests/data/tokenreview/authenticated.json"
    ));
    for username in [
        "system:node:worker-2",
        "system:serviceaccount:shop",
        "system:serviceaccount::web",
        "system:serviceaccount:shop:",
        "system:serviceaccount:Shop:web",
        "system:serviceaccount:shop:web:extra",
        "system:serviceaccount:shop:../../admin",
        "system:serviceaccount:shop:web/x",
        "system:serviceaccount:-shop:web",
        "system:serviceaccount:shop:web.",
        "system:serviceaccount:shop:a..b",
        "system:serviceaccount:shop:%2e%2e",
        "system:serviceaccount:a-namespace-name-longer-than-sixty-three-characters-is-not-a-label:web",
        "",
    ] {
        let mut status = base.clone();
        status.user.as_mut().unwrap().username = Some(username.into());
        let err = interpret(Some(&status), "ward", true, &td()).unwrap_err();
        assert_eq!(err.reason(), "not_a_service_account", "{username:?}: {err}");
    }
    // Dots are allowed in ServiceAccount names (a DNS subdomain).
    let mut status = base;
    status.user.as_mut().unwrap().username = Some("system:serviceaccount:shop:web.v2".into());
    let auth = interpret(Some(&status), "ward", true, &td()).unwrap();
    assert_eq!(
        auth.identity.as_str(),
        "spiffe://cluster.local/ns/shop/sa/web.v2"
    );
}

#[test]
fn a_missing_status_is_an_api_failure_not_a_refusal() {
    let err = interpret(None, "ward", true, &td()).unwrap_err();
    assert_eq!(err.reason(), "authenticator_unavailable");
}

#[test]
fn api_server_strings_are_bounded_in_the_audit_id_and_messages() {
    let mut status = recorded(include_str!(
        "../../../tests/data/tokenreview/authenticated.json"
    ));
    let extra = status.user.as_mut().unwrap().extra.as_mut().unwrap();
    extra.insert(
        "authentication.kubernetes.io/pod-name".into(),
        vec!["é".repeat(400)],
    );
    let auth = interpret(Some(&status), "ward", true, &td()).unwrap();
    assert!(
        auth.credential_id.len() <= 256,
        "{}",
        auth.credential_id.len()
    );

    let mut status = recorded(include_str!("../../../tests/data/tokenreview/expired.json"));
    status.error = Some("x".repeat(10_000));
    let err = interpret(Some(&status), "ward", true, &td()).unwrap_err();
    assert!(err.to_string().len() < 400);
}

/// A JWT with these claims (unsigned: the precheck never verifies).
fn jwt(claims: &str) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
        URL_SAFE_NO_PAD.encode(claims)
    )
}

const NOW: i64 = 1_800_000_000;

#[test]
fn only_plausible_tokens_for_our_audience_are_sent_for_review() {
    for claims in [
        r#"{"aud":["ward"],"exp":1800003600}"#,
        r#"{"aud":"ward","exp":1800003600,"sub":"system:serviceaccount:shop:web"}"#,
        r#"{"aud":["https://kubernetes.default.svc","ward"],"exp":1800000000}"#,
        // Within the clock skew.
        r#"{"aud":["ward"],"exp":1799999950}"#,
    ] {
        assert_eq!(precheck(&jwt(claims), "ward", NOW), Ok(()), "{claims}");
    }
    for (token, reason) in [
        (String::new(), "malformed_token"),
        ("not-a-jwt".into(), "malformed_token"),
        ("a.b".into(), "malformed_token"),
        ("a.b.c.d".into(), "malformed_token"),
        ("a..c".into(), "malformed_token"),
        ("a.b.c d".into(), "malformed_token"),
        ("a.b.c=".into(), "malformed_token"),
        (format!("{}.b.c", "a".repeat(9000)), "malformed_token"),
        (jwt("not json"), "malformed_token"),
        (jwt(r#"{"aud":["ward"]}"#), "malformed_token"),
        (jwt(r#"{"exp":1800003600}"#), "malformed_token"),
        (
            jwt(r#"{"aud":["https://kubernetes.default.svc"],"exp":1800003600}"#),
            "wrong_audience",
        ),
        (
            jwt(r#"{"aud":"warden","exp":1800003600}"#),
            "wrong_audience",
        ),
        (jwt(r#"{"aud":["ward"],"exp":1799999000}"#), "token_expired"),
    ] {
        let err = precheck(&token, "ward", NOW).unwrap_err();
        assert_eq!(err.reason(), reason, "{token:?}: {err}");
    }
}
