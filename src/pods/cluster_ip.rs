//! kube-proxy's part of a Kubernetes node, emulated in the testbed's bridge
//! namespace: a Service's cluster IP and port, DNAT'ed to pod addresses, so
//! a test sees what a sidecar sees when its app dials a Service.
//!
//! ```text
//!  pod A                    bridge netns (the node)                  pod B
//!  10.96.0.20:80 ──route──▶ br0 10.77.N.1
//!  via 10.77.N.1            PREROUTING -d 10.96.0.20 --dport 80
//!                             -j SVC-10.96.0.20-80 -j DNAT ──────▶ 10.77.N.3:8080
//!                           POSTROUTING DNAT'ed -j MASQUERADE (from 10.77.N.1)
//! ```
//!
//! Every pod routes the service range (10.96.0.0/16) via the bridge
//! namespace's address on `br0` (see `Testbed::add_pod`); the first cluster
//! IP turns on forwarding there and adds the masquerade rule. Each cluster
//! IP has a chain of its own, rewritten whole by every
//! [`ClusterIps::set`], as kube-proxy's sync rewrites its rules: with
//! several backends each connection picks one at random (`-m statistic`,
//! as kube-proxy does); with none, connections to it fail, since the bridge
//! namespace has no route for the service range itself.
//!
//! Why masquerade: the chosen pod answers the caller directly across the
//! bridge, and nothing would undo the DNAT on that answer unless the
//! kernel-wide `br_netfilter` module passes bridged frames through the
//! bridge namespace's conntrack (nodes with a bridge CNI load it; a testbed
//! must not depend on it). SNAT to `.1` sends the answer back through the namespace
//! that made the DNAT, as kube-proxy's `--masquerade-all` does. The
//! receiving pod therefore sees connections from `10.77.N.1`; ward
//! authorizes by certificate, not by address.
//!
//! Everything lives in the bridge namespace and goes with it.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use super::testbed::{BRIDGE_IFACE, lock};
use super::{PodsError, host};

/// Cluster IPs come from 10.96.0.0/16, which every pod routes via the
/// bridge namespace.
const SERVICE_NET: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 0);
const SERVICE_PREFIX: u32 = 16;

/// `10.96.0.0/16`, for the pods' route.
pub(crate) fn service_range() -> String {
    format!("{SERVICE_NET}/{SERVICE_PREFIX}")
}

fn is_service_ip(ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - SERVICE_PREFIX);
    u32::from(ip) & mask == u32::from(SERVICE_NET)
}

/// The cluster IPs of one testbed.
#[derive(Default)]
pub(crate) struct ClusterIps {
    /// Those set so far: each has its chain and the jump into it.
    applied: Mutex<BTreeSet<SocketAddrV4>>,
}

impl ClusterIps {
    /// Makes connections to `service` lead to one of `backends`, replacing
    /// what it led to before. The rules applied are left in `rules_file`.
    pub(crate) fn set(
        &self,
        bridge_netns: &str,
        rules_file: &Path,
        service: SocketAddrV4,
        backends: &[SocketAddrV4],
    ) -> Result<(), PodsError> {
        if !is_service_ip(*service.ip()) {
            return Err(PodsError::NotAServiceIp(*service.ip()));
        }
        let mut applied = lock(&self.applied);
        let chain = chain(service);
        // `:CHAIN` creates the chain or flushes it; --noflush keeps the rest.
        let mut rules = format!("*nat\n:{chain} - [0:0]\n");
        if applied.is_empty() {
            // The DNAT'ed packet leaves by the interface it came in on; a
            // redirect would send the pod straight to a backend that does
            // not own the cluster IP.
            let br_redirects = format!("net.ipv4.conf.{BRIDGE_IFACE}.send_redirects=0");
            host::ip([
                "netns",
                "exec",
                bridge_netns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                &br_redirects,
            ])?;
            rules.push_str("-A POSTROUTING -m conntrack --ctstate DNAT -j MASQUERADE\n");
        }
        if !applied.contains(&service) {
            rules.push_str(&format!(
                "-A PREROUTING -d {}/32 -p tcp -m tcp --dport {} -j {chain}\n",
                service.ip(),
                service.port()
            ));
        }
        for (i, backend) in backends.iter().enumerate() {
            // Of the n backends left, this one with probability 1/n: an
            // even spread over all of them.
            let left = backends.len() - i;
            let pick = if left > 1 {
                format!(
                    "-m statistic --mode random --probability {:.10} ",
                    1.0 / left as f64
                )
            } else {
                String::new()
            };
            rules.push_str(&format!(
                "-A {chain} -p tcp {pick}-j DNAT --to-destination {backend}\n"
            ));
        }
        rules.push_str("COMMIT\n");
        std::fs::write(rules_file, rules).map_err(|source| PodsError::File {
            what: "writing",
            path: rules_file.to_owned(),
            source,
        })?;
        host::run(
            Command::new("ip")
                .args(["netns", "exec", bridge_netns])
                .args(["iptables-restore", "-w", "5", "--noflush"])
                .arg(rules_file),
        )?;
        applied.insert(service);
        Ok(())
    }
}

/// How many connections pods have opened to `service` (0 if it was never
/// set): the packets its jump rule matched, since only the first packet of
/// a connection passes the nat table.
pub(crate) fn connections(bridge_netns: &str, service: SocketAddrV4) -> Result<u64, PodsError> {
    let save = host::ip([
        "netns",
        "exec",
        bridge_netns,
        "iptables-save",
        "-c",
        "-t",
        "nat",
    ])?;
    // `[packets:bytes] -A PREROUTING ... -j CHAIN`
    let jump = format!("-j {}", chain(service));
    Ok(save
        .lines()
        .filter(|line| line.contains(" -A PREROUTING ") && line.ends_with(&jump))
        .find_map(|line| line.strip_prefix('[')?.split(':').next()?.parse().ok())
        .unwrap_or(0))
}

/// `SVC-10.96.0.20-80`: at most 23 characters, within iptables' 28.
fn chain(service: SocketAddrV4) -> String {
    format!("SVC-{}-{}", service.ip(), service.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ips_are_the_service_range_only() {
        assert_eq!(service_range(), "10.96.0.0/16");
        assert!(is_service_ip(Ipv4Addr::new(10, 96, 0, 20)));
        assert!(is_service_ip(Ipv4Addr::new(10, 96, 255, 255)));
        assert!(!is_service_ip(Ipv4Addr::new(10, 97, 0, 20)));
        assert!(!is_service_ip(Ipv4Addr::new(10, 77, 0, 2)));
    }

    #[test]
    fn chain_names_fit_iptables() {
        let longest = SocketAddrV4::new(Ipv4Addr::new(10, 96, 255, 255), 65535);
        assert_eq!(chain(longest), "SVC-10.96.255.255-65535");
        assert!(chain(longest).len() <= 28);
    }
}
