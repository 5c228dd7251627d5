//! Authorization on inbound traffic: ask the compiled policy, count the
//! decision in `ward_authz_decisions_total{direction,decision,rule}`, and
//! write one structured log line per denial (peer, destination, port,
//! method, path, rule or reason). Nothing about the policy goes back to the
//! caller: a denied connection is closed, a denied request gets a bare 403
//! with a request id that finds the log line.

use ward_config::SpiffeId;
use ward_config::policy::engine::{HttpRequest, Request, Verdict};

use crate::Shared;
use crate::metrics::INBOUND;
use crate::registry::Snapshot;

/// The connection being authorized: who calls which of our services on
/// which port. `service` is `None` when our identity is not a service of
/// the mesh file (everything is then denied).
#[derive(Debug, Clone)]
pub struct Inbound {
    pub peer: SpiffeId,
    pub service: Option<String>,
    pub port: u16,
    /// Subscribed when the connection was first decided, so a reload that
    /// lands before the connection is fully set up is still re-checked.
    changes: tokio::sync::watch::Receiver<u64>,
}

/// The outcome the data path acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub requires_http: bool,
    /// For a request that was logged (denied, or let through in audit
    /// mode): the id in its log line, for the refusal to carry. Made only
    /// then, so an allowed request costs no id.
    pub request_id: Option<String>,
}

impl Inbound {
    /// Our service for `port`: the mesh file service that presents our
    /// identity and declares this port (or, failing that, any port).
    pub fn new(
        peer: SpiffeId,
        shared: &Shared,
        snapshot: &Snapshot,
        own: &SpiffeId,
        port: u16,
    ) -> Self {
        let service = snapshot.own_service(own, port).map(str::to_string);
        Self {
            peer,
            service,
            port,
            changes: shared.registry.subscribe(),
        }
    }

    /// Decides a connection (`http: None`) or one request, and records it.
    pub fn decide(
        &self,
        shared: &Shared,
        snapshot: &Snapshot,
        http: Option<HttpRequest<'_>>,
    ) -> Outcome {
        let service = self.service.as_deref().unwrap_or_default();
        let decision = snapshot.engine.decide(&Request {
            from: &self.peer,
            service,
            port: self.port,
            http,
        });
        let rule = decision.rule_label();
        shared
            .metrics
            .authz
            .with_label_values(&[INBOUND, decision.verdict.as_str(), rule])
            .inc();
        let mut request_id = None;
        if decision.verdict != Verdict::Allow {
            request_id = http.map(|_| crate::http::request_id());
            let reason = match (&self.service, decision.rule) {
                (None, _) => "this sidecar's identity is not a service in the mesh file",
                (Some(_), Some(_)) => "denied by rule",
                (Some(_), None) => "no rule allows it",
            };
            tracing::warn!(
                decision = decision.verdict.as_str(),
                peer = %self.peer,
                service,
                port = self.port,
                method = http.map(|h| h.method),
                path = http.map(|h| h.path),
                rule,
                request_id = request_id.as_deref(),
                reason,
                "authorization denied{}",
                if decision.verdict == Verdict::AuditDeny { " (audit mode: let through)" } else { "" }
            );
        }
        Outcome {
            verdict: decision.verdict,
            requires_http: decision.requires_http,
            request_id,
        }
    }

    /// Resolves when a reloaded policy no longer admits this connection:
    /// denied at L4, or (for a connection carried as opaque bytes, `http`
    /// false) admitted only for HTTP. Re-checks are not counted as decisions.
    pub async fn revoked(&self, shared: &Shared, http: bool) {
        let mut changes = self.changes.clone();
        while changes.changed().await.is_ok() {
            let snapshot = shared.registry.snapshot();
            let service = self.service.as_deref().unwrap_or_default();
            let decision = snapshot.engine.decide(&Request {
                from: &self.peer,
                service,
                port: self.port,
                http: None,
            });
            if !decision.verdict.passes() || (!http && decision.requires_http) {
                tracing::info!(peer = %self.peer, port = self.port, rule = decision.rule_label(), "policy reload revoked an open connection");
                return;
            }
        }
        std::future::pending::<()>().await;
    }
}
