//! The webhook's Prometheus metrics, in a registry of its own (so several
//! servers can live in one test process). Labels are bounded: `result`
//! takes only the values named here and in [`Verdict::label`].

use prometheus::core::Collector;
use prometheus::{Encoder, Gauge, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use super::review::Verdict;

/// `result` of a POST that got no AdmissionReview answer: the body was not
/// an AdmissionReview, too large or too slow (HTTP 4xx).
pub const BAD_REQUEST: &str = "bad_request";
/// `result` of a review that failed inside the webhook (HTTP 500).
pub const ERROR: &str = "error";

pub struct InjectorMetrics {
    registry: Registry,
    reviews: IntCounterVec,
    cert_reloads: IntCounterVec,
    /// When the serving certificate in use expires (Unix time).
    pub cert_expiration: Gauge,
}

impl InjectorMetrics {
    pub fn new() -> Self {
        let reviews = IntCounterVec::new(
            Opts::new(
                "ward_injector_reviews_total",
                "AdmissionReviews answered, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let cert_reloads = IntCounterVec::new(
            Opts::new(
                "ward_injector_cert_reloads_total",
                "Changed serving certificate files read, by result; \
                 on failure the current pair stays in use.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let cert_expiration = Gauge::new(
            "ward_injector_cert_expiration_timestamp_seconds",
            "When the serving certificate in use expires (Unix time).",
        )
        .expect("valid metric");
        // The same family as the proxy's, so one query covers both.
        let build_info = IntGaugeVec::new(
            Opts::new("ward_build_info", "Always 1; labels carry the build."),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Every result from the start, so a rate() sees the first one.
        for result in Verdict::ALL
            .iter()
            .map(|v| v.label())
            .chain([BAD_REQUEST, ERROR])
        {
            reviews.with_label_values(&[result]);
        }
        for result in ["success", "failure"] {
            cert_reloads.with_label_values(&[result]);
        }
        let registry = Registry::new();
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(reviews.clone()),
            Box::new(cert_reloads.clone()),
            Box::new(cert_expiration.clone()),
            Box::new(build_info),
        ];
        for c in collectors {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            reviews,
            cert_reloads,
            cert_expiration,
        }
    }

    /// Counts one answer to `POST /mutate`; `result` is a [`Verdict`]
    /// label, [`BAD_REQUEST`] or [`ERROR`].
    pub fn reviewed(&self, result: &'static str) {
        self.reviews.with_label_values(&[result]).inc();
    }

    /// Counts a reload of changed serving certificate files.
    pub fn cert_reloaded(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.cert_reloads.with_label_values(&[result]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for InjectorMetrics {
    fn default() -> Self {
        Self::new()
    }
}
