//! CIDR blocks for `--exclude-outbound-cidrs`. Parsed strictly (no host bits
//! set) so that what ward writes is exactly what `iptables-save` prints back:
//! a rule for `10.1.2.3/8` would be stored as `10.0.0.0/8`, and the user
//! would be left guessing which one they meant.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::Family;

/// An IPv4 or IPv6 network: address with all host bits zero, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("bad CIDR {0:?}: {1:?} is not an IP address (expected e.g. 10.0.0.0/8 or fd00::/8)")]
    Address(String, String),
    #[error("bad CIDR {0:?}: the prefix length must be a number from 0 to {1}")]
    Prefix(String, u8),
    #[error("bad CIDR {0:?}: host bits are set; did you mean {1}?")]
    HostBits(String, Cidr),
}

impl Cidr {
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `ADDR/PREFIX`, or a bare address meaning a single host (/32, /128).
    fn from_str(text: &str) -> Result<Self, CidrError> {
        let text = text.trim();
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| CidrError::Address(text.to_string(), addr_text.to_string()))?;
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = match prefix_text {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(CidrError::Prefix(text.to_string(), max)),
            },
        };
        let network = Cidr {
            addr: mask(addr, prefix),
            prefix,
        };
        if network.addr != addr {
            return Err(CidrError::HostBits(text.to_string(), network));
        }
        Ok(network)
    }
}

/// `addr` with every bit after the first `prefix` cleared.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let kept = bits.checked_shr(32 - u32::from(prefix)).unwrap_or(0);
            let kept = kept.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(kept.into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let kept = bits.checked_shr(128 - u32::from(prefix)).unwrap_or(0);
            let kept = kept.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(kept.into())
        }
    }
}

impl fmt::Display for Cidr {
    /// The form `iptables-save` prints: always with the prefix length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> String {
        text.parse::<Cidr>().map(|c| c.to_string()).unwrap()
    }

    #[test]
    fn parses_networks_and_single_hosts() {
        assert_eq!(ok("10.0.0.0/8"), "10.0.0.0/8");
        assert_eq!(ok("0.0.0.0/0"), "0.0.0.0/0");
        assert_eq!(ok("192.168.1.7"), "192.168.1.7/32");
        assert_eq!(ok("fd00::/8"), "fd00::/8");
        assert_eq!(ok("2001:db8::1"), "2001:db8::1/128");
        assert_eq!(ok("::/0"), "::/0");
        assert_eq!(ok(" 10.0.0.0/8 "), "10.0.0.0/8");
        assert_eq!("fd00::/8".parse::<Cidr>().unwrap().family(), Family::V6);
        assert_eq!("10.0.0.0/8".parse::<Cidr>().unwrap().family(), Family::V4);
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        let err = |t: &str| t.parse::<Cidr>().unwrap_err().to_string();
        assert_eq!(
            err("10.0.0.0/33"),
            "bad CIDR \"10.0.0.0/33\": the prefix length must be a number from 0 to 32"
        );
        assert!(err("fd00::/129").contains("from 0 to 128"));
        assert!(err("10.0.0.0/+8").contains("prefix length"));
        assert!(err("10.0.0.0/").contains("prefix length"));
        assert!(err("10.0.0/8").contains("\"10.0.0\" is not an IP address"));
        assert!(err("").contains("is not an IP address"));
        assert_eq!(
            err("10.1.2.3/8"),
            "bad CIDR \"10.1.2.3/8\": host bits are set; did you mean 10.0.0.0/8?"
        );
        assert!(err("fd00::1/8").contains("did you mean fd00::/8?"));
    }
}
