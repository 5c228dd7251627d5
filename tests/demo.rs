//! `ward demo`, the README's first command, as a user runs it: `--once`
//! in explicit mode (anyone) and with network-namespace pods (root), and
//! the live demo stopped with Ctrl-C, after which nothing is left behind.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::pods::require_transparent_or_skip;

const WARD: &str = env!("CARGO_BIN_EXE_ward");

fn demo(args: &[&str]) -> Output {
    let child = Command::new(WARD)
        .arg("demo")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ward runs");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the demo finishes within 2 minutes")
        .expect("output")
}

/// Every flow line is `ok`, there are as many as expected, and the demo
/// says so and exits 0.
fn assert_every_flow_ok(out: &Output, flows: usize) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let flow_lines: Vec<_> = stdout.lines().filter(|l| l.contains(" -> ")).collect();
    assert_eq!(flow_lines.len(), flows, "{stdout}");
    assert!(
        flow_lines.iter().all(|l| l.trim_start().starts_with("ok ")),
        "{stdout}"
    );
    assert!(
        stdout.contains("every flow behaved as the policy says"),
        "{stdout}"
    );
    for rule in ["web-reads-orders", "orders-uses-db", "web-never-db"] {
        assert!(
            stdout.contains(rule),
            "summary lacks rule {rule}:\n{stdout}"
        );
    }
    stdout
}

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The testbed id the demo printed (`wardpod-<pid>-<n>`).
fn testbed_id(stdout: &str) -> String {
    let start = stdout.find("wardpod-").expect("the demo names its pods");
    stdout[start..]
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn demo_once_in_explicit_mode() {
    let out = demo(&["--once", "--loopback"]);
    let stdout = assert_every_flow_ok(&out, 4);
    assert!(stdout.contains("explicit mode on 127.0.0.x"), "{stdout}");
    assert!(
        stdout.contains("http://127.0.0.12:15020/metrics"),
        "{stdout}"
    );
}

#[test]
fn demo_once_with_pods_leaves_nothing_behind() {
    if !require_transparent_or_skip() {
        return;
    }
    let out = demo(&["--once"]);
    let stdout = assert_every_flow_ok(&out, 5);
    assert!(stdout.contains("intercepted by `ward init`"), "{stdout}");
    assert!(stdout.contains("outsider (no sidecar)"), "{stdout}");
    let id = testbed_id(&stdout);
    assert!(!netns_list().contains(&id), "namespaces of {id} remain");
}

/// The processes of the demo whose testbed is `id`: each names a file in
/// the testbed's directory on its command line.
fn processes_of(id: &str) -> String {
    let out = Command::new("pgrep")
        .args(["-a", "-f", &format!("{id}-")])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn ctrl_c_stops_the_live_demo_and_cleans_up() {
    if !require_transparent_or_skip() {
        return;
    }
    let mut child = Command::new(WARD)
        .arg("demo")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ward runs");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.contains("Ctrl-C stops") {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("the live demo did not start:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
    }
    let id = testbed_id(&seen);
    assert!(netns_list().contains(&id), "the pods exist while it runs");
    assert!(
        !processes_of(&id).is_empty(),
        "its processes are found while it runs"
    );
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo ignored Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit after Ctrl-C: {status}");
    assert!(!netns_list().contains(&id), "namespaces of {id} remain");
    let procs = processes_of(&id);
    assert!(procs.is_empty(), "processes outlived the demo:\n{procs}");
}
