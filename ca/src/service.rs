//! The issuance decision, independent of HTTP: authenticate the bearer
//! credential, check the CSR, bind the requested ID to the authenticated one,
//! sign, audit, count. Every refusal is a [`Denial`] with a bounded metric
//! label, an HTTP status, and a message that tells the caller what to fix.
//!
//! Order matters: the credential is checked before the CSR is parsed, so an
//! unauthenticated caller cannot make the CA do more than one signature check.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use time::OffsetDateTime;
use ward_config::SpiffeId;

use crate::audit::{AuditLog, AuditRecord};
use crate::auth::{AuthError, Authenticator};
use crate::authority::{Authority, IssueError, Issued};
use crate::csr::{self, CsrError};
use crate::metrics::CaMetrics;

/// Why a request for an SVID was refused.
#[derive(Debug, thiserror::Error)]
pub enum DenyReason {
    #[error("missing Authorization header: send \"Authorization: Bearer <token>\"")]
    MissingAuthorization,
    #[error("malformed Authorization header: expected \"Bearer <token>\"")]
    MalformedAuthorization,
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Csr(#[from] CsrError),
    #[error("the CSR asks for {requested}, which is outside this CA's trust domain {expected}")]
    CsrTrustDomain {
        requested: SpiffeId,
        expected: String,
    },
    #[error("the token authorizes {authorized} but the CSR asks for {requested}")]
    IdentityMismatch {
        authorized: SpiffeId,
        requested: SpiffeId,
    },
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("the request was not received in time")]
    Timeout,
    #[error("the CA cannot issue right now: {0}")]
    Unavailable(String),
}

/// Every value [`DenyReason::label`] can take: the metric exports each at 0
/// from the start, so `increase()` sees the first refusal of a kind.
pub const DENY_LABELS: [&str; 26] = [
    "missing_authorization",
    "malformed_authorization",
    "malformed_token",
    "bad_token_signature",
    "token_expired",
    "token_not_yet_valid",
    "wrong_trust_domain",
    "invalid_token_identity",
    "token_unauthenticated",
    "wrong_audience",
    "not_a_service_account",
    "authenticator_disabled",
    "authenticator_unavailable",
    "token_not_bound_to_pod",
    "token_review_rate_limited",
    "malformed_csr",
    "bad_csr_signature",
    "unsupported_algorithm",
    "weak_key",
    "uri_san_count",
    "invalid_spiffe_id",
    "csr_wrong_trust_domain",
    "identity_mismatch",
    "body_too_large",
    "request_timeout",
    "unavailable",
];

impl DenyReason {
    /// Bounded label for `ward_ca_svid_requests_denied_total{reason}`.
    pub fn label(&self) -> &'static str {
        match self {
            DenyReason::MissingAuthorization => "missing_authorization",
            DenyReason::MalformedAuthorization => "malformed_authorization",
            DenyReason::Auth(e) => e.reason(),
            DenyReason::Csr(CsrError::NotPem | CsrError::Malformed(_)) => "malformed_csr",
            DenyReason::Csr(CsrError::BadSignature) => "bad_csr_signature",
            DenyReason::Csr(CsrError::UnsupportedAlgorithm(_)) => "unsupported_algorithm",
            DenyReason::Csr(CsrError::WeakKey(_)) => "weak_key",
            DenyReason::Csr(CsrError::NoSpiffeId | CsrError::ManyUris(_)) => "uri_san_count",
            DenyReason::Csr(CsrError::InvalidId(_)) => "invalid_spiffe_id",
            DenyReason::CsrTrustDomain { .. } => "csr_wrong_trust_domain",
            DenyReason::IdentityMismatch { .. } => "identity_mismatch",
            DenyReason::BodyTooLarge(_) => "body_too_large",
            DenyReason::Timeout => "request_timeout",
            DenyReason::Unavailable(_) => "unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            DenyReason::Auth(AuthError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            DenyReason::Auth(AuthError::RateLimited) => StatusCode::TOO_MANY_REQUESTS,
            DenyReason::MissingAuthorization
            | DenyReason::MalformedAuthorization
            | DenyReason::Auth(_) => StatusCode::UNAUTHORIZED,
            DenyReason::IdentityMismatch { .. } => StatusCode::FORBIDDEN,
            DenyReason::Csr(_) | DenyReason::CsrTrustDomain { .. } => StatusCode::BAD_REQUEST,
            DenyReason::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            DenyReason::Timeout => StatusCode::REQUEST_TIMEOUT,
            DenyReason::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A refusal plus what was known about the caller, for the audit log.
#[derive(Debug)]
pub struct Denial {
    pub reason: DenyReason,
    pub identity: Option<SpiffeId>,
    pub token_id: Option<String>,
}

impl Denial {
    /// The identity the CSR asked for, when that is why it was refused.
    fn requested(&self) -> Option<&SpiffeId> {
        match &self.reason {
            DenyReason::CsrTrustDomain { requested, .. }
            | DenyReason::IdentityMismatch { requested, .. } => Some(requested),
            _ => None,
        }
    }
}

impl<E: Into<DenyReason>> From<E> for Denial {
    fn from(e: E) -> Self {
        Denial {
            reason: e.into(),
            identity: None,
            token_id: None,
        }
    }
}

/// Everything an issuance needs, shared by all connections.
pub struct SvidService {
    pub authority: Arc<Authority>,
    pub authenticator: Arc<dyn Authenticator>,
    pub audit: AuditLog,
    pub metrics: CaMetrics,
    pub svid_ttl: Duration,
}

impl SvidService {
    /// Decides one request: `authorization` is the raw header value, `csr_pem`
    /// the request body. Records the outcome either way.
    pub async fn issue(
        &self,
        authorization: Option<&[u8]>,
        csr_pem: &[u8],
        client: SocketAddr,
    ) -> Result<Issued, Denial> {
        let started = Instant::now();
        let result = self.decide(authorization, csr_pem, client).await;
        match result {
            Ok((issued, identity, token_id)) => {
                let record = AuditRecord {
                    time: OffsetDateTime::now_utc(),
                    result: "issued",
                    reason: None,
                    identity: Some(identity.as_str()),
                    requested: None,
                    serial: Some(&issued.serial),
                    not_after: Some(issued.not_after),
                    token_id: Some(&token_id),
                    client,
                };
                if let Err(e) = self.audit.record(&record) {
                    // Fail closed: a certificate nobody can account for is not released.
                    self.metrics.audit_errors.inc();
                    tracing::error!(error = %e, "audit log write failed; refusing to release certificate");
                    let denial = Denial {
                        reason: DenyReason::Unavailable("the audit log cannot be written".into()),
                        identity: Some(identity),
                        token_id: Some(token_id),
                    };
                    self.metrics
                        .denied
                        .with_label_values(&[denial.reason.label()])
                        .inc();
                    return Err(denial);
                }
                self.metrics.issued.inc();
                self.metrics
                    .issuance_seconds
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(identity = %identity, serial = %issued.serial, %client, "issued SVID");
                Ok(issued)
            }
            Err(denial) => {
                self.reject(&denial, client);
                Err(denial)
            }
        }
    }

    /// Counts, logs and audits a refusal (also those decided by the HTTP
    /// layer, such as oversized bodies and slow clients).
    pub fn reject(&self, denial: &Denial, client: SocketAddr) {
        let label = denial.reason.label();
        self.metrics.denied.with_label_values(&[label]).inc();
        tracing::warn!(reason = label, %client, identity = ?denial.identity.as_ref().map(|i| i.as_str()), "SVID request denied: {}", denial.reason);
        let record = AuditRecord {
            time: OffsetDateTime::now_utc(),
            result: "denied",
            reason: Some(label),
            identity: denial.identity.as_ref().map(|i| i.as_str()),
            requested: denial.requested().map(|i| i.as_str()),
            serial: None,
            not_after: None,
            token_id: denial.token_id.as_deref(),
            client,
        };
        if let Err(e) = self.audit.record(&record) {
            self.metrics.audit_errors.inc();
            tracing::error!(error = %e, "audit log write failed");
        }
    }

    async fn decide(
        &self,
        authorization: Option<&[u8]>,
        csr_pem: &[u8],
        client: SocketAddr,
    ) -> Result<(Issued, SpiffeId, String), Denial> {
        let bearer = bearer_token(authorization)?;
        let auth = self.authenticator.authenticate(bearer, client.ip()).await?;
        let with_caller = |reason: DenyReason| Denial {
            reason,
            identity: Some(auth.identity.clone()),
            token_id: Some(auth.credential_id.clone()),
        };
        let csr = csr::check_pem(csr_pem).map_err(|e| with_caller(e.into()))?;
        let td = self.authority.trust_domain();
        if csr.requested.trust_domain_name() != td.as_str() {
            return Err(with_caller(DenyReason::CsrTrustDomain {
                requested: csr.requested,
                expected: td.to_string(),
            }));
        }
        if csr.requested != auth.identity {
            return Err(with_caller(DenyReason::IdentityMismatch {
                authorized: auth.identity.clone(),
                requested: csr.requested,
            }));
        }
        let issued = self
            .authority
            .issue_svid(
                &csr.public_key,
                &auth.identity,
                self.svid_ttl,
                OffsetDateTime::now_utc(),
            )
            .map_err(|e: IssueError| with_caller(DenyReason::Unavailable(e.to_string())))?;
        Ok((issued, auth.identity, auth.credential_id))
    }
}

/// Extracts `<token>` from `Bearer <token>` (scheme case-insensitive).
fn bearer_token(header: Option<&[u8]>) -> Result<&str, DenyReason> {
    let header = header.ok_or(DenyReason::MissingAuthorization)?;
    let text = std::str::from_utf8(header).map_err(|_| DenyReason::MalformedAuthorization)?;
    let (scheme, token) = text
        .split_once(' ')
        .ok_or(DenyReason::MalformedAuthorization)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(DenyReason::MalformedAuthorization);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each variant (and of each auth/CSR refusal): their labels are
    /// exactly [`DENY_LABELS`], so the metric's zeros cover every reason.
    #[test]
    fn deny_labels_list_every_reason_once() {
        let id = SpiffeId::parse("spiffe://td/x").unwrap();
        let auth = [
            AuthError::Malformed("x"),
            AuthError::BadSignature,
            AuthError::Expired(String::new()),
            AuthError::NotYetValid,
            AuthError::WrongTrustDomain(String::new()),
            AuthError::InvalidIdentity(String::new()),
            AuthError::Unauthenticated(String::new()),
            AuthError::WrongAudience {
                expected: String::new(),
                got: vec![],
            },
            AuthError::NotServiceAccount(String::new()),
            AuthError::Disabled("x"),
            AuthError::Unavailable(String::new()),
            AuthError::NotPodBound,
            AuthError::RateLimited,
        ];
        let csr = [
            CsrError::NotPem,
            CsrError::BadSignature,
            CsrError::UnsupportedAlgorithm(String::new()),
            CsrError::WeakKey(String::new()),
            CsrError::NoSpiffeId,
            CsrError::InvalidId(SpiffeId::parse("bad").unwrap_err()),
        ];
        let mut reasons: Vec<DenyReason> = vec![
            DenyReason::MissingAuthorization,
            DenyReason::MalformedAuthorization,
            DenyReason::CsrTrustDomain {
                requested: id.clone(),
                expected: String::new(),
            },
            DenyReason::IdentityMismatch {
                authorized: id.clone(),
                requested: id,
            },
            DenyReason::BodyTooLarge(1),
            DenyReason::Timeout,
            DenyReason::Unavailable(String::new()),
        ];
        reasons.extend(auth.into_iter().map(DenyReason::Auth));
        reasons.extend(csr.into_iter().map(DenyReason::Csr));
        let mut labels: Vec<&str> = reasons.iter().map(DenyReason::label).collect();
        labels.sort_unstable();
        let mut listed = DENY_LABELS.to_vec();
        listed.sort_unstable();
        listed.dedup();
        assert_eq!(labels, listed);
    }
}
