//! Who may ask for which identity. A bearer credential goes in, an
//! authenticated SPIFFE ID comes out; the CA then issues that ID and nothing
//! else. Two implementations: join tokens (`token`) and Kubernetes
//! ServiceAccount tokens (`kubernetes`); [`ByForm`] lets one CA take both.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use ward_config::SpiffeId;

/// The outcome of a successful authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The only identity this caller may receive.
    pub identity: SpiffeId,
    /// A stable id of the credential, for the audit log (never the secret).
    pub credential_id: String,
}

/// Why a credential was refused. Each variant has a metric label.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's signature does not verify: it was not issued by this CA")]
    BadSignature,
    #[error("the token expired at {0}: create a new one with `ward ca token`")]
    Expired(String),
    #[error("the token is not valid yet (issued in the future: check the clocks)")]
    NotYetValid,
    #[error("the token is for trust domain {0:?}, not this CA's")]
    WrongTrustDomain(String),
    #[error("the token names an invalid identity: {0}")]
    InvalidIdentity(String),
    #[error("the Kubernetes API did not authenticate the token: {0}")]
    Unauthenticated(String),
    #[error(
        "the token is not for audience {expected:?} ({}): mount a projected ServiceAccount token with audience {expected:?}",
        audiences(.got)
    )]
    WrongAudience { expected: String, got: Vec<String> },
    #[error("the token belongs to {0:?}, not to a ServiceAccount")]
    NotServiceAccount(String),
    #[error(
        "the token is not bound to a pod (e.g. made by `kubectl create token`): this CA takes pods' projected tokens only"
    )]
    NotPodBound,
    #[error("too many token reviews from this client; retry later")]
    RateLimited,
    #[error("{0} are not accepted by this CA (see --authenticator)")]
    Disabled(&'static str),
    #[error("the token cannot be checked right now, retry later: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// Bounded label for `ward_ca_svid_requests_denied_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Malformed(_) => "malformed_token",
            AuthError::BadSignature => "bad_token_signature",
            AuthError::Expired(_) => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::WrongTrustDomain(_) => "wrong_trust_domain",
            AuthError::InvalidIdentity(_) => "invalid_token_identity",
            AuthError::Unauthenticated(_) => "token_unauthenticated",
            AuthError::WrongAudience { .. } => "wrong_audience",
            AuthError::NotServiceAccount(_) => "not_a_service_account",
            AuthError::NotPodBound => "token_not_bound_to_pod",
            AuthError::RateLimited => "token_review_rate_limited",
            AuthError::Disabled(_) => "authenticator_disabled",
            AuthError::Unavailable(_) => "authenticator_unavailable",
        }
    }
}

/// The audiences a token was found valid for, in words.
fn audiences(got: &[String]) -> String {
    if got.is_empty() {
        "it is for the Kubernetes API itself".to_string()
    } else {
        format!("it is valid for {got:?}")
    }
}

pub type AuthFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Authenticated, AuthError>> + Send + 'a>>;

/// Turns a bearer credential into the identity its holder may receive.
/// `client` is the caller's address, for per-client limits.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, bearer: &'a str, client: IpAddr) -> AuthFuture<'a>;
}

/// Picks the checker by the credential's form: `ward1.` is a join token,
/// anything else a Kubernetes ServiceAccount token. A kind left `None` is
/// refused, so a CA deployed for pods alone takes no join tokens.
pub struct ByForm {
    pub join_tokens: Option<Box<dyn Authenticator>>,
    pub kubernetes: Option<Box<dyn Authenticator>>,
}

impl Authenticator for ByForm {
    fn authenticate<'a>(&'a self, bearer: &'a str, client: IpAddr) -> AuthFuture<'a> {
        let (checker, kind) = if bearer.starts_with(crate::token::PREFIX_DOT) {
            (&self.join_tokens, "join tokens")
        } else {
            (&self.kubernetes, "Kubernetes ServiceAccount tokens")
        };
        match checker {
            Some(checker) => checker.authenticate(bearer, client),
            None => Box::pin(async move { Err(AuthError::Disabled(kind)) }),
        }
    }
}
