//! Processes in pods: what to run ([`PodCommand`]), the handle a test keeps
//! ([`PodProcess`]), and the registry through which the testbed kills them
//! all when it is dropped.
//!
//! Each process runs as `ip netns exec NETNS [setpriv ...] PROGRAM ARGS` in
//! a process group of its own (both `ip` and `setpriv` exec, so the group
//! leader is the program itself), which lets one signal reach whatever it
//! forks. Its stdout and stderr go to files, so a test can read them after
//! the fact and print them when an assertion fails.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::PodsError;
use super::host::{self, POLL};

/// How long [`PodCommand`]s run by `Pod::run` may take unless told otherwise.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of each log file [`PodProcess::logs`] shows (the end of it).
const LOG_TAIL: u64 = 64 * 1024;

/// How long a process gets to die after SIGKILL before we stop waiting.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// A program to run in a pod, built like `std::process::Command`.
#[derive(Debug, Clone)]
pub struct PodCommand {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    uid: Option<u32>,
    current_dir: Option<PathBuf>,
    timeout: Duration,
}

impl PodCommand {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            uid: None,
            current_dir: None,
            timeout: DEFAULT_RUN_TIMEOUT,
        }
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets a variable on top of the (inherited) environment.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs the program as this uid (gid the same, no supplementary groups),
    /// as the proxy runs as 1337.
    pub fn uid(&mut self, uid: u32) -> &mut Self {
        self.uid = Some(uid);
        self
    }

    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.current_dir = Some(dir.as_ref().to_owned());
        self
    }

    /// How long `Pod::run` lets it take (default [`DEFAULT_RUN_TIMEOUT`]).
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    pub(crate) fn run_timeout(&self) -> Duration {
        self.timeout
    }

    /// The program and its arguments, for logs.
    fn describe(&self) -> String {
        let mut line = self.program.to_string_lossy().into_owned();
        for arg in &self.args {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        if let Some(uid) = self.uid {
            line.push_str(&format!(" (uid {uid})"));
        }
        line
    }

    /// The file-name friendly last part of the program's path.
    fn short_name(&self) -> String {
        Path::new(&self.program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(24)
            .collect()
    }

    /// `ip netns exec NETNS [setpriv ...] PROGRAM ARGS`, in its own group.
    fn command_in(&self, netns: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]);
        if let Some(uid) = self.uid {
            cmd.arg("setpriv")
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .args(["--clear-groups", "--"]);
        }
        cmd.arg(&self.program).args(&self.args);
        for (key, value) in &self.envs {
            cmd.env(key, value);
        }
        if let Some(dir) = &self.current_dir {
            cmd.current_dir(dir);
        }
        cmd.stdin(Stdio::null()).process_group(0);
        cmd
    }
}

/// A signal a test may send to a pod process (and its process group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Hup,
    Int,
    Term,
    Kill,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Hup => "HUP",
            Signal::Int => "INT",
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
        }
    }
}

struct Tracked {
    pod: String,
    command: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Tracked {
    /// Signals the process group, but only while its leader is unreaped:
    /// once reaped, its pid (and group id) may belong to someone else.
    fn signal_group(&mut self, sig: Signal) -> bool {
        matches!(self.child.try_wait(), Ok(None)) && host::signal(self.child.id(), sig.name(), true)
    }

    fn logs(&mut self) -> String {
        let state = match self.child.try_wait() {
            Ok(Some(status)) => status.to_string(),
            Ok(None) => "running".to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        format!(
            "=== pod {}: {} [pid {}, {state}]\n--- stdout ({})\n{}\n--- stderr ({})\n{}\n",
            self.pod,
            self.command,
            self.child.id(),
            self.stdout.display(),
            tail(&self.stdout),
            self.stderr.display(),
            tail(&self.stderr),
        )
    }
}

/// The last [`LOG_TAIL`] bytes of a log file, as text.
fn tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|e| format!("(unreadable: {e})"))
}

/// Every process a testbed started, so that its `Drop` can end them.
#[derive(Default)]
pub(crate) struct Registry {
    procs: Mutex<Vec<Tracked>>,
}

impl Registry {
    /// A test that panicked while holding the lock must not stop cleanup.
    fn lock(&self) -> MutexGuard<'_, Vec<Tracked>> {
        self.procs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn spawn<'r>(
        &'r self,
        netns: &str,
        pod: &str,
        cmd: &PodCommand,
        log_dir: &Path,
    ) -> Result<PodProcess<'r>, PodsError> {
        let mut procs = self.lock();
        let base = log_dir.join(format!("{:03}-{pod}-{}", procs.len(), cmd.short_name()));
        let stdout = base.with_extension("stdout");
        let stderr = base.with_extension("stderr");
        let create = |path: &PathBuf| {
            File::create(path).map_err(|source| PodsError::File {
                what: "creating log file",
                path: path.clone(),
                source,
            })
        };
        let mut command = cmd.command_in(netns);
        command.stdout(create(&stdout)?).stderr(create(&stderr)?);
        let child = command.spawn().map_err(|source| PodsError::Spawn {
            command: host::describe(&command),
            source,
        })?;
        let pid = child.id();
        procs.push(Tracked {
            pod: pod.to_string(),
            command: cmd.describe(),
            child,
            stdout,
            stderr,
        });
        Ok(PodProcess {
            registry: self,
            slot: procs.len() - 1,
            pid,
        })
    }

    /// The logs of every process started in `pod` (all pods if `None`).
    pub(crate) fn logs(&self, pod: Option<&str>) -> String {
        self.lock()
            .iter_mut()
            .filter(|t| pod.is_none_or(|p| p == t.pod))
            .map(Tracked::logs)
            .collect()
    }

    /// SIGKILLs every process group still running, then reaps them.
    pub(crate) fn kill_all(&self) {
        let mut procs = self.lock();
        for tracked in procs.iter_mut() {
            tracked.signal_group(Signal::Kill);
        }
        for tracked in procs.iter_mut() {
            let _ = host::wait_child(&mut tracked.child, REAP_TIMEOUT);
        }
    }
}

/// A process running in a pod. It lives until it exits, [`stop`](Self::stop)
/// ends it, or the testbed is dropped; dropping the handle does not end it.
pub struct PodProcess<'tb> {
    registry: &'tb Registry,
    slot: usize,
    pid: u32,
}

impl PodProcess<'_> {
    fn with<T>(&self, f: impl FnOnce(&mut Tracked) -> T) -> T {
        let mut procs = self.registry.lock();
        // Slots are only ever appended, so ours is there.
        f(&mut procs[self.slot])
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its exit status, or `None` while it runs.
    pub fn status(&self) -> Result<Option<ExitStatus>, PodsError> {
        self.with(|t| {
            t.child.try_wait().map_err(|source| PodsError::Wait {
                command: t.command.clone(),
                source,
            })
        })
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait(&self, timeout: Duration) -> Result<ExitStatus, PodsError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.status()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(PodsError::Timeout {
                    what: format!("`{}`", self.with(|t| t.command.clone())),
                    after: timeout,
                });
            }
            thread::sleep(POLL);
        }
    }

    /// Sends `sig` to its process group; false if it had already exited.
    pub fn signal(&self, sig: Signal) -> bool {
        self.with(|t| t.signal_group(sig))
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL.
    pub fn stop(&self, grace: Duration) -> Result<ExitStatus, PodsError> {
        self.signal(Signal::Term);
        match self.wait(grace) {
            Err(PodsError::Timeout { .. }) => {
                self.signal(Signal::Kill);
                self.wait(REAP_TIMEOUT)
            }
            other => other,
        }
    }

    pub fn stdout(&self) -> String {
        self.with(|t| tail(&t.stdout))
    }

    pub fn stderr(&self) -> String {
        self.with(|t| tail(&t.stderr))
    }

    /// Command, state, stdout and stderr in one block, for assertion messages.
    pub fn logs(&self) -> String {
        self.with(Tracked::logs)
    }

    /// Reads both outputs in full, once it has exited.
    pub(crate) fn output(&self, status: ExitStatus) -> Result<Output, PodsError> {
        let (stdout, stderr) = self.with(|t| (t.stdout.clone(), t.stderr.clone()));
        let read = |path: PathBuf| {
            std::fs::read(&path).map_err(|source| PodsError::File {
                what: "reading log file",
                path,
                source,
            })
        };
        Ok(Output {
            status,
            stdout: read(stdout)?,
            stderr: read(stderr)?,
        })
    }
}
