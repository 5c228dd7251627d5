//! Which iptables ward programs, and running it. A node can have rules in
//! two iptables implementations at once (nf_tables and the legacy xtables);
//! the kernel runs both, but each one's tools see only its own rules, and how
//! the two interleave with kube-proxy's or the CNI's rules is hard to reason
//! about. Like Istio, ward therefore uses the backend that already holds rules
//! in this namespace, and nf_tables when both are empty.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Family;
use super::save::count_rules;

/// Seconds `iptables-restore -w` waits for the xtables lock (legacy only;
/// nft accepts and ignores it).
const LOCK_WAIT_SECS: &str = "5";

/// Where the tools live when PATH lacks the sbin directories (Debian's PATH
/// for non-root users does, and `--dry-run` must work for them).
const SBIN_DIRS: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/local/sbin"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

/// The backend `ward init` settled on and why, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChoice {
    pub backend: Backend,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error(
        "{0} not found (looked in PATH and {dirs}): install it with `apt-get install iptables` \
         (Debian/Ubuntu) or your distribution's iptables package",
        dirs = SBIN_DIRS.join(", ")
    )]
    Missing(String),
    #[error("cannot run {0}: {1}")]
    Spawn(String, #[source] std::io::Error),
    #[error("`{command}` failed ({status}): {stderr}{hint}", hint = hint(stderr))]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// A sentence on the usual causes of a tool's failure, after its own message.
fn hint(stderr: &str) -> &'static str {
    if stderr.contains("Permission denied") || stderr.contains("Operation not permitted") {
        "\n  hint: ward init needs root with CAP_NET_ADMIN in the pod's network namespace \
         (try --dry-run to see the rules without applying them)"
    } else if stderr.contains("does not exist") || stderr.contains("insmod") {
        "\n  hint: the kernel seems to lack the nat table for this backend \
         (modules iptable_nat/ip6table_nat for legacy, nft_nat/nft_chain_nat for nft)"
    } else {
        ""
    }
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    /// e.g. `iptables-nft-save`, `ip6tables-legacy-restore`.
    pub fn tool(self, family: Family, verb: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        format!("{base}-{}-{verb}", self.name())
    }

    /// Whether both the save and the restore tool of `family` are installed.
    pub fn installed(self, family: Family) -> bool {
        find_tool(&self.tool(family, "save")).is_some()
            && find_tool(&self.tool(family, "restore")).is_some()
    }

    /// The current `nat` table of `family`, as `*-save -t nat` prints it.
    pub fn read_nat(self, family: Family) -> Result<String, InterceptError> {
        run(&self.tool(family, "save"), &["-t", "nat"], None)
    }

    /// Applies restore input to `family` in one transaction, leaving every
    /// table and rule it does not mention alone.
    pub fn restore(self, family: Family, input: &str) -> Result<(), InterceptError> {
        run(
            &self.tool(family, "restore"),
            &self.restore_args(),
            Some(input),
        )
        .map(drop)
    }

    pub fn restore_args(self) -> [&'static str; 3] {
        ["--noflush", "-w", LOCK_WAIT_SECS]
    }

    /// Rules this backend holds in any table, IPv4 and (when installed) IPv6.
    fn rule_count(self) -> Result<usize, InterceptError> {
        let mut total = count_rules(&run(&self.tool(Family::V4, "save"), &[], None)?);
        if find_tool(&self.tool(Family::V6, "save")).is_some() {
            total += count_rules(&run(&self.tool(Family::V6, "save"), &[], None)?);
        }
        Ok(total)
    }
}

/// The backend to use: `requested` if given, else the one already in use.
pub fn choose(requested: Option<Backend>) -> Result<BackendChoice, InterceptError> {
    if let Some(backend) = requested {
        return Ok(BackendChoice {
            backend,
            reason: format!("requested with --backend {}", backend.name()),
        });
    }
    let nft = Backend::Nft.installed(Family::V4);
    let legacy = Backend::Legacy.installed(Family::V4);
    let only = |backend: Backend, other: Backend| BackendChoice {
        backend,
        reason: format!("{} is not installed", other.tool(Family::V4, "restore")),
    };
    match (nft, legacy) {
        (false, false) => Err(InterceptError::Missing(
            "iptables-nft-restore or iptables-legacy-restore".into(),
        )),
        (true, false) => Ok(only(Backend::Nft, Backend::Legacy)),
        (false, true) => Ok(only(Backend::Legacy, Backend::Nft)),
        (true, true) => Ok(by_rule_count(
            Backend::Nft.rule_count(),
            Backend::Legacy.rule_count(),
        )),
    }
}

/// The detection rule, apart from running the tools: the backend holding
/// more rules wins; nft on a tie, and when the rules cannot be read (the
/// apply step then reports the tool's own error).
pub fn by_rule_count(
    nft: Result<usize, InterceptError>,
    legacy: Result<usize, InterceptError>,
) -> BackendChoice {
    let rules = |n: usize| match n {
        0 => "none".to_string(),
        1 => "1 rule".to_string(),
        n => format!("{n} rules"),
    };
    let (backend, reason) = match (nft, legacy) {
        (Ok(0), Ok(0)) => (
            Backend::Nft,
            "no rules in either backend; nft is the default".to_string(),
        ),
        (Ok(n), Ok(l)) if l > n => (
            Backend::Legacy,
            format!("{} already present there; nft had {}", rules(l), rules(n)),
        ),
        (Ok(n), Ok(l)) => (
            Backend::Nft,
            format!(
                "{} already present there; legacy had {}",
                rules(n),
                rules(l)
            ),
        ),
        (Err(e), _) | (_, Err(e)) => (
            Backend::Nft,
            format!(
                "could not count the rules in use: {}; assuming nft",
                first_line(&e.to_string())
            ),
        ),
    };
    BackendChoice { backend, reason }
}

/// Whether `ward init` can program interception here (an iptables
/// backend is installed), and if not, what to install.
pub fn availability() -> Result<(), String> {
    if Backend::Nft.installed(Family::V4) || Backend::Legacy.installed(Family::V4) {
        Ok(())
    } else {
        Err("iptables is not installed (Debian: apt-get install iptables)".into())
    }
}

/// The first line of a message (tools' errors can run on with hints).
pub fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// Whether the kernel has IPv6 enabled in this network namespace.
pub fn ipv6_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
        .is_ok_and(|v| v.trim() == "0")
}

/// `name` in PATH or one of the sbin directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `tool args`, feeding `stdin`; its stdout, or its stderr as an error.
fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String, InterceptError> {
    let path = find_tool(tool).ok_or_else(|| InterceptError::Missing(tool.to_string()))?;
    let command = std::iter::once(tool)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(&path)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| InterceptError::Spawn(tool.to_string(), e))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error means the tool exited early; its status and stderr say why.
        let _ = pipe.write_all(input.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|e| InterceptError::Spawn(tool.to_string(), e))?;
    if !output.status.success() {
        return Err(InterceptError::Failed {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(stderr: &str) -> InterceptError {
        InterceptError::Failed {
            command: "iptables-legacy-save".into(),
            status: "exit status: 1".into(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn tool_names() {
        assert_eq!(Backend::Nft.tool(Family::V4, "save"), "iptables-nft-save");
        assert_eq!(
            Backend::Legacy.tool(Family::V6, "restore"),
            "ip6tables-legacy-restore"
        );
    }

    #[test]
    fn detection_prefers_the_backend_in_use() {
        let c = by_rule_count(Ok(0), Ok(3));
        assert_eq!(c.backend, Backend::Legacy);
        assert_eq!(c.reason, "3 rules already present there; nft had none");
        let c = by_rule_count(Ok(1), Ok(0));
        assert_eq!(c.backend, Backend::Nft);
        assert_eq!(c.reason, "1 rule already present there; legacy had none");
        let c = by_rule_count(Ok(0), Ok(0));
        assert_eq!(c.backend, Backend::Nft);
        assert!(c.reason.contains("nft is the default"));
        let c = by_rule_count(Ok(2), Ok(2));
        assert_eq!(c.backend, Backend::Nft);
        let c = by_rule_count(Err(failed("Permission denied (you must be root)")), Ok(0));
        assert_eq!(c.backend, Backend::Nft);
        assert!(c.reason.contains("assuming nft"), "{}", c.reason);
    }

    #[test]
    fn failures_carry_a_hint() {
        let e = failed("iptables-legacy-save: Permission denied (you must be root)").to_string();
        assert!(e.contains("needs root with CAP_NET_ADMIN"), "{e}");
        let e = failed("Table does not exist (do you need to insmod?)").to_string();
        assert!(e.contains("lack the nat table"), "{e}");
        assert!(
            InterceptError::Missing("iptables-nft-save".into())
                .to_string()
                .contains("apt-get install iptables")
        );
    }

    #[test]
    fn a_missing_tool_is_reported_not_run() {
        let e = run("ward-no-such-tool-save", &[], None).unwrap_err();
        assert!(matches!(e, InterceptError::Missing(_)), "{e}");
    }
}
