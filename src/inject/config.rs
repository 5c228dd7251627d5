//! What injection is told by the operator (the same for every object in a
//! run), checked once up front so that a typo fails before any output.

use ward_config::TrustDomain;
use ward_proxy::settings::Egress;

/// The default image: the release matching this binary, so that the
/// injected `ward init` and `ward proxy` speak the flags this binary knows.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/ward-mesh/ward:", env!("CARGO_PKG_VERSION"));
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
pub const DEFAULT_CA_URL: &str = "https://ward-ca.ward-system.svc:8443";
/// The audience of the projected ServiceAccount token: the CA accepts only
/// tokens minted for it, so a token leaked from ward cannot be replayed
/// against the Kubernetes API (whose audience differs) and vice versa.
pub const DEFAULT_AUDIENCE: &str = "ward";
/// Destinations outside the mesh file are refused (or, under the mesh
/// file's `mode: audit`, let through and counted), as `ward proxy` does.
pub const DEFAULT_EGRESS: Egress = Egress::Deny;

/// Validated injection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    image: String,
    trust_domain: TrustDomain,
    ca_url: String,
    audience: String,
    /// The injected proxy's `--egress`, unless a pod's `ward.dev/egress`
    /// says otherwise.
    egress: Egress,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--image must not be empty or contain whitespace (got {0:?})")]
    Image(String),
    #[error("--trust-domain: {0}")]
    TrustDomain(#[from] ward_config::SpiffeIdError),
    #[error("--ca-url must be an https:// URL with a host, e.g. {DEFAULT_CA_URL} (got {0:?})")]
    CaUrl(String),
    #[error(
        "--audience must be 1-253 characters without whitespace, e.g. {DEFAULT_AUDIENCE} (got {0:?})"
    )]
    Audience(String),
}

impl Config {
    pub fn new(
        image: &str,
        trust_domain: &str,
        ca_url: &str,
        audience: &str,
        egress: Egress,
    ) -> Result<Self, ConfigError> {
        let has_space = |s: &str| s.chars().any(char::is_whitespace);
        if image.is_empty() || has_space(image) {
            return Err(ConfigError::Image(image.to_string()));
        }
        let trust_domain = TrustDomain::new(trust_domain)?;
        let host = ca_url.strip_prefix("https://").unwrap_or_default();
        if host.is_empty() || host.starts_with('/') || has_space(ca_url) {
            return Err(ConfigError::CaUrl(ca_url.to_string()));
        }
        if audience.is_empty() || audience.len() > 253 || has_space(audience) {
            return Err(ConfigError::Audience(audience.to_string()));
        }
        Ok(Config {
            image: image.to_string(),
            trust_domain,
            ca_url: ca_url.to_string(),
            audience: audience.to_string(),
            egress,
        })
    }

    pub fn image(&self) -> &str {
        &self.image
    }

    pub fn trust_domain(&self) -> &str {
        self.trust_domain.as_str()
    }

    pub fn ca_url(&self) -> &str {
        &self.ca_url
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn egress(&self) -> Egress {
        self.egress
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            image: DEFAULT_IMAGE.to_string(),
            trust_domain: TrustDomain::new(DEFAULT_TRUST_DOMAIN)
                .unwrap_or_else(|e| unreachable!("the default trust domain is valid: {e}")),
            ca_url: DEFAULT_CA_URL.to_string(),
            audience: DEFAULT_AUDIENCE.to_string(),
            egress: DEFAULT_EGRESS,
        }
    }
}
