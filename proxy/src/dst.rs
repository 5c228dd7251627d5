//! Where an accepted connection was headed. Explicit mode knows it from the
//! command line; transparent mode recovers it from the socket, because
//! iptables REDIRECT rewrote the destination to the proxy's port and
//! conntrack remembers the original. Listeners ask only this trait.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::sys::socket::{SockaddrIn, SockaddrIn6, getsockopt, sockopt};
use tokio::net::TcpStream;

pub trait OriginalDst: Send + Sync + 'static {
    fn original_dst(&self, conn: &TcpStream) -> Result<SocketAddr, DstError>;
}

/// Why a connection has no destination to forward to.
#[derive(Debug, thiserror::Error)]
pub enum DstError {
    #[error("cannot recover the original destination: {0}")]
    Lookup(#[from] io::Error),
    #[error("connection aimed at the proxy's own port ({0}); refused to avoid a loop")]
    Loop(SocketAddr),
}

impl DstError {
    /// The `reason` label of `ward_tcp_connection_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Lookup(_) => "no_original_dst",
            Self::Loop(_) => "loop",
        }
    }
}

/// Explicit mode: every connection on this listener goes to one address.
pub struct Fixed(pub SocketAddr);

impl OriginalDst for Fixed {
    fn original_dst(&self, _conn: &TcpStream) -> Result<SocketAddr, DstError> {
        Ok(self.0)
    }
}

/// Transparent inbound: the app listens on loopback at the port the peer
/// dialed on the pod's address.
pub struct LocalApp(pub OwnPorts);

impl OriginalDst for LocalApp {
    fn original_dst(&self, conn: &TcpStream) -> Result<SocketAddr, DstError> {
        let original = so_original_dst(conn)?;
        if self.0.contains(original.port()) {
            return Err(DstError::Loop(original));
        }
        let loopback = match original {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        Ok(SocketAddr::new(loopback, original.port()))
    }
}

/// Transparent outbound: where the app was going.
pub struct Redirected(pub OwnPorts);

impl OriginalDst for Redirected {
    fn original_dst(&self, conn: &TcpStream) -> Result<SocketAddr, DstError> {
        let original = so_original_dst(conn)?;
        // Not redirected (a direct connection to the outbound port), or
        // redirected from one of our own loopback ports.
        let direct = conn.local_addr().is_ok_and(|local| local == original);
        if direct || (original.ip().is_loopback() && self.0.contains(original.port())) {
            return Err(DstError::Loop(original));
        }
        Ok(original)
    }
}

/// `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST` (IPv6), by the family
/// of the accepted socket. A connection that was not redirected reports its
/// own local address.
fn so_original_dst(conn: &TcpStream) -> io::Result<SocketAddr> {
    Ok(match conn.local_addr()? {
        SocketAddr::V4(_) => {
            let raw = getsockopt(conn, sockopt::OriginalDst)?;
            SocketAddr::V4(SocketAddrV4::from(SockaddrIn::from(raw)))
        }
        SocketAddr::V6(_) => {
            let raw = getsockopt(conn, sockopt::Ip6tOriginalDst)?;
            SocketAddr::V6(SocketAddrV6::from(SockaddrIn6::from(raw)))
        }
    })
}

/// The ports the transparent proxy itself listens on. A connection whose
/// original destination is one of them was aimed at the proxy (or not
/// redirected at all); forwarding it would loop, so it is refused.
#[derive(Debug, Clone, Copy)]
pub struct OwnPorts {
    pub inbound: u16,
    pub outbound: u16,
    pub admin: u16,
}

impl OwnPorts {
    pub fn contains(&self, port: u16) -> bool {
        [self.inbound, self.outbound, self.admin].contains(&port)
    }
}
