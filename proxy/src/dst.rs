//! Where an accepted connection was headed. Explicit mode knows it from the
//! command line; transparent mode (iptables REDIRECT) will recover it from
//! the socket with SO_ORIGINAL_DST. Listeners ask only this trait.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

pub trait OriginalDst: Send + Sync + 'static {
    fn original_dst(&self, conn: &TcpStream) -> io::Result<SocketAddr>;
}

/// Explicit mode: every connection on this listener goes to one address.
pub struct Fixed(pub SocketAddr);

impl OriginalDst for Fixed {
    fn original_dst(&self, _conn: &TcpStream) -> io::Result<SocketAddr> {
        Ok(self.0)
    }
}
