//! Can pods be built here? One answer with a reason, so tests can skip with
//! a message that says what is missing instead of failing obscurely.

use std::process::Command;
use std::sync::OnceLock;

use super::host;
use super::netns::{self, PREFIX};

/// `Ok` if testbeds can be built here, or why not. The check creates (and
/// deletes) one probe namespace with a bridge and a veth pair; the answer is
/// computed once per process.
pub fn availability() -> Result<(), String> {
    static ANSWER: OnceLock<Result<(), String>> = OnceLock::new();
    ANSWER.get_or_init(check_netns).clone()
}

/// As [`availability`], and tcpdump is installed for `Testbed::capture`.
pub fn capture_availability() -> Result<(), String> {
    availability()?;
    tool("tcpdump", "--version", "tcpdump (packet captures)")
}

fn check_netns() -> Result<(), String> {
    match effective_uid() {
        Some(0) => {}
        Some(uid) => {
            return Err(format!(
                "needs root (effective uid is {uid}): network namespaces and veth pairs need CAP_SYS_ADMIN and CAP_NET_ADMIN"
            ));
        }
        None => return Err("cannot read the effective uid from /proc/self/status".into()),
    }
    tool("ip", "-V", "iproute2's `ip`")?;
    tool(
        "setpriv",
        "--version",
        "util-linux's `setpriv` (runs pod processes as another uid)",
    )?;
    tool("kill", "-l", "procps' `kill` (signals pod processes)")?;
    let probe = format!("{PREFIX}{}-probe", std::process::id());
    netns::add(&probe).map_err(|e| format!("cannot create a network namespace: {e}"))?;
    let links = host::ip(["-n", &probe, "link", "add", "br0", "type", "bridge"])
        .and_then(|_| {
            host::ip([
                "-n", &probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
            ])
        })
        .map_err(|e| format!("cannot create a bridge and a veth pair in a namespace: {e}"));
    let deleted =
        netns::delete(&probe).map_err(|e| format!("cannot delete a network namespace: {e}"));
    links.and(deleted)
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn tool(program: &str, arg: &str, what: &str) -> Result<(), String> {
    match host::output(Command::new(program).arg(arg), host::TOOL_TIMEOUT) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{what} is not usable: {e}")),
    }
}
