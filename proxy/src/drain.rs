//! One drain mechanism around every listener and connection.
//!
//! On SIGTERM: listeners stop accepting and `/ready` reports 503 at once;
//! open connections go on until they end by themselves or the drain timeout
//! passes; then the remaining ones are closed. A connection holds a
//! [`ConnectionGuard`] for its whole life, so the drain knows when none is left.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

#[derive(Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

struct Inner {
    draining: watch::Sender<bool>,
    closing: watch::Sender<bool>,
    active: AtomicUsize,
    idle: Notify,
}

/// Held by each connection; dropping it tells the drain one fewer is open.
pub struct ConnectionGuard {
    inner: Arc<Inner>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.inner.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

impl Drain {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                draining: watch::channel(false).0,
                closing: watch::channel(false).0,
                active: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }

    pub fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    /// Resolves when the drain starts (listeners stop accepting).
    pub async fn draining(&self) {
        let mut rx = self.inner.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Resolves when open connections must close now.
    pub async fn closing(&self) {
        let mut rx = self.inner.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    pub fn connection(&self) -> ConnectionGuard {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard {
            inner: self.inner.clone(),
        }
    }

    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Starts the drain and waits until every connection ended or `timeout`
    /// passed, then tells the rest to close. Returns how many were cut.
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.inner.draining.send_replace(true);
        let all_done = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.active() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let cut = match tokio::time::timeout(timeout, all_done).await {
            Ok(()) => 0,
            Err(_) => self.active(),
        };
        self.inner.closing.send_replace(true);
        cut
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}
