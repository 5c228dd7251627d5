//! What can go wrong while building or using a testbed. Every message names
//! the command or file involved, so a failing test says what to look at.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    #[error("pods are not available here: {0}")]
    Unavailable(String),
    #[error("invalid pod name {0:?}: use 1-20 characters from a-z, 0-9 and '-'")]
    InvalidName(String),
    #[error("pod {0:?} already exists in this testbed")]
    DuplicatePod(String),
    #[error("the testbed's /24 has no address left for another pod")]
    NoAddressLeft,
    #[error(
        "{0} is not a cluster IP: use an address in 10.96.0.0/16, which pods route via the bridge namespace"
    )]
    NotAServiceIp(std::net::Ipv4Addr),
    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{what} did not finish within {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("{what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("waiting for `{command}`: {source}")]
    Wait {
        command: String,
        source: std::io::Error,
    },
    #[error("tcpdump did not start capturing within {after:?}; its stderr: {stderr}")]
    CaptureNotReady { after: Duration, stderr: String },
}
