//! Who may ask for which identity. A bearer credential goes in, an
//! authenticated SPIFFE ID comes out; the CA then issues that ID and nothing
//! else. Join tokens implement this now; the Kubernetes ServiceAccount-token
//! authenticator (TokenReview) will sit behind the same trait.

use std::future::Future;
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
}

impl AuthError {
    /// Bounded label for `ward_ca_svid_denials_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Malformed(_) => "malformed_token",
            AuthError::BadSignature => "bad_token_signature",
            AuthError::Expired(_) => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::WrongTrustDomain(_) => "wrong_trust_domain",
            AuthError::InvalidIdentity(_) => "invalid_token_identity",
        }
    }
}

pub type AuthFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Authenticated, AuthError>> + Send + 'a>>;

/// Turns a bearer credential into the identity its holder may receive.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, bearer: &'a str) -> AuthFuture<'a>;
}
