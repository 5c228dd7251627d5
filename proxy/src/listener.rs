//! The accept loop every listener shares: a connection cap (the
//! listener's and the budget of all of them), the drain (stop accepting;
//! close what is left when the drain times out), failed accepts and the
//! per-connection metrics guard.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use prometheus::{IntCounter, IntGauge};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::Shared;

/// Counts a connection open while alive; on drop, closed under its peer.
pub struct ConnectionRecord {
    shared: Arc<Shared>,
    direction: &'static str,
    open: IntGauge,
    pub peer: String,
}

impl ConnectionRecord {
    fn new(shared: Arc<Shared>, direction: &'static str) -> Self {
        shared
            .metrics
            .connections_opened
            .with_label_values(&[direction])
            .inc();
        let open = shared
            .metrics
            .open_connections
            .with_label_values(&[direction]);
        open.inc();
        Self {
            shared,
            direction,
            open,
            peer: "unknown".into(),
        }
    }
}

impl Drop for ConnectionRecord {
    fn drop(&mut self) {
        self.open.dec();
        self.shared
            .metrics
            .connections_closed
            .with_label_values(&[self.direction, &self.peer])
            .inc();
    }
}

/// An IPv6-only listener, so that it can sit beside an IPv4 listener on
/// the same port and every accepted socket has one family (the original
/// destination lookup is per family).
pub fn bind_v6_only(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v6()?;
    setsockopt(&socket, sockopt::Ipv6V6Only, &true)?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A listener's failed accepts (EMFILE and friends): counted, logged when
/// they start and when they end rather than at every retry, and backed
/// off from instead of spun on (the connection waits in the backlog).
pub struct AcceptFailures {
    direction: &'static str,
    count: IntCounter,
    /// Failures in a row.
    failing: u64,
}

impl AcceptFailures {
    pub fn new(shared: &Shared, direction: &'static str) -> Self {
        let metrics = &shared.metrics.accept_errors;
        Self {
            direction,
            count: metrics.with_label_values(&[direction]),
            failing: 0,
        }
    }

    /// After a failed accept: counts it, then waits before the next try.
    pub async fn failed(&mut self, e: std::io::Error) {
        self.count.inc();
        if self.failing == 0 {
            let direction = self.direction;
            tracing::warn!(direction, error = %e, "accept failed; retrying every 50 ms (see ward_tcp_accept_errors_total)");
        }
        self.failing += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// After an accept: the end of a run of failures, if there was one.
    pub fn accepted(&mut self) {
        if self.failing > 0 {
            let (direction, failures) = (self.direction, self.failing);
            tracing::info!(direction, failures, "accepting again");
            self.failing = 0;
        }
    }
}

/// Accepts until the drain starts; runs `handle` for each connection.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shared: Arc<Shared>,
    direction: &'static str,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, ConnectionRecord) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let cap = shared.limits.max_connections.min(Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(cap));
    let handle = Arc::new(handle);
    let mut failures = AcceptFailures::new(&shared, direction);
    loop {
        // A slot of this listener's and of the budget of all of them
        // first: over either, connections queue in the kernel backlog
        // instead of being accepted and dropped.
        let slot = async {
            let mine = slots.clone().acquire_owned().await?;
            let budget = shared.connection_budget.clone().acquire_owned().await?;
            Ok::<_, tokio::sync::AcquireError>((mine, budget))
        };
        let slot = tokio::select! {
            slot = slot => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
            () = shared.drain.draining() => return,
        };
        let (tcp, peer_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    failures.failed(e).await;
                    continue;
                }
            },
            () = shared.drain.draining() => return,
        };
        failures.accepted();
        let _ = tcp.set_nodelay(true);
        let record = ConnectionRecord::new(shared.clone(), direction);
        let guard = shared.drain.connection();
        let drain = shared.drain.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _guard = guard;
            tokio::select! {
                () = handle(tcp, peer_addr, record) => {}
                () = drain.closing() => {}
            }
        });
    }
}
