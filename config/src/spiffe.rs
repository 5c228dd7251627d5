//! SPIFFE identities: trust domains and SPIFFE IDs as the SPIFFE-ID standard
//! defines them, plus ward's workload form `spiffe://<td>/ns/<ns>/sa/<sa>`.
//!
//! Parsing is strict on purpose: an identity that two components could read
//! differently (case, dot segments, percent-encoding, empty segments) is an
//! authorization bypass waiting to happen, so it is refused, never normalized.

use std::fmt;
use std::str::FromStr;

/// The SPIFFE-ID standard's upper bound on the whole URI.
const MAX_ID_LEN: usize = 2048;
/// The SPIFFE-ID standard's upper bound on a trust domain name.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why an identity was refused. Messages say what was wrong and what a valid
/// one looks like.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID is empty")]
    Empty,
    #[error("SPIFFE ID {0:?} is longer than {MAX_ID_LEN} bytes")]
    TooLong(String),
    #[error("SPIFFE ID {0:?} must start with \"spiffe://\" (lowercase)")]
    WrongScheme(String),
    #[error(
        "trust domain {0:?} is invalid: use 1-255 lowercase letters, digits, '.', '-' or '_' \
         (no uppercase, port, user info or percent-encoding)"
    )]
    InvalidTrustDomain(String),
    #[error(
        "SPIFFE ID {0:?} has an invalid path: segments must be non-empty, not '.' or '..', \
         and use only letters, digits, '.', '-' or '_' (no trailing '/', query or fragment)"
    )]
    InvalidPath(String),
    #[error("SPIFFE ID {id:?} is not in trust domain {expected:?}")]
    ForeignTrustDomain { id: String, expected: String },
    #[error(
        "SPIFFE ID {0:?} is not a ward workload identity: expected \
         spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount> with Kubernetes names \
         (lowercase letters, digits, '-', and '.' in service accounts)"
    )]
    NotWorkloadForm(String),
}

/// A validated SPIFFE trust domain name, e.g. `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Validates a bare trust domain name (no scheme).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        let valid = !name.is_empty()
            && name.len() <= MAX_TRUST_DOMAIN_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if valid {
            Ok(Self(name.to_string()))
        } else {
            Err(SpiffeIdError::InvalidTrustDomain(name.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID, `spiffe://<td>`, as placed in CA certificates.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            uri: format!("spiffe://{}", self.0),
            td_len: self.0.len(),
        }
    }

    /// The workload identity for a Kubernetes namespace and service account.
    pub fn workload(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
        let id = SpiffeId::parse(&format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            self.0
        ))?;
        id.workload()?;
        Ok(id)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A validated SPIFFE ID. Equality is byte equality: the parser admits only
/// one spelling of each identity, so no normalization is ever needed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    td_len: usize,
}

/// The Kubernetes names inside a ward workload identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadName<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
}

impl SpiffeId {
    const SCHEME: &'static str = "spiffe://";

    /// Parses any SPIFFE ID permitted by the SPIFFE-ID standard.
    pub fn parse(text: &str) -> Result<Self, SpiffeIdError> {
        if text.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if text.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong(text.chars().take(64).collect()));
        }
        let rest = text
            .strip_prefix(Self::SCHEME)
            .ok_or_else(|| SpiffeIdError::WrongScheme(text.to_string()))?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        TrustDomain::new(td)?;
        if !path.is_empty() {
            let valid = path[1..].split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            });
            if !valid {
                return Err(SpiffeIdError::InvalidPath(text.to_string()));
            }
        }
        Ok(Self {
            uri: text.to_string(),
            td_len: td.len(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain name (without scheme).
    pub fn trust_domain_name(&self) -> &str {
        &self.uri[Self::SCHEME.len()..Self::SCHEME.len() + self.td_len]
    }

    /// The path, empty for a trust domain ID, otherwise starting with `/`.
    pub fn path(&self) -> &str {
        &self.uri[Self::SCHEME.len() + self.td_len..]
    }

    /// Checks membership of a trust domain.
    pub fn require_trust_domain(&self, td: &TrustDomain) -> Result<(), SpiffeIdError> {
        if self.trust_domain_name() == td.as_str() {
            Ok(())
        } else {
            Err(SpiffeIdError::ForeignTrustDomain {
                id: self.uri.clone(),
                expected: td.as_str().to_string(),
            })
        }
    }

    /// Splits a ward workload identity into its Kubernetes names.
    pub fn workload(&self) -> Result<WorkloadName<'_>, SpiffeIdError> {
        let not_workload = || SpiffeIdError::NotWorkloadForm(self.uri.clone());
        let mut segs = self
            .path()
            .strip_prefix('/')
            .ok_or_else(not_workload)?
            .split('/');
        match (
            segs.next(),
            segs.next(),
            segs.next(),
            segs.next(),
            segs.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None)
                if is_dns_label(ns) && is_dns_subdomain(sa) =>
            {
                Ok(WorkloadName {
                    namespace: ns,
                    service_account: sa,
                })
            }
            _ => Err(not_workload()),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// RFC 1123 label, as Kubernetes requires of namespace (and ward of
/// service) names.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain, as Kubernetes requires of ServiceAccount names.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_ids() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        assert_eq!(id.trust_domain_name(), "cluster.local");
        assert_eq!(id.path(), "/ns/shop/sa/web");
        let w = id.workload().unwrap();
        assert_eq!((w.namespace, w.service_account), ("shop", "web"));
        let td = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!(td.path(), "");
        assert!(td.workload().is_err());
    }

    #[test]
    fn refuses_ambiguous_ids() {
        let cases = [
            "",
            "https://cluster.local/ns/a/sa/b",
            "SPIFFE://cluster.local/ns/a/sa/b",
            "spiffe://",
            "spiffe://Cluster.Local/ns/a/sa/b",
            "spiffe://cluster.local:8443/ns/a/sa/b",
            "spiffe://user@cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/ns/../sa/b",
            "spiffe://cluster.local/ns/./sa/b",
            "spiffe://cluster.local/ns/a%2Fb/sa/c",
            "spiffe://cluster.local/ns/a/sa/b?x=1",
            "spiffe://cluster.local/ns/a/sa/b#f",
            "spiffe://cluster.local/ns/a b/sa/c",
        ];
        for bad in cases {
            assert!(SpiffeId::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_ID_LEN));
        assert!(matches!(
            SpiffeId::parse(&long),
            Err(SpiffeIdError::TooLong(_))
        ));
    }

    #[test]
    fn workload_form_uses_kubernetes_names() {
        let td = TrustDomain::new("cluster.local").unwrap();
        assert!(td.workload("shop", "web.v2").is_ok());
        for (ns, sa) in [
            ("Shop", "web"),
            ("shop", "Web"),
            ("-shop", "web"),
            ("shop", ""),
        ] {
            assert!(td.workload(ns, sa).is_err(), "{ns}/{sa} should be refused");
        }
        let extra = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b/extra").unwrap();
        assert!(extra.workload().is_err());
    }

    #[test]
    fn trust_domain_membership() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let other = SpiffeId::parse("spiffe://evil.local/ns/a/sa/b").unwrap();
        assert!(other.require_trust_domain(&td).is_err());
        assert_eq!(td.id().as_str(), "spiffe://cluster.local");
        assert!(td.id().require_trust_domain(&td).is_ok());
    }
}
