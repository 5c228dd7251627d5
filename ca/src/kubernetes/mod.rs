//! Kubernetes ServiceAccount tokens as CA credentials: the Kubernetes API
//! (TokenReview, asked through `kube`) says whose token it is and for which
//! audience; [`review::interpret`] turns the answer into the one SPIFFE ID
//! `spiffe://<td>/ns/<namespace>/sa/<name>` or a refusal. Design and the
//! table of answers: docs/ca.md, "Kubernetes ServiceAccount tokens".
//!
//! Failure is never an SVID: an API server that cannot be asked (down, slow,
//! our own RBAC missing, an unreadable answer) gives
//! [`AuthError::Unavailable`], which the CA answers with 503 and
//! `Retry-After`, and the proxy retries.

pub mod limit;
pub mod review;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use prometheus::{Histogram, IntCounterVec};
use tokio::sync::Semaphore;
use ward_config::TrustDomain;

use crate::auth::{AuthError, AuthFuture, Authenticated, Authenticator};
use crate::metrics::CaMetrics;
use limit::{PerClient, Rate};

/// How a review is bounded.
#[derive(Debug, Clone)]
pub struct ReviewSettings {
    /// The audience the projected token must have been minted for.
    pub audience: String,
    /// For the API call.
    pub timeout: Duration,
    /// Reviews in flight at once; a request beyond them is answered 503 at
    /// once.
    pub max_in_flight: usize,
    /// Reviews one client IP may cause.
    pub per_client: Rate,
    /// Accept only tokens bound to a pod (Kubernetes 1.30+ reports it).
    pub require_pod: bool,
}

impl ReviewSettings {
    pub fn new(audience: impl Into<String>) -> Self {
        Self {
            audience: audience.into(),
            timeout: Duration::from_secs(5),
            max_in_flight: 32,
            per_client: Rate {
                burst: 10,
                per_minute: 30,
            },
            require_pod: true,
        }
    }
}

/// The `result` label of `ward_ca_token_reviews_total`.
const RESULTS: [&str; 6] = [
    "authenticated",
    "unauthenticated",
    "wrong_audience",
    "not_a_service_account",
    "not_bound_to_a_pod",
    "error",
];

/// Checks ServiceAccount tokens with the TokenReview API.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    settings: ReviewSettings,
    trust_domain: TrustDomain,
    slots: Semaphore,
    per_client: PerClient,
    reviews: IntCounterVec,
    seconds: Histogram,
}

impl TokenReviewer {
    pub fn new(
        client: kube::Client,
        settings: ReviewSettings,
        trust_domain: TrustDomain,
        metrics: &CaMetrics,
    ) -> Self {
        // Every result exists from the start, so dashboards see zeros, not gaps.
        for result in RESULTS {
            metrics.token_reviews.with_label_values(&[result]);
        }
        Self {
            api: Api::all(client),
            slots: Semaphore::new(settings.max_in_flight),
            per_client: PerClient::new(settings.per_client),
            settings,
            trust_domain,
            reviews: metrics.token_reviews.clone(),
            seconds: metrics.token_review_seconds.clone(),
        }
    }

    /// Reviews `token` for `client`: the local precheck first (no API call
    /// for what the API would refuse anyway), the client's allowance, then
    /// the API, then [`review::interpret`].
    pub async fn review(&self, token: &str, client: IpAddr) -> Result<Authenticated, AuthError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        review::precheck(token, &self.settings.audience, now)?;
        if !self.per_client.allow(client, Instant::now()) {
            return Err(AuthError::RateLimited);
        }
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.settings.timeout, self.ask(token)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(AuthError::Unavailable(format!(
                "the Kubernetes API did not answer the TokenReview within {:?}",
                self.settings.timeout
            ))),
        };
        self.seconds.observe(started.elapsed().as_secs_f64());
        self.reviews
            .with_label_values(&[result_label(&outcome)])
            .inc();
        if let Err(AuthError::Unavailable(why)) = &outcome {
            tracing::error!(reason = %why, "cannot review a ServiceAccount token");
        }
        outcome
    }

    async fn ask(&self, token: &str) -> Result<Authenticated, AuthError> {
        // Shed load instead of queueing: a slow API server is not made
        // slower, and the proxy retries after `Retry-After`.
        let _slot = self.slots.try_acquire().map_err(|_| {
            AuthError::Unavailable(format!(
                "{} TokenReviews are already in flight",
                self.settings.max_in_flight
            ))
        })?;
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.settings.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &request)
            .await
            .map_err(api_failure)?;
        review::interpret(
            answer.status.as_ref(),
            &self.settings.audience,
            self.settings.require_pod,
            &self.trust_domain,
        )
    }
}

impl Authenticator for TokenReviewer {
    fn authenticate<'a>(&'a self, bearer: &'a str, client: IpAddr) -> AuthFuture<'a> {
        Box::pin(self.review(bearer, client))
    }
}

/// Says what went wrong in words an operator can act on; the CA's own
/// missing permission is the one a fresh install hits.
fn api_failure(e: kube::Error) -> AuthError {
    let why = match &e {
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => format!(
            "the Kubernetes API refused the CA's own credentials ({}): the CA's ServiceAccount \
             needs `create` on tokenreviews.authentication.k8s.io (deploy/base grants it)",
            status.message
        ),
        kube::Error::Api(status) => format!(
            "the Kubernetes API answered {} {}: {}",
            status.code, status.reason, status.message
        ),
        other => format!("cannot reach the Kubernetes API: {other}"),
    };
    AuthError::Unavailable(why)
}

fn result_label(outcome: &Result<Authenticated, AuthError>) -> &'static str {
    match outcome {
        Ok(_) => "authenticated",
        Err(AuthError::Unauthenticated(_)) => "unauthenticated",
        Err(AuthError::WrongAudience { .. }) => "wrong_audience",
        Err(AuthError::NotServiceAccount(_) | AuthError::InvalidIdentity(_)) => {
            "not_a_service_account"
        }
        Err(AuthError::NotPodBound) => "not_bound_to_a_pod",
        Err(_) => "error",
    }
}
