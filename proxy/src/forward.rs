//! Carrying bytes between the two sides of a proxied connection: both
//! directions at once, half-close passed through (EOF on one side becomes a
//! write shutdown on the other, the other direction carries on), an idle
//! timeout on the pair, and live byte counters.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;

use crate::Shared;
use crate::metrics::INBOUND;

/// Copy buffer per direction: a full TLS record's worth of plaintext and
/// then some, so a busy stream moves in few, large syscalls.
const BUFFER: usize = 32 * 1024;

/// Read buffer under each TLS stream. rustls pulls at most 4 KiB from its
/// transport per read, so without this a 16 KiB record costs four syscalls.
const TLS_READ_BUFFER: usize = 32 * 1024;

/// The transport to put under a TLS stream.
pub fn tls_transport(tcp: TcpStream) -> BufReader<TcpStream> {
    BufReader::with_capacity(TLS_READ_BUFFER, tcp)
}

/// Why a splice ended early.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Copies `a` <-> `b` until both directions are done, or nothing moved for
/// `idle`. `a_to_b` and `b_to_a`, if given, count bytes as they flow.
pub async fn splice<A, B>(
    a: A,
    b: B,
    idle: Duration,
    a_to_b: Option<IntCounter>,
    b_to_a: Option<IntCounter>,
) -> Result<(), SpliceError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let clock = Arc::<Activity>::default();
    // Each side counts what is read from it; writes are the other's reads.
    let mut a = Metered {
        inner: a,
        reads: a_to_b,
        writes: None,
        clock: clock.clone(),
    };
    let mut b = Metered {
        inner: b,
        reads: b_to_a,
        writes: None,
        clock: clock.clone(),
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, BUFFER, BUFFER);
    tokio::select! {
        res = copy => res.map(|_| ()).map_err(SpliceError::Io),
        () = clock.idle(idle) => Err(SpliceError::Idle(idle)),
    }
}

/// The `flow` labels of the bytes read from the downstream side (whoever
/// opened the connection: the peer sidecar inbound, the app outbound) and
/// from the upstream side; `flow` is always relative to the peer.
pub fn flows(direction: &str) -> (&'static str, &'static str) {
    if direction == INBOUND {
        ("received", "sent")
    } else {
        ("sent", "received")
    }
}

/// [`splice`] with the proxy's idle timeout, bytes counted in
/// `ward_tcp_bytes_total{direction,peer,flow}`.
pub async fn splice_counted<A, B>(
    downstream: A,
    upstream: B,
    direction: &'static str,
    peer: &str,
    shared: &Shared,
) -> Result<(), SpliceError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (down, up) = flows(direction);
    let bytes = |flow| {
        shared
            .metrics
            .bytes
            .with_label_values(&[direction, peer, flow])
    };
    let idle = shared.limits.idle_timeout;
    splice(
        downstream,
        upstream,
        idle,
        Some(bytes(down)),
        Some(bytes(up)),
    )
    .await
}

/// Counts bytes read from and written to `stream`, for connections that
/// are served rather than spliced (HTTP).
pub fn metered<S>(stream: S, reads: IntCounter, writes: IntCounter) -> Metered<S> {
    Metered {
        inner: stream,
        reads: Some(reads),
        writes: Some(writes),
        clock: Arc::<Activity>::default(),
    }
}

/// Whether anything moved on a stream (or a spliced pair) since the idle
/// watcher last looked: a flag, not a timestamp, so the data path reads no
/// clock per read or write. One watcher per `Activity`: looking clears it.
#[derive(Default)]
pub struct Activity {
    moved: AtomicBool,
}

impl Activity {
    fn touch(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`. Looked at every quarter
    /// of `limit` (10 ms at least), and a byte counts from the first look
    /// that sees it, so it fires between `limit` and `limit` + one look
    /// (1.25 × `limit` from 40 ms up) after the last byte.
    pub async fn idle(&self, limit: Duration) {
        let tick = (limit / 4).max(Duration::from_millis(10));
        let mut last_moved = Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            if self.moved.swap(false, Ordering::Relaxed) {
                last_moved = Instant::now();
            } else if last_moved.elapsed() >= limit {
                return;
            }
        }
    }
}

/// A stream that counts what is read from it (and, if asked, what is
/// written to it) and notes activity.
pub struct Metered<S> {
    inner: S,
    reads: Option<IntCounter>,
    writes: Option<IntCounter>,
    clock: Arc<Activity>,
}

impl<S> Metered<S> {
    /// When this stream last moved bytes.
    pub fn activity(&self) -> Arc<Activity> {
        self.clock.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            if let Some(reads) = &self.reads {
                reads.inc_by(n as u64);
            }
            self.clock.touch();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = res {
            if let Some(writes) = &self.writes {
                writes.inc_by(n as u64);
            }
            if n > 0 {
                self.clock.touch();
            }
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
