//! The CA with the Kubernetes authenticator, end to end over real HTTPS:
//! a proxy's request carries a ServiceAccount token, the CA asks a
//! TokenReview endpoint (a local stand-in answering with recorded API-server
//! responses) and issues exactly `spiffe://<td>/ns/<ns>/sa/<sa>`, or refuses
//! without a certificate.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use ward_ca::auth::{Authenticator, ByForm};
use ward_ca::authority::Authority;
use ward_ca::kubernetes::limit::Rate;
use ward_ca::kubernetes::{ReviewSettings, TokenReviewer};
use ward_ca::metrics::CaMetrics;
use ward_ca::token::JoinTokens;

use support::kube_api::{Answer, CA_OWN_TOKEN, FakeKubeApi, TOKENREVIEWS, jwt, jwt_with};
use support::*;

const WEB: &str = "spiffe://test.ward/ns/shop/sa/web";

type MakeAuthenticator = Box<dyn FnOnce(&Authority, &CaMetrics) -> Arc<dyn Authenticator>>;

/// A TokenReviewer asking `api`, built from the CA's authority and metrics.
fn make_reviewer(
    api: &FakeKubeApi,
    settings: ReviewSettings,
) -> impl FnOnce(&Authority, &CaMetrics) -> TokenReviewer + 'static {
    let client = api.client();
    move |authority, metrics| {
        TokenReviewer::new(client, settings, authority.trust_domain().clone(), metrics)
    }
}

fn reviewer_with(api: &FakeKubeApi, settings: ReviewSettings) -> MakeAuthenticator {
    let make = make_reviewer(api, settings);
    Box::new(move |authority, metrics| Arc::new(make(authority, metrics)))
}

/// ServiceAccount tokens through `api`, and join tokens too when `join`.
fn by_form(api: &FakeKubeApi, join: bool) -> MakeAuthenticator {
    let make = make_reviewer(api, ReviewSettings::new("ward"));
    Box::new(move |authority, metrics| {
        Arc::new(ByForm {
            join_tokens: join
                .then(|| Box::new(JoinTokens::new(authority)) as Box<dyn Authenticator>),
            kubernetes: Some(Box::new(make(authority, metrics))),
        })
    })
}

async fn ca_with(api: &FakeKubeApi) -> TestServer {
    let settings = ReviewSettings {
        timeout: Duration::from_secs(2),
        ..ReviewSettings::new("ward")
    };
    TestServer::start_authenticated(short_limits(), None, reviewer_with(api, settings)).await
}

async fn reviews(ca: &TestServer, result: &str) -> f64 {
    ca.metric(&format!(
        "ward_ca_token_reviews_total{{result=\"{result}\"}}"
    ))
    .await
}

#[tokio::test]
async fn an_authenticated_service_account_token_gets_its_svid_and_nothing_else() {
    let api = FakeKubeApi::start().await;
    let ca = ca_with(&api).await;
    let token = jwt("web");
    api.answer(&token, Answer::Recorded(201, "authenticated"));

    let (_key, csr) = csr_for(WEB);
    let resp = ca.post_svid(Some(&bearer(&token)), csr).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let chain = pem_certs(resp.text().as_bytes());
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let uris: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(uris, vec![format!("URI({WEB})")]);

    // What the CA asked: our audience, this token, with its own credential.
    let seen = api.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, TOKENREVIEWS);
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(format!("Bearer {CA_OWN_TOKEN}").as_str())
    );
    assert_eq!(seen[0].body["kind"], "TokenReview");
    assert_eq!(seen[0].body["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(seen[0].body["spec"]["token"], token.as_str());
    assert_eq!(
        seen[0].body["spec"]["audiences"],
        serde_json::json!(["ward"])
    );

    // The audit names the pod and the token's id, never the token.
    let audit = ca.wait_audit(1, STEP).await;
    let line = audit.last().unwrap();
    assert_eq!(line["result"], "issued");
    assert_eq!(line["identity"], WEB);
    assert_eq!(
        line["token_id"],
        "k8s:pod=shop/web-7d9f8c6b5-x2k4q,JTI=0b6f1c52-3e0a-4d57-b2f4-8f1e9c6a7d30"
    );
    assert!(
        !std::fs::read_to_string(&ca.audit_path)
            .unwrap()
            .contains(&token)
    );
    assert_eq!(reviews(&ca, "authenticated").await, 1.0);

    // The same token cannot buy another ServiceAccount's identity.
    let (_key, csr) = csr_for("spiffe://test.ward/ns/shop/sa/admin");
    ca.expect_denied(
        Some(&bearer(&token)),
        csr,
        StatusCode::FORBIDDEN,
        "identity_mismatch",
    )
    .await;
}

#[tokio::test]
async fn refused_tokens_get_401_with_the_reason_and_no_certificate() {
    let api = FakeKubeApi::start().await;
    let ca = ca_with(&api).await;
    for (name, reason, result, words) in [
        (
            "expired",
            "token_unauthenticated",
            "unauthenticated",
            "has expired",
        ),
        (
            "wrong-audience",
            "token_unauthenticated",
            "unauthenticated",
            "target audiences",
        ),
        (
            "audience-unaware",
            "wrong_audience",
            "wrong_audience",
            "for the Kubernetes API itself",
        ),
        (
            "user",
            "not_a_service_account",
            "not_a_service_account",
            "oidc:alice",
        ),
    ] {
        let token = jwt(name);
        api.answer(&token, Answer::Recorded(201, name));
        let before = reviews(&ca, result).await;
        let (_key, csr) = csr_for(WEB);
        let resp = ca
            .expect_denied(Some(&bearer(&token)), csr, StatusCode::UNAUTHORIZED, reason)
            .await;
        assert!(resp.text().contains(words), "{name}: {}", resp.text());
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
        assert_eq!(reviews(&ca, result).await, before + 1.0, "{name}");
    }
}

#[tokio::test]
async fn what_the_api_would_refuse_anyway_is_refused_without_asking_it() {
    let api = FakeKubeApi::start().await;
    let ca = ca_with(&api).await;
    let (_key, csr) = csr_for(WEB);
    for (token, reason) in [
        ("hello".to_string(), "malformed_token"),
        ("a.b".into(), "malformed_token"),
        ("x.".repeat(5000), "malformed_token"),
        (
            jwt_with("api", "https://kubernetes.default.svc", 3600),
            "wrong_audience",
        ),
        (jwt_with("old", "ward", -3600), "token_expired"),
    ] {
        ca.expect_denied(
            Some(&bearer(&token)),
            csr.clone(),
            StatusCode::UNAUTHORIZED,
            reason,
        )
        .await;
    }
    assert!(
        api.seen().is_empty(),
        "no TokenReview for what the API server would refuse anyway"
    );
}

#[tokio::test]
async fn an_api_server_that_cannot_be_asked_gives_503_then_the_retry_succeeds() {
    let api = FakeKubeApi::start().await;
    let ca = ca_with(&api).await;
    let token = jwt("web");
    let (_key, csr) = csr_for(WEB);

    // The CA's own RBAC missing: 403 from the API server.
    api.answer(&token, Answer::Recorded(403, "forbidden"));
    let resp = ca
        .expect_denied(
            Some(&bearer(&token)),
            csr.clone(),
            StatusCode::SERVICE_UNAVAILABLE,
            "authenticator_unavailable",
        )
        .await;
    assert_eq!(resp.header("retry-after"), Some("5"));
    assert!(resp.text().contains("tokenreviews"), "{}", resp.text());

    // The API server down (nothing listening), then back on the same address.
    let stopped = api.stop();
    let resp = ca
        .expect_denied(
            Some(&bearer(&token)),
            csr.clone(),
            StatusCode::SERVICE_UNAVAILABLE,
            "authenticator_unavailable",
        )
        .await;
    assert!(
        resp.text().contains("cannot reach the Kubernetes API"),
        "{}",
        resp.text()
    );
    assert_eq!(reviews(&ca, "error").await, 2.0);

    // Back on the same address, RBAC fixed: the proxy's retry gets its certificate.
    let api = stopped.restart().await;
    api.answer(&token, Answer::Recorded(201, "authenticated"));
    let resp = ca.post_svid(Some(&bearer(&token)), csr).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(api.seen().len(), 1);
}

#[tokio::test]
async fn a_hanging_api_server_is_a_bounded_503() {
    let api = FakeKubeApi::start().await;
    let settings = ReviewSettings {
        timeout: Duration::from_millis(500),
        ..ReviewSettings::new("ward")
    };
    let ca =
        TestServer::start_authenticated(short_limits(), None, reviewer_with(&api, settings)).await;
    let hang = jwt("hang");
    api.answer(&hang, Answer::Hang);
    let (_key, csr) = csr_for(WEB);
    let resp = ca
        .expect_denied(
            Some(&bearer(&hang)),
            csr,
            StatusCode::SERVICE_UNAVAILABLE,
            "authenticator_unavailable",
        )
        .await;
    assert!(resp.text().contains("did not answer"), "{}", resp.text());
    assert_eq!(resp.header("retry-after"), Some("5"));
    api.release();
}

#[tokio::test]
async fn while_every_review_slot_is_busy_new_tokens_are_shed_at_once() {
    let api = FakeKubeApi::start().await;
    let settings = ReviewSettings {
        timeout: Duration::from_secs(60),
        max_in_flight: 1,
        ..ReviewSettings::new("ward")
    };
    let ca =
        TestServer::start_authenticated(short_limits(), None, reviewer_with(&api, settings)).await;
    let hang = jwt("hang");
    api.answer(&hang, Answer::Hang);
    let web = jwt("web");
    api.answer(&web, Answer::Recorded(201, "authenticated"));
    let (_key, csr) = csr_for(WEB);

    // The hanging review holds the only slot until the API is released, so
    // the contender cannot win a race against a timeout.
    let hang_bearer = bearer(&hang);
    let holder = ca.post_svid(Some(&hang_bearer), csr.clone());
    let contender = async {
        wait_until(|| !api.seen().is_empty()).await;
        let resp = ca
            .expect_denied(
                Some(&bearer(&web)),
                csr.clone(),
                StatusCode::SERVICE_UNAVAILABLE,
                "authenticator_unavailable",
            )
            .await;
        assert!(resp.text().contains("already in flight"), "{}", resp.text());
        assert_eq!(
            api.seen().len(),
            1,
            "no second review while the slot is held"
        );
        api.release();
    };
    let (held, ()) = tokio::join!(holder, contender);
    assert_eq!(held.status, StatusCode::UNAUTHORIZED, "{}", held.text());

    // The slot is free again.
    let resp = ca.post_svid(Some(&bearer(&web)), csr).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
}

#[tokio::test]
async fn one_client_cannot_spend_the_cas_share_of_the_api_server() {
    let api = FakeKubeApi::start().await;
    let settings = ReviewSettings {
        per_client: Rate {
            burst: 2,
            per_minute: 1,
        },
        ..ReviewSettings::new("ward")
    };
    let ca =
        TestServer::start_authenticated(short_limits(), None, reviewer_with(&api, settings)).await;
    let (_key, csr) = csr_for(WEB);
    for i in 0..2 {
        // Plausible junk: passes the local precheck, refused by the API.
        let junk = jwt(&format!("junk-{i}"));
        ca.expect_denied(
            Some(&bearer(&junk)),
            csr.clone(),
            StatusCode::UNAUTHORIZED,
            "token_unauthenticated",
        )
        .await;
    }
    let resp = ca
        .expect_denied(
            Some(&bearer(&jwt("junk-2"))),
            csr,
            StatusCode::TOO_MANY_REQUESTS,
            "token_review_rate_limited",
        )
        .await;
    assert_eq!(resp.header("retry-after"), Some("5"));
    assert_eq!(api.seen().len(), 2, "the third never reached the API");
}

#[tokio::test]
async fn one_ca_can_take_both_kinds_of_credential_and_refuses_a_disabled_kind() {
    let api = FakeKubeApi::start().await;
    let sa_token = jwt("web");
    api.answer(&sa_token, Answer::Recorded(201, "authenticated"));
    let (_key, csr) = csr_for(WEB);

    let both = TestServer::start_authenticated(short_limits(), None, by_form(&api, true)).await;
    let (join_token, _) = both.token(WEB);
    for token in [&join_token, &sa_token] {
        let resp = both.post_svid(Some(&bearer(token)), csr.clone()).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    }
    assert_eq!(
        api.seen().len(),
        1,
        "the join token was not sent for review"
    );

    let pods_only =
        TestServer::start_authenticated(short_limits(), None, by_form(&api, false)).await;
    let (join_token, _) = pods_only.token(WEB);
    let resp = pods_only
        .expect_denied(
            Some(&bearer(&join_token)),
            csr,
            StatusCode::UNAUTHORIZED,
            "authenticator_disabled",
        )
        .await;
    assert!(
        resp.text().contains("join tokens are not accepted"),
        "{}",
        resp.text()
    );
    assert_eq!(api.seen().len(), 1, "nothing more was reviewed");
}

/// Polls `done` every 10 ms for at most [`STEP`].
async fn wait_until(done: impl Fn() -> bool) {
    bounded("condition", async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}
