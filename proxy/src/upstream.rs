//! Plaintext connections from the proxy to what it fronts: the local app
//! (inbound) or a destination outside the mesh (outbound egress). One
//! place for the connect timeout and for how failures are counted.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::Shared;

/// What the connection is for; it names the failure reasons.
#[derive(Debug, Clone, Copy)]
pub enum Upstream {
    App,
    Egress,
}

impl Upstream {
    /// `reason` labels of `ward_tcp_connection_errors_total`: refused, timed out.
    fn reasons(self) -> (&'static str, &'static str) {
        match self {
            Self::App => ("app_unreachable", "app_connect_timeout"),
            Self::Egress => ("egress_unreachable", "egress_connect_timeout"),
        }
    }
}

/// Connects within the connect timeout, with Nagle off; a failure is
/// counted under `direction` and logged.
pub async fn connect(
    addr: SocketAddr,
    kind: Upstream,
    direction: &'static str,
    shared: &Shared,
) -> Option<TcpStream> {
    let (unreachable, timed_out) = kind.reasons();
    let failed = |reason: &str| {
        shared
            .metrics
            .connection_errors
            .with_label_values(&[direction, reason])
            .inc();
    };
    match tokio::time::timeout(shared.limits.connect_timeout, shared.dialer.connect(addr)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            Some(tcp)
        }
        Ok(Err(e)) => {
            failed(unreachable);
            tracing::warn!(%addr, ?kind, error = %e, "cannot connect");
            None
        }
        Err(_) => {
            failed(timed_out);
            tracing::warn!(%addr, ?kind, "connect timed out");
            None
        }
    }
}
