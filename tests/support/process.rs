//! `ward` servers run as an operator runs them: the built binary, logging
//! JSON, listening on an ephemeral loopback port that it announces in its
//! log.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// Spawns `cmd` and waits (20 s at most) for the log line announcing its
/// listener. Its log is copied into the test's output (shown when the test
/// fails).
fn spawn_listening(mut cmd: Command) -> (WardProcess, SocketAddr) {
    let mut child = cmd.stderr(Stdio::piped()).spawn().expect("spawn ward");
    let stderr = child.stderr.take().unwrap();
    let process = WardProcess(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("ward: {line}");
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(listen) = json["fields"]["listen"].as_str() {
                let _ = tx.send(listen.to_string());
            }
        }
    });
    let listen = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("ward announced its listener");
    (process, listen.parse().unwrap())
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
