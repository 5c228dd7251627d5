//! Join tokens: short-lived bearer credentials, signed by the CA's
//! intermediate key and bound to exactly one SPIFFE ID.
//!
//! Format: `ward1.<base64url(claims JSON)>.<base64url(ECDSA P-256 signature)>`.
//! The signature covers `ward-join-token-v1\0` followed by the encoded claims;
//! the prefix separates tokens from anything else the key signs (a DER
//! certificate body always starts with 0x30, never with 'w'). Every CA replica
//! holding the intermediate verifies every replica's tokens, with no shared
//! state. A token may be used until it expires (a proxy renews with it), so
//! keep TTLs short and mint one per workload.

use std::net::IpAddr;
use std::time::Duration;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use ward_config::{SpiffeId, TrustDomain};

use crate::auth::{AuthError, AuthFuture, Authenticated, Authenticator};
use crate::authority::{Authority, hex};

const PREFIX: &str = "ward1";
/// How every join token starts, telling it apart from other bearer credentials.
pub const PREFIX_DOT: &str = "ward1.";
const SIGNING_CONTEXT: &[u8] = b"ward-join-token-v1\0";
/// Longer inputs are refused before any parsing or crypto.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Tolerated clock difference for `iat` in the future.
const MAX_CLOCK_SKEW_SECS: i64 = 300;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The SPIFFE ID the holder may receive.
    pub sub: String,
    /// The trust domain that issued it.
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
    /// Random token id, logged instead of the token.
    pub jti: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("{0} is not in this CA's trust domain {1}")]
    ForeignIdentity(String, String),
    #[error("{0}")]
    Identity(#[from] ward_config::SpiffeIdError),
    #[error("the TTL must be between 1 second and 365 days")]
    BadTtl,
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// Mints a token for `identity`, valid for `ttl` from `now`.
pub fn mint(
    authority: &Authority,
    identity: &SpiffeId,
    ttl: Duration,
    now: OffsetDateTime,
) -> Result<(String, Claims), MintError> {
    let td = authority.trust_domain();
    if identity.trust_domain_name() != td.as_str() {
        return Err(MintError::ForeignIdentity(
            identity.to_string(),
            td.to_string(),
        ));
    }
    identity.workload()?;
    if ttl.is_zero() || ttl > Duration::from_secs(365 * 86_400) {
        return Err(MintError::BadTtl);
    }
    let mut jti = [0u8; 16];
    aws_lc_rs::rand::fill(&mut jti).map_err(|_| MintError::Sign("no randomness".into()))?;
    let iat = now.unix_timestamp();
    let claims = Claims {
        sub: identity.to_string(),
        iss: td.to_string(),
        iat,
        exp: iat + ttl.as_secs() as i64,
        jti: hex(&jti),
    };
    let json = serde_json::to_vec(&claims).map_err(|e| MintError::Sign(e.to_string()))?;
    let payload = URL_SAFE_NO_PAD.encode(json);
    let signature = authority
        .sign(&signed_message(&payload))
        .map_err(|e| MintError::Sign(e.to_string()))?;
    let token = format!("{PREFIX}.{payload}.{}", URL_SAFE_NO_PAD.encode(signature));
    Ok((token, claims))
}

fn signed_message(payload: &str) -> Vec<u8> {
    [SIGNING_CONTEXT, payload.as_bytes()].concat()
}

/// Verifies join tokens against the intermediate's public key.
pub struct JoinTokens {
    trust_domain: TrustDomain,
    public_key: UnparsedPublicKey<Vec<u8>>,
}

impl JoinTokens {
    pub fn new(authority: &Authority) -> Self {
        Self {
            trust_domain: authority.trust_domain().clone(),
            public_key: UnparsedPublicKey::new(
                &ECDSA_P256_SHA256_ASN1,
                authority.signing_key().public_key_raw().to_vec(),
            ),
        }
    }

    /// Checks signature first (nothing unauthenticated is parsed further),
    /// then issuer, validity window and identity.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<Authenticated, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("longer than 4096 bytes"));
        }
        let mut parts = token.split('.');
        let (Some(PREFIX), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed("expected ward1.<claims>.<signature>"));
        };
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| AuthError::Malformed("signature is not base64url"))?;
        self.public_key
            .verify(&signed_message(payload), &sig)
            .map_err(|_| AuthError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| AuthError::Malformed("claims are not base64url"))?;
        let claims: Claims = serde_json::from_slice(&json)
            .map_err(|_| AuthError::Malformed("claims are not valid JSON"))?;
        if claims.iss != self.trust_domain.as_str() {
            return Err(AuthError::WrongTrustDomain(claims.iss));
        }
        let now = now.unix_timestamp();
        if now >= claims.exp {
            let at = OffsetDateTime::from_unix_timestamp(claims.exp)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| claims.exp.to_string());
            return Err(AuthError::Expired(at));
        }
        if claims.iat > now + MAX_CLOCK_SKEW_SECS {
            return Err(AuthError::NotYetValid);
        }
        let identity =
            SpiffeId::parse(&claims.sub).map_err(|e| AuthError::InvalidIdentity(e.to_string()))?;
        identity
            .require_trust_domain(&self.trust_domain)
            .map_err(|e| AuthError::InvalidIdentity(e.to_string()))?;
        Ok(Authenticated {
            identity,
            credential_id: claims.jti,
        })
    }
}

impl Authenticator for JoinTokens {
    fn authenticate<'a>(&'a self, bearer: &'a str, _client: IpAddr) -> AuthFuture<'a> {
        Box::pin(async move { self.verify(bearer, OffsetDateTime::now_utc()) })
    }
}

#[cfg(test)]
mod tests;
