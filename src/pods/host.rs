//! Running the host's tools (`ip`, `kill`) with a bound on how long each may
//! take, and sending signals without `unsafe` (through `kill(1)`).

use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::PodsError;

/// How long one `ip` or `kill` invocation may take.
pub(crate) const TOOL_TIMEOUT: Duration = Duration::from_secs(10);

/// How often bounded waits look again.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// `program args...` as one line, for error messages and logs.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` to completion with captured output, killing it after `timeout`.
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<Output, PodsError> {
    let command = describe(cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| PodsError::Spawn {
            command: command.clone(),
            source,
        })?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    // The pipes must be drained while we wait, so a helper thread owns the child.
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(source)) => Err(PodsError::Wait { command, source }),
        Err(_) => {
            signal(pid, "KILL", false);
            Err(PodsError::Timeout {
                what: format!("`{command}`"),
                after: timeout,
            })
        }
    }
}

/// Runs `cmd` and requires success; returns its stdout.
pub(crate) fn run(cmd: &mut Command) -> Result<String, PodsError> {
    let out = output(cmd, TOOL_TIMEOUT)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(PodsError::Command {
            command: describe(cmd),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `ip ARGS...` in the root namespace (only ever `netns` management: links,
/// routes and rules are always made with `ip -n NETNS`, and other tools run
/// in a testbed's namespace with `ip netns exec NETNS`).
pub(crate) fn ip<I, S>(args: I) -> Result<String, PodsError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run(Command::new("ip").args(args))
}

/// Sends `sig` (a name such as "TERM") to `pid`, or to the process group
/// `pid` leads. Returns whether `kill` reported success; a process that is
/// already gone is not an error for any caller.
pub(crate) fn signal(pid: u32, sig: &str, group: bool) -> bool {
    let target = if group {
        format!("-{pid}")
    } else {
        pid.to_string()
    };
    let spawned = Command::new("kill")
        .args(["-s", sig, "--", &target])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => matches!(wait_child(&mut child, TOOL_TIMEOUT), Ok(Some(s)) if s.success()),
        Err(_) => false,
    }
}

/// Waits up to `timeout` for `child`; `None` if it is still running.
pub(crate) fn wait_child(
    child: &mut Child,
    timeout: Duration,
) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL);
    }
}

/// Whether a process with this pid exists (in our pid namespace).
pub(crate) fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
