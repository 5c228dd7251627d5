//! Every connection the proxy originates (to the CA, to other sidecars, to
//! its app, to egress destinations) is dialed here. With `--mark`, each
//! carries that SO_MARK, so `ward init --proxy-mark` can exempt the proxy's
//! own traffic from interception by mark instead of (or besides) its UID.

use std::io;
use std::net::SocketAddr;

use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Debug, Clone, Copy, Default)]
pub struct Dialer {
    mark: Option<u32>,
}

impl Dialer {
    /// Checks at once that the mark can be set (it needs CAP_NET_ADMIN), so
    /// a missing capability stops the proxy at start instead of failing
    /// every connection later.
    pub fn new(mark: Option<u32>) -> io::Result<Self> {
        if let Some(mark) = mark {
            if mark == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "mark 0 is what every unmarked socket has; use a non-zero mark",
                ));
            }
            let probe = TcpSocket::new_v4()?;
            setsockopt(&probe, sockopt::Mark, &mark).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("cannot set socket mark {mark:#x} ({e}); it needs CAP_NET_ADMIN"),
                )
            })?;
        }
        Ok(Self { mark })
    }

    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let Some(mark) = self.mark else {
            return TcpStream::connect(addr).await;
        };
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        setsockopt(&socket, sockopt::Mark, &mark)?;
        socket.connect(addr).await
    }

    /// `host:port`, resolved; each address in turn until one connects.
    pub async fn connect_host(&self, authority: &str) -> io::Result<TcpStream> {
        let mut last = None;
        for addr in tokio::net::lookup_host(authority).await? {
            match self.connect(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{authority} has no address"),
            )
        }))
    }
}
