//! Keeps the proxy's identity current.
//!
//! - At start: generate a P-256 key in memory, send a CSR with the bearer
//!   token (re-read from its file every time: Kubernetes rotates projected
//!   tokens), verify the returned chain against the trust bundle, publish.
//! - Renew at half the SVID's lifetime (as received), ±10 % jitter so a fleet started
//!   together does not renew together.
//! - On failure: retry with exponential backoff (1 s doubling to 5 min,
//!   jittered) while the current SVID keeps serving; once it has expired
//!   the proxy is not ready and refuses handshakes (fail closed).
//! - Refresh the trust bundle from the CA every few minutes; several roots
//!   are fine (rotation).
//!
//! Every change publishes a new immutable [`Identity`]; TLS configurations
//! are rebuilt from it for new handshakes, open connections keep theirs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::RootCertStore;
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::pki_types::UnixTime;
use rustls::server::ParsedCertificate;
use time::OffsetDateTime;
use ward_config::{SpiffeId, TrustDomain};

use super::csr::new_key_and_csr;
use super::{CaClient, Svid};
use crate::metrics::ProxyMetrics;
use crate::tls::roots::roots_from_pem;

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What the proxy presents and trusts right now.
#[derive(Debug)]
pub struct Identity {
    pub svid: Svid,
    pub roots: Arc<RootCertStore>,
    pub trust_domain: TrustDomain,
}

/// How the proxy obtains its identity.
pub struct IdentityConfig {
    pub id: SpiffeId,
    pub ca: CaClient,
    pub token_file: PathBuf,
    /// Roots to start with (the CA's bundle file); refreshed from the CA.
    pub initial_bundle_pem: String,
    pub bundle_refresh: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read the token file {0}: {1}")]
    Token(PathBuf, std::io::Error),
    #[error("the token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("{0}")]
    Ca(#[from] super::CaClientError),
    #[error("cannot create a key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error("{0}")]
    Install(#[from] super::SvidInstallError),
    #[error("the trust bundle is unusable: {0}")]
    Bundle(String),
    #[error("the trust bundle is unusable: {0}")]
    Roots(#[from] crate::tls::roots::RootsError),
    #[error("the issued SVID does not chain to the trust bundle: {0}")]
    Untrusted(rustls::Error),
}

pub struct IdentityManager {
    config: IdentityConfig,
    trust_domain: TrustDomain,
    current: ArcSwapOption<Identity>,
    metrics: Arc<ProxyMetrics>,
}

impl IdentityManager {
    pub fn new(
        config: IdentityConfig,
        metrics: Arc<ProxyMetrics>,
    ) -> Result<Arc<Self>, IdentityError> {
        let trust_domain = TrustDomain::new(config.id.trust_domain_name())
            .map_err(|e| IdentityError::Bundle(e.to_string()))?;
        roots_from_pem(&config.initial_bundle_pem)?;
        Ok(Arc::new(Self {
            config,
            trust_domain,
            current: ArcSwapOption::empty(),
            metrics,
        }))
    }

    pub fn id(&self) -> &SpiffeId {
        &self.config.id
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The current identity, if there is one that has not expired.
    pub fn current(&self) -> Option<Arc<Identity>> {
        self.current
            .load_full()
            .filter(|identity| OffsetDateTime::now_utc() < identity.svid.not_after)
    }

    pub fn is_ready(&self) -> bool {
        self.current().is_some()
    }

    /// Obtains, renews and refreshes forever (until the task is dropped).
    pub async fn run(self: Arc<Self>) {
        let mut failures: u32 = 0;
        let mut next_bundle = tokio::time::Instant::now() + self.config.bundle_refresh;
        loop {
            let wait = match self.renew().await {
                Ok(identity) => {
                    failures = 0;
                    let wait = renewal_delay(&identity.svid, OffsetDateTime::now_utc());
                    tracing::info!(id = %identity.svid.id, not_after = %identity.svid.not_after, renew_in = ?wait, "installed SVID");
                    wait
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = backoff(failures);
                    let serving = self.is_ready();
                    tracing::warn!(error = %e, retry_in = ?wait, serving_on_current = serving, "SVID renewal failed");
                    wait
                }
            };
            let renew_at = tokio::time::Instant::now() + wait;
            // Bundle refreshes happen in between renewals.
            while next_bundle < renew_at {
                tokio::time::sleep_until(next_bundle).await;
                if let Err(e) = self.refresh_bundle().await {
                    tracing::warn!(error = %e, "trust bundle refresh failed; keeping the current one");
                }
                next_bundle = tokio::time::Instant::now() + self.config.bundle_refresh;
            }
            tokio::time::sleep_until(renew_at).await;
        }
    }

    /// One attempt: key, CSR, CA call, verification, publication.
    pub async fn renew(&self) -> Result<Arc<Identity>, IdentityError> {
        let result = self.obtain().await;
        let label = if result.is_ok() { "success" } else { "failure" };
        self.metrics.renewals.with_label_values(&[label]).inc();
        let identity = Arc::new(result?);
        self.publish(identity.clone());
        Ok(identity)
    }

    async fn obtain(&self) -> Result<Identity, IdentityError> {
        let path = &self.config.token_file;
        let token = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| IdentityError::Token(path.clone(), e))?;
        if token.trim().is_empty() {
            return Err(IdentityError::EmptyToken(path.clone()));
        }
        let roots = match self.current.load_full() {
            Some(current) => current.roots.clone(),
            None => Arc::new(roots_from_pem(&self.config.initial_bundle_pem)?),
        };
        let (key, csr) = new_key_and_csr(&self.config.id)?;
        let chain = self.config.ca.request_svid(token.trim(), &csr).await?;
        let svid = Svid::install(&key, &chain, &self.config.id)?;
        verify_chain(&svid, &roots)?;
        Ok(Identity {
            svid,
            roots,
            trust_domain: self.trust_domain.clone(),
        })
    }

    async fn refresh_bundle(&self) -> Result<(), IdentityError> {
        let pem = self.config.ca.fetch_bundle().await?;
        let roots = roots_from_pem(&pem)?;
        let Some(current) = self.current.load_full() else {
            return Ok(()); // the next renewal starts from the initial bundle
        };
        if same_roots(&roots, &current.roots) {
            return Ok(());
        }
        verify_chain(&current.svid, &roots)?;
        tracing::info!(roots = roots.len(), "trust bundle updated");
        self.publish(Arc::new(Identity {
            svid: current.svid.clone(),
            roots: Arc::new(roots),
            trust_domain: current.trust_domain.clone(),
        }));
        Ok(())
    }

    fn publish(&self, identity: Arc<Identity>) {
        self.metrics
            .cert_expiration
            .set(identity.svid.not_after.unix_timestamp() as f64);
        self.metrics.bundle_roots.set(identity.roots.len() as i64);
        self.current.store(Some(identity));
    }
}

fn same_roots(a: &RootCertStore, b: &RootCertStore) -> bool {
    a.roots.len() == b.roots.len() && a.roots.iter().all(|r| b.roots.contains(r))
}

/// The CA's answer must chain to the roots we trust (a compromised or
/// misconfigured CA endpoint must not make us present an untrusted cert).
fn verify_chain(svid: &Svid, roots: &RootCertStore) -> Result<(), IdentityError> {
    let chain = &svid.certified.cert;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(IdentityError::Bundle("empty chain".into()))?;
    let parsed = ParsedCertificate::try_from(leaf).map_err(IdentityError::Untrusted)?;
    let algs = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
    verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        intermediates,
        UnixTime::now(),
        algs.all,
    )
    .map_err(IdentityError::Untrusted)
}

/// Half of the SVID's remaining lifetime at receipt (±10 %), at least a
/// second. Measured from now, not from notBefore: the CA backdates
/// notBefore for clock skew, and counting that would renew early (or, for
/// short-lived SVIDs, continuously).
fn renewal_delay(svid: &Svid, received: OffsetDateTime) -> Duration {
    let remaining = (svid.not_after - received).as_seconds_f64().max(0.0);
    let jitter = 0.9 + 0.2 * rand::random::<f64>();
    Duration::from_secs_f64((remaining / 2.0 * jitter).max(1.0))
}

/// 1 s, 2 s, 4 s ... capped at 5 min, each drawn from [half, full].
fn backoff(failures: u32) -> Duration {
    let exp = BACKOFF_MIN.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let cap = exp.min(BACKOFF_MAX);
    cap.mul_f64(0.5 + 0.5 * rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for failures in 1..40 {
            let d = backoff(failures);
            let full = BACKOFF_MIN
                .saturating_mul(1u32 << (failures - 1).min(16))
                .min(BACKOFF_MAX);
            assert!(d >= full / 2 && d <= full, "{failures}: {d:?}");
        }
        assert!(backoff(30) <= BACKOFF_MAX);
    }
}
