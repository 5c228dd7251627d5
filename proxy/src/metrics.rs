//! The proxy's Prometheus metrics. Every family starts with `ward_` but the
//! standard `process_*` ones (`process.rs`); labels are bounded: a
//! direction, a reason from a fixed list, a result, and identities/services
//! that the mesh file names (never paths, addresses or anything else a
//! client picks freely).
//!
//! The `peer` label is, inbound, the verified client's SPIFFE ID only when
//! the current mesh file names it exactly (a service's identity or an exact
//! role member; `Snapshot::peer_label`), else [`OTHER_PEER`]: a valid
//! certificate is not enough, since anyone who can get one (with the
//! Kubernetes CA, anyone who can create a ServiceAccount) could otherwise
//! add series, histogram buckets included, to every pod they can reach.
//! Outbound it is the destination service's name from the mesh file.
//! Besides: `unknown` (closed before authentication), `probe` (kubelet's
//! plaintext probes) and `egress` (let out of the mesh). The full ID of an
//! `other` peer is in the logs.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::process::ProcessCollector;

/// `direction` label values.
pub const INBOUND: &str = "inbound";
pub const OUTBOUND: &str = "outbound";

/// The `peer` label of a verified peer that the mesh file does not name.
pub const OTHER_PEER: &str = "other";

pub struct ProxyMetrics {
    registry: Registry,
    pub connections_opened: IntCounterVec,
    pub connections_closed: IntCounterVec,
    pub open_connections: IntGaugeVec,
    pub connection_budget: IntGauge,
    pub bytes: IntCounterVec,
    pub handshakes: IntCounterVec,
    pub handshake_errors: IntCounterVec,
    pub connection_errors: IntCounterVec,
    pub accept_errors: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub pool_idle: IntGaugeVec,
    pub pool_reuses: IntCounterVec,
    pub cert_expiration: Gauge,
    pub renewals: IntCounterVec,
    pub bundle_roots: IntGauge,
    pub policy_reloads: IntCounterVec,
    pub authz: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub draining: IntCounter,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl ProxyMetrics {
    pub fn new() -> Self {
        let m = Self {
            registry: Registry::new(),
            connections_opened: counter(
                "ward_tcp_connections_opened_total",
                "TCP connections accepted by the proxy.",
                &["direction"],
            ),
            connections_closed: counter(
                "ward_tcp_connections_closed_total",
                "TCP connections closed, by peer (inbound: SPIFFE ID if the mesh file names it, else \"other\"; outbound: service; \"unknown\" before authentication).",
                &["direction", "peer"],
            ),
            open_connections: IntGaugeVec::new(
                Opts::new(
                    "ward_tcp_open_connections",
                    "TCP connections currently open.",
                ),
                &["direction"],
            )
            .expect("valid metric"),
            connection_budget: IntGauge::new(
                "ward_tcp_connection_budget",
                "Connections held at once across all listeners: --max-connections per listener, or fewer if the open-files limit allows fewer; beyond it, new ones wait in the kernel's backlog.",
            )
            .expect("valid metric"),
            bytes: counter(
                "ward_tcp_bytes_total",
                "Bytes carried, by direction, peer and flow (sent to / received from the peer).",
                &["direction", "peer", "flow"],
            ),
            handshakes: counter(
                "ward_tls_handshakes_total",
                "Mesh TLS handshakes completed, by peer (inbound: SPIFFE ID if the mesh file names it, else \"other\"; outbound: service).",
                &["direction", "peer"],
            ),
            handshake_errors: counter(
                "ward_tls_handshake_errors_total",
                "Mesh TLS handshakes that failed, by reason.",
                &["direction", "reason"],
            ),
            connection_errors: counter(
                "ward_tcp_connection_errors_total",
                "Connections closed after the handshake without being forwarded, by reason.",
                &["direction", "reason"],
            ),
            accept_errors: counter(
                "ward_tcp_accept_errors_total",
                "Failed accepts (e.g. out of file descriptors), by listener (inbound, outbound, admin); retried every 50 ms while connections wait in the kernel's backlog.",
                &["direction"],
            ),
            http_requests: counter(
                "ward_http_requests_total",
                "HTTP requests proxied.",
                &["direction", "peer", "status_code"],
            ),
            http_duration: HistogramVec::new(
                HistogramOpts::new(
                    "ward_http_request_duration_seconds",
                    "HTTP request duration, from request head received to response head sent.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ]),
                &["direction", "peer"],
            )
            .expect("valid metric"),
            pool_idle: IntGaugeVec::new(
                Opts::new(
                    "ward_http_pool_idle_connections",
                    "Idle outbound HTTP/1 mesh connections kept for reuse, by service.",
                ),
                &["peer"],
            )
            .expect("valid metric"),
            pool_reuses: counter(
                "ward_http_pool_reuses_total",
                "App connections served on a pooled mesh connection instead of a new handshake, by service.",
                &["peer"],
            ),
            cert_expiration: Gauge::new(
                "ward_identity_cert_expiration_timestamp_seconds",
                "When the proxy's current SVID expires (Unix time); 0 before the first one.",
            )
            .expect("valid metric"),
            renewals: counter(
                "ward_identity_renewals_total",
                "SVID requests to the CA, by result.",
                &["result"],
            ),
            bundle_roots: IntGauge::new(
                "ward_identity_trust_bundle_roots",
                "Roots in the current trust bundle.",
            )
            .expect("valid metric"),
            authz: counter(
                "ward_authz_decisions_total",
                "Authorization decisions (connections at L4, each request at L7), by decision and deciding rule (\"default\": no rule matched).",
                &["direction", "decision", "rule"],
            ),
            policy_reloads: counter(
                "ward_policy_reloads_total",
                "Mesh file (re)loads, by result; a failed reload keeps the last good file.",
                &["result"],
            ),
            build_info: IntGaugeVec::new(
                Opts::new("ward_build_info", "Always 1; labels carry the build."),
                &["version"],
            )
            .expect("valid metric"),
            draining: IntCounter::new(
                "ward_drain_started_total",
                "Graceful drains started (SIGTERM).",
            )
            .expect("valid metric"),
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(m.connections_opened.clone()),
            Box::new(m.connections_closed.clone()),
            Box::new(m.open_connections.clone()),
            Box::new(m.connection_budget.clone()),
            Box::new(m.bytes.clone()),
            Box::new(m.handshakes.clone()),
            Box::new(m.handshake_errors.clone()),
            Box::new(m.connection_errors.clone()),
            Box::new(m.accept_errors.clone()),
            Box::new(m.http_requests.clone()),
            Box::new(m.http_duration.clone()),
            Box::new(m.pool_idle.clone()),
            Box::new(m.pool_reuses.clone()),
            Box::new(m.cert_expiration.clone()),
            Box::new(m.renewals.clone()),
            Box::new(m.bundle_roots.clone()),
            Box::new(m.policy_reloads.clone()),
            Box::new(m.authz.clone()),
            Box::new(m.build_info.clone()),
            Box::new(m.draining.clone()),
            Box::new(ProcessCollector::default()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}
