//! What a TokenReview answer means for the CA, with no I/O: the SPIFFE ID of
//! an authenticated ServiceAccount, or the reason there is none. Everything
//! the API server reports is treated as data to check, not to trust blindly:
//! the audience must be ours and the names must be valid Kubernetes names
//! before they go into a SPIFFE ID.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
use ward_config::{SpiffeId, TrustDomain};

use crate::auth::{AuthError, Authenticated};

/// Longest bearer token sent for review. Projected tokens are ~1 KiB;
/// anything far larger is not one and is refused without an API call.
pub const MAX_TOKEN_LEN: usize = 8192;
const SA_PREFIX: &str = "system:serviceaccount:";
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";
/// Longest audit `token_id` built from API-server strings.
const MAX_CREDENTIAL_ID: usize = 256;

/// Tolerated clock difference when reading a token's `exp` locally.
const CLOCK_SKEW_SECS: i64 = 60;

/// Refuses, before any API call, what the API server would refuse anyway:
/// not a JWT (three base64url segments), claims that are not JSON, an `aud`
/// without ours, an `exp` in the past. Nothing here is trusted: the
/// signature is unchecked, so passing proves nothing; it only keeps junk
/// from costing a TokenReview.
pub fn precheck(token: &str, audience: &str, now_unix: i64) -> Result<(), AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed("longer than 8192 bytes"));
    }
    let segments: Vec<&str> = token.split('.').collect();
    let base64url = |s: &&str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if segments.len() != 3 || !segments.iter().all(base64url) {
        return Err(AuthError::Malformed(
            "not a ServiceAccount token (expected a JWT: three base64url segments)",
        ));
    }
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(segments[1])
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or(AuthError::Malformed(
            "not a ServiceAccount token (its claims are not a JSON object with aud and exp)",
        ))?;
    let audiences = match claims.aud {
        Audience::One(a) => vec![a],
        Audience::Many(a) => a,
    };
    if !audiences.iter().any(|a| a == audience) {
        return Err(AuthError::WrongAudience {
            expected: audience.to_string(),
            got: audiences
                .into_iter()
                .map(|a| truncate(&a, 100))
                .take(8)
                .collect(),
        });
    }
    if claims.exp < now_unix - CLOCK_SKEW_SECS {
        let at = time::OffsetDateTime::from_unix_timestamp(claims.exp)
            .map_or_else(|_| claims.exp.to_string(), |t| t.to_string());
        return Err(AuthError::Expired(at));
    }
    Ok(())
}

/// The two claims read before asking (unverified).
#[derive(serde::Deserialize)]
struct Claims {
    aud: Audience,
    exp: i64,
}

/// RFC 7519: `aud` is one string or an array of them.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Interprets a TokenReview `status` for a review that asked for `audience`.
/// With `require_pod`, only tokens bound to a pod (the API server names it,
/// Kubernetes 1.30+) are accepted: a token from `kubectl create token` does
/// not buy an SVID.
pub fn interpret(
    status: Option<&TokenReviewStatus>,
    audience: &str,
    require_pod: bool,
    trust_domain: &TrustDomain,
) -> Result<Authenticated, AuthError> {
    let Some(status) = status else {
        return Err(AuthError::Unavailable(
            "the Kubernetes API answered without a TokenReview status".into(),
        ));
    };
    if status.authenticated != Some(true) {
        let error = status
            .error
            .as_deref()
            .filter(|e| !e.is_empty())
            .unwrap_or("no reason given");
        return Err(AuthError::Unauthenticated(truncate(error, 300)));
    }
    // Empty or absent means "valid for the API server itself" (see the
    // TokenReviewStatus docs): such a token must never buy an SVID.
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(AuthError::WrongAudience {
            expected: audience.to_string(),
            got: audiences,
        });
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.as_deref()).unwrap_or("");
    let (namespace, name) = service_account(username)
        .ok_or_else(|| AuthError::NotServiceAccount(truncate(username, 300)))?;
    if require_pod && extra(user, EXTRA_POD_NAME).is_none() {
        return Err(AuthError::NotPodBound);
    }
    let identity = SpiffeId::parse(&format!(
        "spiffe://{}/ns/{namespace}/sa/{name}",
        trust_domain.as_str()
    ))
    .map_err(|e| AuthError::InvalidIdentity(e.to_string()))?;
    Ok(Authenticated {
        identity,
        credential_id: credential_id(namespace, user),
    })
}

/// `system:serviceaccount:<namespace>:<name>` with names Kubernetes itself
/// would accept (a DNS label and a DNS subdomain).
fn service_account(username: &str) -> Option<(&str, &str)> {
    let (namespace, name) = username.strip_prefix(SA_PREFIX)?.split_once(':')?;
    (is_dns_label(namespace) && is_dns_subdomain(name)).then_some((namespace, name))
}

/// RFC 1123 label: 1-63 of `[a-z0-9-]`, alphanumeric at both ends.
fn is_dns_label(s: &str) -> bool {
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    s.len() <= 63
        && alnum(s.as_bytes().first())
        && alnum(s.as_bytes().last())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// RFC 1123 subdomain: at most 253 characters of dot-separated labels.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The audit log's handle on the credential: the pod and the token's id when
/// the API server reports them (Kubernetes 1.30+), else the account's uid.
fn credential_id(namespace: &str, user: Option<&UserInfo>) -> String {
    let id = match (
        extra(user, EXTRA_POD_NAME),
        extra(user, EXTRA_CREDENTIAL_ID),
    ) {
        (Some(pod), Some(cred)) => format!("k8s:pod={namespace}/{pod},{cred}"),
        (Some(pod), None) => format!("k8s:pod={namespace}/{pod}"),
        _ => format!(
            "k8s:uid={}",
            user.and_then(|u| u.uid.as_deref()).unwrap_or("unknown")
        ),
    };
    truncate(&id, MAX_CREDENTIAL_ID)
}

/// The first value of the user's `extra[key]`.
fn extra<'a>(user: Option<&'a UserInfo>, key: &str) -> Option<&'a str> {
    user.and_then(|u| u.extra.as_ref())
        .and_then(|e| e.get(key))
        .and_then(|v| v.first())
        .map(String::as_str)
}

/// At most `max` bytes, cut on a character boundary.
fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests;
