//! The CA's Prometheus metrics, in a registry of its own (so several CAs can
//! live in one test process). Labels are bounded: `reason` takes only the
//! fixed values of `DenyReason::label`.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};
use time::OffsetDateTime;

pub struct CaMetrics {
    registry: Registry,
    pub issued: IntCounter,
    pub denied: IntCounterVec,
    pub issuance_seconds: Histogram,
    pub audit_errors: IntCounter,
    pub handshake_errors: IntCounter,
    pub connections_refused: IntCounter,
    pub connection_timeouts: IntCounter,
    /// TokenReviews by `result` (see `kubernetes::ReviewResult`).
    pub token_reviews: IntCounterVec,
    pub token_review_seconds: Histogram,
    intermediate_expiry: Gauge,
}

impl CaMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let issued = IntCounter::new("ward_ca_svids_issued_total", "X509-SVIDs issued.")
            .expect("valid metric");
        let denied = IntCounterVec::new(
            Opts::new(
                "ward_ca_svid_requests_denied_total",
                "SVID requests refused, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let issuance_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ward_ca_issuance_duration_seconds",
                "Time from request body received to certificate signed and audited.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5,
            ]),
        )
        .expect("valid metric");
        let audit_errors = IntCounter::new(
            "ward_ca_audit_write_errors_total",
            "Audit lines that could not be written.",
        )
        .expect("valid metric");
        let handshake_errors = IntCounter::new(
            "ward_ca_tls_handshake_errors_total",
            "TLS handshakes that failed or timed out.",
        )
        .expect("valid metric");
        let connections_refused = IntCounter::new(
            "ward_ca_connections_refused_total",
            "Connections dropped because the connection limit was reached.",
        )
        .expect("valid metric");
        let connection_timeouts = IntCounter::new(
            "ward_ca_connection_timeouts_total",
            "Connections closed because no request (or no complete request header) arrived in time.",
        )
        .expect("valid metric");
        let token_reviews = IntCounterVec::new(
            Opts::new(
                "ward_ca_token_reviews_total",
                "Kubernetes TokenReviews of ServiceAccount tokens, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let token_review_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ward_ca_token_review_duration_seconds",
                "Time the Kubernetes API took to answer a TokenReview (or to fail).",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        let intermediate_expiry = Gauge::new(
            "ward_ca_intermediate_expiry_seconds",
            "Seconds until the signing (intermediate) CA certificate expires.",
        )
        .expect("valid metric");
        for reason in crate::service::DENY_LABELS {
            denied.with_label_values(&[reason]);
        }
        for m in [
            Box::new(issued.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(denied.clone()),
            Box::new(issuance_seconds.clone()),
            Box::new(audit_errors.clone()),
            Box::new(handshake_errors.clone()),
            Box::new(connections_refused.clone()),
            Box::new(connection_timeouts.clone()),
            Box::new(token_reviews.clone()),
            Box::new(token_review_seconds.clone()),
            Box::new(intermediate_expiry.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Self {
            registry,
            issued,
            denied,
            issuance_seconds,
            audit_errors,
            handshake_errors,
            connections_refused,
            connection_timeouts,
            token_reviews,
            token_review_seconds,
            intermediate_expiry,
        }
    }

    /// Renders the text exposition format, refreshing time-derived gauges.
    pub fn render(&self, intermediate_not_after: OffsetDateTime) -> String {
        let remaining = (intermediate_not_after - OffsetDateTime::now_utc()).as_seconds_f64();
        self.intermediate_expiry.set(remaining);
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for CaMetrics {
    fn default() -> Self {
        Self::new()
    }
}
