//! The accept loop every listener shares: a connection cap, the drain
//! (stop accepting; close what is left when the drain times out) and the
//! per-connection metrics guard.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use prometheus::IntGauge;
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
    let slots = Arc::new(Semaphore::new(shared.limits.max_connections));
    let handle = Arc::new(handle);
    let accept_errors = shared.metrics.accept_errors.with_label_values(&[direction]);
    // Failed accepts in a row: logged when they start and when they end,
    // not every 50 ms in between.
    let mut failing = 0u64;
    loop {
        // Wait for a slot first: over the cap, connections queue in the
        // kernel backlog instead of being accepted and dropped.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
            () = shared.drain.draining() => return,
        };
        let (tcp, peer_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => {
                    if failing > 0 {
                        tracing::info!(direction, failures = failing, "accepting again");
                        failing = 0;
                    }
                    conn
                }
                Err(e) => {
                    // EMFILE and friends: the connection waits in the
                    // backlog; back off instead of spinning.
                    accept_errors.inc();
                    if failing == 0 {
                        tracing::warn!(direction, error = %e, "accept failed; retrying every 50 ms (see ward_tcp_accept_errors_total)");
                    }
                    failing += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shared.drain.draining() => return,
        };
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
