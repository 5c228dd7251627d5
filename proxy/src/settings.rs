//! What `ward proxy` is told to do (built by the CLI from flags and `WARD_*`
//! variables, or by tests directly).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::identity::IdentityConfig;

/// Resource limits with defaults that suit a sidecar.
#[derive(Debug, Clone)]
pub struct Limits {
    pub handshake_timeout: Duration,
    /// How long a `detect` port waits for the client's first bytes before
    /// treating the connection as opaque TCP.
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// Per listener; more connections wait in the kernel's backlog.
    pub max_connections: usize,
    /// How long after it opened an HTTP/1 mesh connection may still be
    /// taken from the pool by another app connection (docs/pooling.md).
    pub pool_max_age: Duration,
    /// Idle mesh connections kept per endpoint; 0 turns pooling off.
    pub pool_max_idle: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            detect_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(3600),
            max_connections: 10_000,
            pool_max_age: Duration::from_secs(10),
            pool_max_idle: 64,
        }
    }
}

/// `--forward LISTEN=SERVICE[:PORT]`: plaintext from the local app on
/// LISTEN goes to SERVICE over mTLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub listen: SocketAddr,
    pub service: String,
    pub port: Option<u16>,
}

impl std::str::FromStr for Forward {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || {
            format!(
                "invalid --forward {s:?}: expected LISTEN=SERVICE[:PORT], e.g. 127.0.0.1:9001=orders:8080"
            )
        };
        let (listen, target) = s.split_once('=').ok_or_else(usage)?;
        let listen = listen.parse().map_err(|_| usage())?;
        let (service, port) = match target.split_once(':') {
            Some((svc, port)) => (svc, Some(port.parse().map_err(|_| usage())?)),
            None => (target, None),
        };
        if service.is_empty() {
            return Err(usage());
        }
        Ok(Self {
            listen,
            service: service.to_string(),
            port,
        })
    }
}

/// `--inbound LISTEN --app ADDR`: mTLS on LISTEN, forwarded to ADDR.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub listen: SocketAddr,
    pub app: SocketAddr,
}

/// Transparent mode: `ward init`'s iptables rules redirect the pod's TCP to
/// these ports, and the original destination comes from the socket.
#[derive(Debug, Clone)]
pub struct Transparent {
    /// Listens on every address (PREROUTING redirects to the address the
    /// packet arrived on).
    pub inbound_port: u16,
    /// Listens on loopback only (OUTPUT redirects to 127.0.0.1 / ::1), so
    /// the outbound port is never a relay for other hosts.
    pub outbound_port: u16,
    pub egress: Egress,
}

/// What happens to an outbound connection whose destination is not a
/// service in the mesh file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    /// Connect to it as the app asked, in plaintext (counted as `egress`).
    Passthrough,
    /// Close it, count it and log the destination; under the mesh file's
    /// `mode: audit`, let it through as `passthrough` does, counted as
    /// `audit_deny`.
    Deny,
}

impl Egress {
    pub const ALL: [Egress; 2] = [Egress::Deny, Egress::Passthrough];

    /// The name `--egress` and the `ward.dev/egress` annotation use.
    pub fn as_str(self) -> &'static str {
        match self {
            Egress::Passthrough => "passthrough",
            Egress::Deny => "deny",
        }
    }
}

impl std::str::FromStr for Egress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| "must be \"deny\" or \"passthrough\"".to_string())
    }
}

pub struct ProxySettings {
    pub identity: IdentityConfig,
    pub mesh_file: PathBuf,
    pub inbound: Option<Inbound>,
    pub forwards: Vec<Forward>,
    pub transparent: Option<Transparent>,
    /// How the proxy opens its own connections (socket mark).
    pub dialer: crate::dial::Dialer,
    pub admin: SocketAddr,
    pub limits: Limits,
    pub drain_timeout: Duration,
    /// How often the mesh file is checked for changes.
    pub reload_interval: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_names_round_trip() {
        for egress in Egress::ALL {
            assert_eq!(egress.as_str().parse(), Ok(egress));
        }
        for bad in ["Deny", "allow", "", "passthrough "] {
            assert!(bad.parse::<Egress>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_forwards() {
        let f: Forward = "127.0.0.1:9001=orders:8080".parse().unwrap();
        assert_eq!(f.service, "orders");
        assert_eq!(f.port, Some(8080));
        let f: Forward = "[::1]:9001=db".parse().unwrap();
        assert_eq!(f.port, None);
        for bad in [
            "orders",
            "127.0.0.1:9001=",
            "x=orders",
            "127.0.0.1:9001=orders:http",
        ] {
            assert!(bad.parse::<Forward>().is_err(), "{bad}");
        }
    }
}
