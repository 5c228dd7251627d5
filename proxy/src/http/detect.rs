//! Protocol detection: read the first bytes (up to a timeout: short on
//! ports declared `detect`, longer where HTTP is declared and only its
//! version is unknown) and decide HTTP/1, HTTP/2 (prior knowledge) or opaque
//! TCP. Whatever was read is handed back in a [`Rewind`] so nothing is lost.
//! A client that sends nothing within the timeout (a server-speaks-first
//! protocol) is opaque: declare such ports `tcp` to skip the wait.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Opaque,
}

/// What the bytes so far say, or `None` if more are needed to tell.
fn classify(buf: &[u8]) -> Option<Detected> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (buf.len() >= H2_PREFACE.len()).then_some(Detected::Http2);
    }
    let mut undecided = false;
    for m in METHODS {
        let n = buf.len().min(m.len());
        if buf[..n] == m[..n] {
            if buf.len() >= m.len() {
                return Some(Detected::Http1);
            }
            undecided = true;
        }
    }
    (!undecided).then_some(Detected::Opaque)
}

/// Reads until the protocol is known or `timeout` passes.
pub async fn sniff<S: AsyncRead + Unpin>(
    mut stream: S,
    timeout: Duration,
) -> io::Result<(Detected, Rewind<S>)> {
    let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
    let deadline = tokio::time::Instant::now() + timeout;
    let detected = loop {
        if let Some(d) = (!buf.is_empty()).then(|| classify(&buf)).flatten() {
            break d;
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => break Detected::Opaque, // silent client: server speaks first
            Ok(Ok(0)) => break Detected::Opaque,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok((detected, Rewind::new(buf.freeze(), stream)))
}

/// A stream that first replays bytes already read from it.
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classifies_by_first_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"DELETE /x"), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Detected::Http2)
        );
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(b"\x16\x03\x01"), Some(Detected::Opaque)); // TLS
        assert_eq!(classify(b"SSH-2.0"), Some(Detected::Opaque));
        assert_eq!(classify(b"GETX"), Some(Detected::Opaque));
    }

    #[tokio::test]
    async fn replays_what_it_read() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let (detected, mut rewound) = sniff(server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(detected, Detected::Http1);
        let mut all = vec![0u8; 18];
        rewound.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn silent_clients_are_opaque_after_the_timeout() {
        let (_client, server) = tokio::io::duplex(64);
        let (detected, _) = sniff(server, Duration::from_millis(50)).await.unwrap();
        assert_eq!(detected, Detected::Opaque);
    }
}
