//! Where a lab process runs: in a network-namespace pod (transparent mode),
//! or in this namespace on a loopback address of its own (explicit mode,
//! for machines without root). The lab asks only this type, so the
//! scenario is the same code in both modes.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::pods::{Pod, PodCommand, PodProcess, Signal, output};

use super::LabError;

pub enum Host<'tb> {
    Pod(Pod<'tb>),
    /// A name (for log files) and a 127.0.0.x address.
    Loopback(String, Ipv4Addr),
}

impl<'tb> Host<'tb> {
    pub fn ip(&self) -> IpAddr {
        match self {
            Self::Pod(pod) => pod.ipv4().into(),
            Self::Loopback(_, ip) => (*ip).into(),
        }
    }

    /// Starts `ward ARGS` here, as `uid` in a pod (loopback hosts run as
    /// the caller). Output goes to files under `logs`.
    pub fn spawn(
        &self,
        ward: &Path,
        args: &[String],
        uid: Option<u32>,
        logs: &Path,
    ) -> Result<Process<'tb>, LabError> {
        match self {
            Self::Pod(pod) => {
                let mut cmd = PodCommand::new(ward);
                cmd.args(args);
                if let Some(uid) = uid {
                    cmd.uid(uid);
                }
                Ok(Process::Pod(pod.spawn(&cmd)?))
            }
            Self::Loopback(name, _) => {
                let log = |stream: &str| {
                    let path = logs.join(format!("{name}-{}.{stream}", args[0]));
                    File::create(&path).map_err(|e| LabError::io("creating", &path, e))
                };
                let child = Command::new(ward)
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(log("out")?)
                    .stderr(log("err")?)
                    .spawn()
                    .map_err(|e| LabError::io("starting", ward, e))?;
                Ok(Process::Local(LocalProcess {
                    child: Mutex::new(child),
                    stderr: logs.join(format!("{name}-{}.err", args[0])),
                }))
            }
        }
    }

    /// Runs `ward ARGS` here to completion (bounded) and returns its stdout.
    pub fn run(&self, ward: &Path, args: &[String]) -> Result<String, LabError> {
        let output = match self {
            Self::Pod(pod) => {
                let mut cmd = PodCommand::new(ward);
                cmd.args(args).timeout(RUN_TIMEOUT);
                pod.run(&cmd)?
            }
            Self::Loopback(..) => run_local(ward, args)?,
        };
        if !output.status.success() {
            return Err(LabError::Command {
                what: format!("ward {}", args.join(" ")),
                detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Every `run` is a short client call or a setup step.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);

/// `ward ARGS` in this namespace, killed if it outlives [`RUN_TIMEOUT`].
pub fn run_local(ward: &Path, args: &[String]) -> Result<std::process::Output, LabError> {
    Ok(output(Command::new(ward).args(args), RUN_TIMEOUT)?)
}

/// A long-running lab process. Pod processes end with their testbed; local
/// ones are killed when this is dropped.
pub enum Process<'tb> {
    Pod(PodProcess<'tb>),
    Local(LocalProcess),
}

impl Process<'_> {
    /// The end of its stderr, for error messages.
    pub fn stderr(&self) -> String {
        match self {
            Self::Pod(p) => p.stderr(),
            Self::Local(p) => std::fs::read_to_string(&p.stderr).unwrap_or_default(),
        }
    }

    pub fn has_exited(&self) -> bool {
        match self {
            Self::Pod(p) => !matches!(p.status(), Ok(None)),
            Self::Local(p) => !matches!(p.child().try_wait(), Ok(None)),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        match self {
            Self::Pod(p) => {
                let _ = p.stop(grace);
            }
            Self::Local(p) => p.stop(grace),
        }
    }

    /// SIGKILL: a crash, not a shutdown.
    pub fn kill(&mut self) {
        match self {
            Self::Pod(p) => {
                p.signal(Signal::Kill);
            }
            Self::Local(p) => p.kill(),
        }
    }
}

pub struct LocalProcess {
    /// Locked only to poll or signal it: waiting for readiness polls it
    /// through a shared reference.
    child: Mutex<Child>,
    stderr: PathBuf,
}

impl LocalProcess {
    fn child(&self) -> MutexGuard<'_, Child> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn kill(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }

    fn stop(&mut self, grace: Duration) {
        let pid = self.child().id();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !matches!(self.child().try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for LocalProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
