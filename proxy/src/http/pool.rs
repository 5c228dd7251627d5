//! Idle HTTP/1 mesh connections kept for the app's next connection to the
//! same endpoint (docs/pooling.md). Without it an app that opens a
//! connection per request pays an mTLS handshake per request.
//!
//! An outbound app connection takes a pooled connection at its first
//! request (or makes one) and keeps it to itself until it ends, as before;
//! only then does the mesh connection go back, once hyper has it ready for
//! another request. A pooled connection is taken again only:
//! - for the same service and endpoint;
//! - under the same TLS configuration: a new SVID, trust bundle or expected
//!   identity means a new handshake (a root dropped from the bundle must
//!   not live on in old connections);
//! - before its expiry: the first of `--pool-max-age` after it opened and
//!   the peer's certificate chain's notAfter (as with resumption, no
//!   connection is taken again after the identity it authenticated
//!   expired; an app connection that holds one keeps it, as before
//!   pooling). The age limit
//!   keeps load spreading: the mesh file's endpoints are usually Service
//!   cluster IPs, which kube-proxy balances per connection, so a
//!   connection reused for long would pin a caller to one pod, and keep
//!   it on a pod taken out of the Service;
//! - while the sidecar is not draining.
//!
//! Bounds: `--pool-max-idle` per endpoint (a connection given back beyond
//! it is closed) and [`MAX_IDLE_TOTAL`] in all, less under a small
//! open-files limit (`process.rs`; the longest idle one is closed to make
//! room). A sweep closes each when it expires; the drain
//! closes them all at once. The rest of the failure cases (a peer
//! closing a pooled connection as a request goes out) are the replay rule's
//! (`upstream.rs`): a pooled connection counts as reused.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use hyper::client::conn::http1::SendRequest;
use prometheus::IntGauge;
use rustls::ClientConfig;
use tokio::sync::Notify;

use super::upstream::UpBody;
use crate::drain::Drain;
use crate::metrics::ProxyMetrics;
use crate::outbound::destination::{MeshStream, Route};
use crate::settings::Limits;
use crate::tls::chain_not_after;

/// Idle connections kept across all endpoints.
pub const MAX_IDLE_TOTAL: usize = 256;

/// How long a connection given back may take to be ready for another
/// request: the response has normally ended already; one still reading
/// (its downstream left mid-body) is not worth waiting for.
const READY_WAIT: Duration = Duration::from_millis(500);

type Sender = SendRequest<UpBody>;

/// What a mesh connection was made for, which decides who may reuse it.
pub struct Origin {
    service: String,
    endpoint: SocketAddr,
    config: Arc<ClientConfig>,
    expires: Instant,
}

impl Origin {
    /// For a connection `route` just made, reusable for `max_age`; `None`
    /// if it cannot be pooled (its peer address or certificates unreadable).
    pub fn of(route: &Route, tls: &MeshStream, max_age: Duration) -> Option<Self> {
        let (transport, session) = tls.get_ref();
        let endpoint = transport.get_ref().peer_addr().ok()?;
        let not_after = chain_not_after(session.peer_certificates()?)?;
        let left = not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Some(Self {
            service: route.service.clone(),
            endpoint,
            config: route.config.clone(),
            expires: Instant::now() + left.min(max_age),
        })
    }

    fn is_for(&self, service: &str, endpoint: SocketAddr) -> bool {
        self.endpoint == endpoint && self.service == service
    }
}

struct Idle {
    sender: Sender,
    origin: Origin,
}

impl Idle {
    fn usable(&self, now: Instant) -> bool {
        !self.sender.is_closed() && now < self.origin.expires
    }
}

#[derive(Default)]
struct State {
    /// Longest idle first.
    idle: Vec<Idle>,
    /// When the sweep wakes next; `None`: when a connection is added.
    sweep_at: Option<Instant>,
}

pub struct Pool {
    state: Mutex<State>,
    /// Wakes the sweep for a connection that goes stale before `sweep_at`.
    earlier: Notify,
    max_idle: usize,
    /// [`MAX_IDLE_TOTAL`], or less under a small open-files limit.
    max_total: usize,
    metrics: Arc<ProxyMetrics>,
}

impl Pool {
    pub fn new(limits: &Limits, max_total: usize, metrics: Arc<ProxyMetrics>) -> Self {
        Self {
            state: Mutex::default(),
            earlier: Notify::new(),
            max_idle: limits.pool_max_idle,
            max_total: max_total.min(MAX_IDLE_TOTAL),
            metrics,
        }
    }

    /// The most recently idle usable connection to `route`'s pick, under
    /// `route`'s configuration. Stale ones met on the way are closed.
    pub fn take(&self, route: &Route) -> Option<(Sender, Origin)> {
        let endpoint = *route.endpoints.first()?;
        let now = Instant::now();
        let mut state = self.lock();
        while let Some(i) = state
            .idle
            .iter()
            .rposition(|c| c.origin.is_for(&route.service, endpoint))
        {
            let conn = self.remove(&mut state, i);
            if conn.usable(now) && Arc::ptr_eq(&conn.origin.config, &route.config) {
                self.metrics
                    .pool_reuses
                    .with_label_values(&[&route.service])
                    .inc();
                return Some((conn.sender, conn.origin));
            }
        }
        None
    }

    /// Keeps a connection whose app connection has ended, if it is ready
    /// for another request and within bounds; else closes it.
    pub async fn put(&self, mut sender: Sender, origin: Origin, drain: &Drain) {
        if self.max_idle == 0 || self.max_total == 0 || drain.is_draining() {
            return;
        }
        if !matches!(
            tokio::time::timeout(READY_WAIT, sender.ready()).await,
            Ok(Ok(()))
        ) {
            return;
        }
        let now = Instant::now();
        let mut state = self.lock();
        // Under the lock: the drain closes them all under it once it has
        // begun, so nothing is added after that.
        if drain.is_draining() || origin.expires <= now {
            return;
        }
        // Connections their peer closed do not count against the bounds.
        self.close_stale(&mut state, now);
        let same = |c: &&Idle| c.origin.is_for(&origin.service, origin.endpoint);
        if state.idle.iter().filter(same).count() >= self.max_idle {
            return;
        }
        if state.idle.len() >= self.max_total {
            self.remove(&mut state, 0);
        }
        self.gauge(&origin.service).inc();
        let expires = origin.expires;
        state.idle.push(Idle { sender, origin });
        if state.sweep_at.is_none_or(|at| expires < at) {
            state.sweep_at = Some(expires);
            self.earlier.notify_one();
        }
    }

    /// Closes each connection when it expires, and all of them when the
    /// drain begins.
    pub async fn sweep(&self, drain: &Drain) {
        loop {
            let next = self.close_stale(&mut self.lock(), Instant::now());
            let due = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = due => {}
                () = self.earlier.notified() => {}
                () = drain.draining() => {
                    self.close_all();
                    return;
                }
            }
        }
    }

    /// Closes every pooled connection.
    pub fn close_all(&self) {
        let mut state = self.lock();
        while !state.idle.is_empty() {
            self.remove(&mut state, 0);
        }
    }

    /// Closes the connections closed or expired at `now`; when the next
    /// one expires.
    fn close_stale(&self, state: &mut State, now: Instant) -> Option<Instant> {
        let mut i = 0;
        while i < state.idle.len() {
            if state.idle[i].usable(now) {
                i += 1;
            } else {
                self.remove(state, i);
            }
        }
        state.sweep_at = state.idle.iter().map(|c| c.origin.expires).min();
        state.sweep_at
    }

    /// Takes entry `i` out; dropping its sender closes the connection.
    fn remove(&self, state: &mut State, i: usize) -> Idle {
        let conn = state.idle.remove(i);
        self.gauge(&conn.origin.service).dec();
        conn
    }

    fn gauge(&self, service: &str) -> IntGauge {
        self.metrics.pool_idle.with_label_values(&[service])
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
