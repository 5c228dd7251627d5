//! Outbound: take the local app's plaintext connection, find the service it
//! is for, and carry it to one of that service's sidecars over mutual TLS,
//! accepting only a server that presents the service's SPIFFE ID.
//!
//! Explicit mode (`--forward LISTEN=SERVICE`) knows the service from the
//! listener and picks an endpoint round-robin. Transparent mode recovers the
//! original destination, looks it up in the registry and dials that same
//! address (the peer pod's PREROUTING rule takes it to its sidecar); a
//! destination outside the mesh follows the egress mode, which the mesh
//! file's `mode: audit` turns from refusing into counting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::pki_types::ServerName;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use ward_config::mesh::Service;
use ward_config::policy::Mode;
use ward_config::policy::engine::Verdict;

use crate::Shared;
use crate::dst::OriginalDst;
use crate::forward::{splice, tls_transport};
use crate::listener::{ConnectionRecord, accept_loop};
use crate::metrics::OUTBOUND;
use crate::settings::Egress;
use crate::tls::failure::handshake_failure;
use crate::upstream::{self, Upstream};

/// What an outbound listener's connections are for.
pub enum Target {
    /// `--forward LISTEN=SERVICE`: one service, its endpoints in turn.
    Service(Route),
    /// Transparent mode: wherever the app was going.
    Redirected {
        dst: Arc<dyn OriginalDst>,
        egress: Egress,
    },
}

/// A `--forward` listener's target service.
pub struct Route {
    pub service: String,
    /// Round-robin position over the service's endpoints.
    next: AtomicUsize,
}

impl Route {
    pub fn new(service: String) -> Self {
        Self {
            service,
            next: AtomicUsize::new(0),
        }
    }
}

/// The `peer` label of connections let out of the mesh in plaintext.
const EGRESS_PEER: &str = "egress";

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, target: Arc<Target>) {
    let handler_shared = shared.clone();
    accept_loop(listener, shared, OUTBOUND, move |tcp, client, record| {
        let shared = handler_shared.clone();
        let target = target.clone();
        async move { handle(tcp, client, record, shared, &target).await }
    })
    .await;
}

async fn handle(
    app: TcpStream,
    client: SocketAddr,
    mut record: ConnectionRecord,
    shared: Arc<Shared>,
    target: &Target,
) {
    let m = &shared.metrics;
    let registry = shared.registry.snapshot();
    let (service, endpoints) = match target {
        Target::Service(route) => {
            let Some(service) = registry.mesh.service(&route.service) else {
                m.connection_errors
                    .with_label_values(&[OUTBOUND, "unknown_service"])
                    .inc();
                tracing::warn!(%client, service = %route.service, "service is not in the mesh file");
                return;
            };
            let start = route.next.fetch_add(1, Ordering::Relaxed);
            let mut endpoints = service.endpoints.clone();
            let len = endpoints.len().max(1);
            endpoints.rotate_left(start % len);
            (service, endpoints)
        }
        Target::Redirected { dst, egress: mode } => {
            let original = match dst.original_dst(&app) {
                Ok(original) => original,
                Err(e) => {
                    m.connection_errors
                        .with_label_values(&[OUTBOUND, e.reason()])
                        .inc();
                    tracing::warn!(%client, error = %e, "outbound connection refused");
                    return;
                }
            };
            match registry.destination(original) {
                Some((service, _)) => (service, vec![original]),
                None => {
                    record.peer = EGRESS_PEER.into();
                    let verdict = egress_verdict(*mode, registry.mesh.policy.mode);
                    drop(registry);
                    return egress(app, original, verdict, &shared).await;
                }
            }
        }
    };
    record.peer = service.name.clone();
    let Some(tls) = connect(service, &endpoints, &shared).await else {
        return;
    };
    drop(registry);
    let sent = m.bytes.with_label_values(&[OUTBOUND, &record.peer, "sent"]);
    let received = m
        .bytes
        .with_label_values(&[OUTBOUND, &record.peer, "received"]);
    if let Err(e) = splice(
        app,
        tls,
        shared.limits.idle_timeout,
        Some(sent),
        Some(received),
    )
    .await
    {
        tracing::debug!(peer = %record.peer, error = %e, "outbound connection ended");
    }
}

/// The decision on a destination outside the mesh: `--egress deny` under
/// the mesh file's top-level `mode: audit` lets it out as `audit_deny`, as
/// the policy does with what it would deny. Decided per connection on the
/// current snapshot, so a reload switches it for new connections.
fn egress_verdict(egress: Egress, mode: Mode) -> Verdict {
    match (egress, mode) {
        (Egress::Passthrough, _) => Verdict::Allow,
        (Egress::Deny, Mode::Enforce) => Verdict::Deny,
        (Egress::Deny, Mode::Audit) => Verdict::AuditDeny,
    }
}

/// A destination outside the mesh: let it out in plaintext, or refuse it.
/// Either way it counts as a decision of rule `egress`, so a dashboard shows
/// what the egress mode lets out, would block (audit) or blocks; denials,
/// audited or not, write one log line as inbound denials do.
async fn egress(app: TcpStream, original: SocketAddr, verdict: Verdict, shared: &Shared) {
    let m = &shared.metrics;
    m.authz
        .with_label_values(&[OUTBOUND, verdict.as_str(), EGRESS_PEER])
        .inc();
    if verdict != Verdict::Allow {
        tracing::warn!(
            decision = verdict.as_str(),
            destination = %original,
            rule = EGRESS_PEER,
            reason = "the destination is not a service in the mesh file",
            "egress denied{}",
            if verdict == Verdict::AuditDeny { " (audit mode: let through)" } else { "" }
        );
    }
    if !verdict.passes() {
        return;
    }
    let Some(upstream) = upstream::connect(original, Upstream::Egress, OUTBOUND, shared).await
    else {
        return;
    };
    let sent = m.bytes.with_label_values(&[OUTBOUND, EGRESS_PEER, "sent"]);
    let received = m
        .bytes
        .with_label_values(&[OUTBOUND, EGRESS_PEER, "received"]);
    let _ = splice(
        app,
        upstream,
        shared.limits.idle_timeout,
        Some(sent),
        Some(received),
    )
    .await;
}

/// Tries `endpoints` in order until one completes the handshake. A TLS failure (wrong identity, untrusted chain) is not
/// retried on another endpoint: it is a security event, not an outage.
async fn connect(
    service: &Service,
    endpoints: &[SocketAddr],
    shared: &Shared,
) -> Option<TlsStream<BufReader<TcpStream>>> {
    let m = &shared.metrics;
    let config = match shared.tls.client(&service.identity) {
        Ok(config) => config,
        Err(e) => {
            m.handshake_errors
                .with_label_values(&[OUTBOUND, "no_identity"])
                .inc();
            tracing::warn!(service = %service.name, error = %e, "refusing outbound connection");
            return None;
        }
    };
    for &endpoint in endpoints {
        let tcp = match tokio::time::timeout(
            shared.limits.connect_timeout,
            shared.dialer.connect(endpoint),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                tracing::info!(service = %service.name, %endpoint, error = %e, "endpoint unreachable; trying the next");
                continue;
            }
            Err(_) => continue,
        };
        let _ = tcp.set_nodelay(true);
        let handshake = TlsConnector::from(config.clone())
            .connect(ServerName::from(endpoint.ip()), tls_transport(tcp));
        return match tokio::time::timeout(shared.limits.handshake_timeout, handshake).await {
            Ok(Ok(tls)) => {
                m.handshakes
                    .with_label_values(&[OUTBOUND, &service.name])
                    .inc();
                Some(tls)
            }
            Ok(Err(e)) => {
                let reason = handshake_failure(&e);
                m.handshake_errors
                    .with_label_values(&[OUTBOUND, reason])
                    .inc();
                tracing::warn!(service = %service.name, %endpoint, reason, error = %e, "outbound handshake failed");
                None
            }
            Err(_) => {
                m.handshake_errors
                    .with_label_values(&[OUTBOUND, "timeout"])
                    .inc();
                None
            }
        };
    }
    m.connection_errors
        .with_label_values(&[OUTBOUND, "no_reachable_endpoint"])
        .inc();
    tracing::warn!(service = %service.name, "no endpoint reachable");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_mode_turns_egress_denials_into_audit_denials_only() {
        let cases = [
            (Egress::Deny, Mode::Enforce, Verdict::Deny),
            (Egress::Deny, Mode::Audit, Verdict::AuditDeny),
            (Egress::Passthrough, Mode::Enforce, Verdict::Allow),
            (Egress::Passthrough, Mode::Audit, Verdict::Allow),
        ];
        for (egress, mode, verdict) in cases {
            assert_eq!(egress_verdict(egress, mode), verdict, "{egress:?} {mode:?}");
        }
    }
}
