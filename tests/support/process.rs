//! `ward` servers run as an operator runs them: the built binary, logging
//! JSON, listening on an ephemeral loopback port that it announces in its
//! log.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `ward`, killed on drop so a failing test leaves none behind.
pub struct WardProcess(pub Child);

impl Drop for WardProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ward --log-format json ARGS`, without the CA passphrase variables of
/// the environment the tests run in.
fn ward_json(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ward"));
    cmd.args(["--log-format", "json"])
        .args(args)
        .env_remove("WARD_CA_PASSPHRASE")
        .env_remove("WARD_CA_PASSPHRASE_FILE");
    cmd
}

/// The JSON log lines of a [`WardProcess`] so far.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Value>>>);

impl Log {
    /// Lines whose message starts with `message`.
    pub fn lines(&self, message: &str) -> Vec<Value> {
        let lines = self.0.lock().unwrap();
        lines.iter().filter(|l| says(l, message)).cloned().collect()
    }

    /// Waits (20 s at most) for the first line whose message starts with
    /// `message`.
    pub fn wait_for(&self, message: &str) -> Value {
        self.wait_until(&format!("a log line {message:?}"), |lines| {
            lines.iter().find(|l| says(l, message)).cloned()
        })
    }

    /// Waits (20 s at most) until `found` finds something in the lines so
    /// far; panics naming `what` if it never does.
    fn wait_until<T>(&self, what: &str, found: impl Fn(&[Value]) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(t) = found(&self.0.lock().unwrap()) {
                return t;
            }
            assert!(Instant::now() < deadline, "no {what} within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether a log line's message starts with `message`.
fn says(line: &Value, message: &str) -> bool {
    let text = line["fields"]["message"].as_str().unwrap_or("");
    text.starts_with(message)
}

/// Spawns `cmd`, collecting its JSON log lines; they are also copied into
/// the test's output (shown when the test fails).
fn spawn_logged(mut cmd: Command) -> (WardProcess, Log) {
    let mut child = cmd.stderr(Stdio::piped()).spawn().expect("spawn ward");
    let stderr = child.stderr.take().unwrap();
    let log = Log::default();
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("ward: {line}");
            if let Ok(json) = serde_json::from_str::<Value>(&line) {
                lines.0.lock().unwrap().push(json);
            }
        }
    });
    (WardProcess(child), log)
}

/// Spawns `cmd` and waits (20 s at most) for the log line announcing its
/// listener.
fn spawn_listening(cmd: Command) -> (WardProcess, SocketAddr) {
    let (process, log) = spawn_logged(cmd);
    let listen = log.wait_until("listener announced", |lines| {
        lines
            .iter()
            .find_map(|l| l["fields"]["listen"].as_str()?.parse().ok())
    });
    (process, listen)
}

/// `ward proxy ARGS` run by `prlimit --nofile=NOFILE` (`SOFT:HARD`), its
/// admin server on an ephemeral loopback port: the process, its log, and
/// its admin address once it listens.
pub fn proxy_with_nofile(nofile: &str, args: &[&str]) -> (WardProcess, Log, SocketAddr) {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_ward"))
        .args(["--log-format", "json", "proxy", "--admin", "127.0.0.1:0"])
        .args(args);
    let (process, log) = spawn_logged(cmd);
    let listening = log.wait_for("proxy listening");
    // `admin` is logged as `Some(ADDR)`.
    let admin = listening["fields"]["admin"].as_str().unwrap();
    let admin = admin.trim_start_matches("Some(").trim_end_matches(')');
    (process, log, admin.parse().unwrap())
}

/// `ward ca serve ARGS` (at least `--dir`) on an ephemeral loopback port,
/// with `env` added to the environment.
pub fn ca_serve(args: &[&str], env: &[(&str, &str)]) -> (WardProcess, SocketAddr) {
    let mut cmd = ward_json(&["ca", "serve", "--listen", "127.0.0.1:0"]);
    cmd.args(args).envs(env.iter().copied());
    spawn_listening(cmd)
}

/// `ward injector` on an ephemeral loopback port, serving the certificate
/// and key in these files and reading them again every second.
pub fn injector(cert: &Path, key: &Path) -> (WardProcess, SocketAddr) {
    injector_with_env(cert, key, &[])
}

/// [`injector`] with `env` added to its environment (`WARD_INJECT_*`).
pub fn injector_with_env(
    cert: &Path,
    key: &Path,
    env: &[(&str, &str)],
) -> (WardProcess, SocketAddr) {
    let mut cmd = ward_json(&["injector", "--listen", "127.0.0.1:0"]);
    cmd.arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .args(["--tls-reload-interval", "1s"])
        .envs(env.iter().copied());
    spawn_listening(cmd)
}
