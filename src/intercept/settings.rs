//! What `ward init` redirects and what it leaves alone, checked before
//! anything is touched: a bad flag must fail the init container with a clear
//! message, not half-program a pod.

use super::{Cidr, Family};

/// The sidecar's ports and the traffic that must bypass it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Inbound TCP is redirected here (the sidecar's inbound listener).
    pub inbound_port: u16,
    /// Outbound TCP is redirected here (the sidecar's outbound listener).
    pub outbound_port: u16,
    /// Never redirected inbound, so kubelet probes and Prometheus reach the
    /// sidecar's admin server even when the sidecar's mTLS path is down.
    pub admin_port: u16,
    /// The sidecar's own connections (matched by socket owner) go out as they
    /// are; redirecting them back into the sidecar would loop forever.
    pub proxy_uid: u32,
    /// Optionally also exempt sockets carrying this SO_MARK.
    pub proxy_mark: Option<u32>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<Cidr>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("{0} must be a port from 1 to 65535, not 0")]
    PortZero(&'static str),
    #[error(
        "{0} and {1} are both {2}: the sidecar needs a different port for each, \
         or one kind of traffic would be sent to the wrong listener"
    )]
    SamePort(&'static str, &'static str, u16),
    #[error(
        "--proxy-uid 0 would exempt every process running as root from interception; \
         run the sidecar as its own user (the default is 1337)"
    )]
    RootUid,
    #[error(
        "--proxy-mark 0 would match every unmarked socket and exempt all traffic; \
         use a non-zero mark that only the sidecar sets"
    )]
    MarkZero,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            inbound_port: 15006,
            outbound_port: 15001,
            admin_port: 15020,
            proxy_uid: 1337,
            proxy_mark: None,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
        }
    }
}

impl Settings {
    /// Checks every value, then sorts and de-duplicates the exclusion lists so
    /// that the same settings always produce the same rules.
    pub fn validated(mut self) -> Result<Self, SettingsError> {
        let ports = [
            ("--inbound-port", self.inbound_port),
            ("--outbound-port", self.outbound_port),
            ("--admin-port", self.admin_port),
        ];
        for (flag, port) in ports {
            if port == 0 {
                return Err(SettingsError::PortZero(flag));
            }
        }
        for (i, (a, pa)) in ports.iter().enumerate() {
            if let Some((b, _)) = ports[i + 1..].iter().find(|(_, pb)| pb == pa) {
                return Err(SettingsError::SamePort(a, b, *pa));
            }
        }
        if self.exclude_inbound_ports.contains(&0) {
            return Err(SettingsError::PortZero("--exclude-inbound-ports"));
        }
        if self.exclude_outbound_ports.contains(&0) {
            return Err(SettingsError::PortZero("--exclude-outbound-ports"));
        }
        if self.proxy_uid == 0 {
            return Err(SettingsError::RootUid);
        }
        if self.proxy_mark == Some(0) {
            return Err(SettingsError::MarkZero);
        }
        for list in [
            &mut self.exclude_inbound_ports,
            &mut self.exclude_outbound_ports,
        ] {
            list.sort_unstable();
            list.dedup();
        }
        self.exclude_outbound_cidrs.sort_unstable();
        self.exclude_outbound_cidrs.dedup();
        Ok(self)
    }

    /// The excluded CIDRs of one family (an IPv4 block means nothing to ip6tables).
    pub fn excluded_cidrs(&self, family: Family) -> impl Iterator<Item = &Cidr> {
        self.exclude_outbound_cidrs
            .iter()
            .filter(move |c| c.family() == family)
    }
}

/// A comma-separated port list as flags and environment variables carry it
/// (`22,9100`); empty means none, since pod templates often render `""`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

impl std::str::FromStr for PortList {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        list(text, |item| {
            item.parse::<u16>().map_err(|_| {
                format!("{item:?} is not a port (expected comma-separated numbers from 1 to 65535)")
            })
        })
        .map(PortList)
    }
}

/// A comma-separated CIDR list (`10.0.0.0/8,fd00::/8`); empty means none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<Cidr>);

impl std::str::FromStr for CidrList {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        list(text, |item| item.parse::<Cidr>().map_err(|e| e.to_string())).map(CidrList)
    }
}

fn list<T>(text: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(parse)
        .collect()
}

/// A socket mark as `iptables` accepts it: decimal or `0x` hex.
pub fn parse_mark(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("{text:?} is not a 32-bit mark (decimal or 0x hex, e.g. 0x539)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Settings::default().validated(), Ok(Settings::default()));
    }

    #[test]
    fn zero_and_clashing_ports_are_refused() {
        let with = |f: fn(&mut Settings)| {
            let mut s = Settings::default();
            f(&mut s);
            s.validated().unwrap_err().to_string()
        };
        assert_eq!(
            with(|s| s.inbound_port = 0),
            "--inbound-port must be a port from 1 to 65535, not 0"
        );
        assert!(
            with(|s| s.exclude_outbound_ports = vec![80, 0])
                .starts_with("--exclude-outbound-ports")
        );
        assert!(with(|s| s.exclude_inbound_ports = vec![0]).starts_with("--exclude-inbound-ports"));
        assert!(
            with(|s| s.outbound_port = 15006)
                .starts_with("--inbound-port and --outbound-port are both 15006")
        );
        assert!(
            with(|s| s.admin_port = 15001)
                .starts_with("--outbound-port and --admin-port are both 15001")
        );
        assert!(with(|s| s.proxy_uid = 0).contains("every process running as root"));
        assert!(with(|s| s.proxy_mark = Some(0)).contains("every unmarked socket"));
    }

    #[test]
    fn exclusions_are_sorted_and_deduplicated() {
        let s = Settings {
            exclude_inbound_ports: vec![9100, 22, 9100],
            exclude_outbound_cidrs: vec![
                "fd00::/8".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ],
            ..Settings::default()
        }
        .validated()
        .unwrap();
        assert_eq!(s.exclude_inbound_ports, vec![22, 9100]);
        let v4: Vec<String> = s
            .excluded_cidrs(Family::V4)
            .map(|c| c.to_string())
            .collect();
        let v6: Vec<String> = s
            .excluded_cidrs(Family::V6)
            .map(|c| c.to_string())
            .collect();
        assert_eq!(v4, ["10.0.0.0/8"]);
        assert_eq!(v6, ["fd00::/8"]);
    }

    #[test]
    fn lists_may_be_empty_but_not_wrong() {
        assert_eq!("".parse::<PortList>(), Ok(PortList(vec![])));
        assert_eq!(
            " 22, 9100 ,".parse::<PortList>(),
            Ok(PortList(vec![22, 9100]))
        );
        assert!(
            "22,ssh"
                .parse::<PortList>()
                .unwrap_err()
                .contains("\"ssh\" is not a port")
        );
        assert!("70000".parse::<PortList>().is_err());
        assert_eq!("".parse::<CidrList>(), Ok(CidrList(vec![])));
        assert_eq!(
            "10.0.0.0/8,fd00::/8".parse::<CidrList>().map(|l| l.0.len()),
            Ok(2)
        );
        assert!(
            "10.0.0.0/8,10.0.0.0/99"
                .parse::<CidrList>()
                .unwrap_err()
                .contains("bad CIDR")
        );
    }

    #[test]
    fn marks_in_decimal_or_hex() {
        assert_eq!(parse_mark("1337"), Ok(1337));
        assert_eq!(parse_mark("0x539"), Ok(0x539));
        assert!(
            parse_mark("0xZZ")
                .unwrap_err()
                .contains("not a 32-bit mark")
        );
        assert!(parse_mark("4294967296").is_err());
    }
}
