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
//!
//! The destination port's protocol decides what is carried: `tcp` is
//! spliced at once; `http` and `detect` are sniffed, and HTTP is served
//! request by request (`http::serve_outbound`, docs/proxy.md "Protocols
//! (outbound)").

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use ward_config::mesh::Protocol;
use ward_config::policy::Mode;
use ward_config::policy::engine::Verdict;

use crate::Shared;
use crate::dst::OriginalDst;
use crate::forward::splice_counted;
use crate::http::{
    self,
    detect::{Detected, sniff},
};
use crate::listener::{ConnectionRecord, accept_loop};
use crate::metrics::OUTBOUND;
use crate::settings::Egress;
use crate::tls::config::Carries;
use crate::upstream::{self, Upstream};

pub mod destination;

pub use destination::{ConnectError, Destination};

/// What an outbound listener's connections are for.
pub enum Target {
    /// `--forward LISTEN=SERVICE[:PORT]`: one service, its endpoints in turn.
    Service(Destination),
    /// Transparent mode: wherever the app was going.
    Redirected {
        dst: Arc<dyn OriginalDst>,
        egress: Egress,
    },
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
    let destination = match target {
        Target::Service(destination) => destination.clone(),
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
            let registry = shared.registry.snapshot();
            match registry.destination(original) {
                Some((service, spec)) => {
                    Destination::dialed(service.name.clone(), original, spec.port)
                }
                None => {
                    record.peer = EGRESS_PEER.into();
                    let verdict = egress_verdict(*mode, registry.mesh.policy.mode);
                    drop(registry);
                    return egress(app, original, verdict, &shared).await;
                }
            }
        }
    };
    record.peer = destination.service.clone();
    let protocol = destination.protocol(&shared);
    let timeout = match protocol {
        // Declared opaque: never wait for the app to speak first.
        Protocol::Tcp => return splice_to(app, &destination, &shared).await,
        // A client pool may open a connection long before it sends on it.
        Protocol::Http => shared.limits.idle_timeout,
        Protocol::Detect => shared.limits.detect_timeout,
    };
    let sniffed = tokio::select! {
        sniffed = sniff(app, timeout) => sniffed,
        // Nothing was sent on it, so nothing is in flight: close it.
        () = shared.drain.draining() => return,
    };
    let (detected, app) = match sniffed {
        Ok(sniffed) => sniffed,
        Err(e) => {
            tracing::debug!(service = %destination.service, error = %e, "app connection ended before protocol detection");
            return;
        }
    };
    match detected {
        Detected::Opaque if protocol == Protocol::Http => {
            // The service's sidecar would refuse it (`not_http`): do not
            // spend a handshake on it.
            m.connection_errors
                .with_label_values(&[OUTBOUND, "not_http"])
                .inc();
            tracing::info!(service = %destination.service, "non-HTTP bytes, or silence, on a port declared http");
        }
        Detected::Opaque => splice_to(app, &destination, &shared).await,
        version => http::serve_outbound(app, version, destination, shared.clone()).await,
    }
}

/// Opaque TCP: one mTLS connection to the service, bytes carried both ways.
async fn splice_to<S>(app: S, destination: &Destination, shared: &Shared)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(tls) = destination.connect(Carries::Opaque, shared).await else {
        return;
    };
    let peer = &destination.service;
    if let Err(e) = splice_counted(app, tls, OUTBOUND, peer, shared).await {
        tracing::debug!(%peer, error = %e, "outbound connection ended");
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
    let _ = splice_counted(app, upstream, OUTBOUND, EGRESS_PEER, shared).await;
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
