//! The sidecar as a process (docs/proxy.md, "File descriptors and the
//! process's resources"): the built `ward proxy` under a given open-files
//! limit (`prlimit`), as a container runtime would start it. It raises its
//! soft limit to the hard one, holds no more connections than the limit
//! leaves room for (warning when that is fewer than `--max-connections`)
//! so that its admin server keeps answering, reports its descriptors,
//! memory and CPU on /metrics, and when descriptors run out anyway counts
//! the failed accepts, logs them once, and accepts every waiting
//! connection once descriptors free up. Loopback only; every wait is
//! bounded.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::mesh::*;
use support::pair::DAY;
use support::process::{Log, WardProcess, proxy_with_nofile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `ward proxy` arguments for `web`, forwarding to orders at a closed port
/// (so every request is answered by the sidecar itself).
fn web_args(ca: &TestCa) -> Vec<String> {
    let mesh = ca.tmp.path().join("mesh.yaml");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let orders = closed.local_addr().unwrap();
    drop(closed);
    write_mesh_protocols(
        &mesh,
        &[("orders", &workload("orders"), orders, 8080, "http")],
    );
    let web = workload("web");
    let bundle = ca.dir.path(ward_ca::store::TRUST_BUNDLE);
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    [
        "--identity",
        web.as_str(),
        "--ca",
        &ca.url(),
        "--ca-bundle",
        &path(&bundle),
        "--token-file",
        &path(&ca.token_file(&web)),
        "--mesh",
        &path(&mesh),
        "--forward",
        "127.0.0.1:0=orders:8080",
    ]
    .map(String::from)
    .to_vec()
}

/// The `--forward` listener's address, from the start-up log line
/// (`forwards` is logged as `[ADDR]`).
fn forward_addr(log: &Log) -> SocketAddr {
    let line = log.wait_for("proxy listening");
    let forwards = line["fields"]["forwards"].as_str().unwrap();
    forwards.trim_matches(['[', ']']).parse().unwrap()
}

/// The value of the series `name` in a scrape.
fn family(text: &str, name: &str) -> f64 {
    metric_value(text, name).unwrap_or_else(|| panic!("{name} in\n{text}"))
}

/// Descriptors process `pid` holds.
fn fds_of(pid: u32) -> f64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as f64
}

fn proc_field(pid: u32, file: &str, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    let line = text.lines().find(|l| l.starts_with(field)).unwrap();
    line[field.len()..].trim().to_string()
}

/// The descriptor number process `pid` would get next.
fn lowest_free_fd(pid: u32) -> u64 {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    let used: std::collections::BTreeSet<u64> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).unwrap()
}

/// This process's open-files limit: (soft, hard).
fn own_nofile() -> (u64, u64) {
    let limits = proc_field(std::process::id(), "limits", "Max open files");
    let mut figures = limits
        .split_whitespace()
        .map(|n| n.parse().unwrap_or(u64::MAX));
    (figures.next().unwrap(), figures.next().unwrap())
}

/// The sidecar of [`web_args`] (and `more` arguments) under `prlimit
/// --nofile=nofile`: the process, its log, its admin and forward addresses.
fn web(ca: &TestCa, nofile: &str, more: &[&str]) -> (WardProcess, Log, SocketAddr, SocketAddr) {
    let args = web_args(ca);
    let args: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .chain(more.iter().copied())
        .collect();
    let (process, log, admin) = tokio::task::block_in_place(|| proxy_with_nofile(nofile, &args));
    let forward = forward_addr(&log);
    (process, log, admin, forward)
}

async fn metric_of(admin: SocketAddr, series: &str) -> Option<f64> {
    metric_value(&get(admin, "/metrics").await.1, series)
}

/// Waits (10 s at most) until `series` is `value` on `admin`'s /metrics.
async fn until_metric(admin: SocketAddr, series: &str, value: f64) {
    let reached = poll(Duration::from_secs(10), || async {
        metric_of(admin, series).await == Some(value)
    });
    assert!(
        reached.await,
        "{series} = {value}:\n{}",
        get(admin, "/metrics").await.1
    );
}

/// Sends a GET on `app` (a connection to the forward listener): the
/// answer's head line.
async fn answer_to_get(mut app: TcpStream) -> String {
    app.write_all(b"GET / HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), app.read_to_string(&mut answer));
    read.await.unwrap().unwrap();
    answer.lines().next().unwrap_or("").to_string()
}

/// Waits (10 s at most) for the sidecar's first SVID.
async fn wait_ready(admin: SocketAddr) {
    let ready = poll(Duration::from_secs(10), || async {
        get(admin, "/ready").await.0 == 200
    });
    assert!(ready.await, "ready (its SVID)");
}

const OUT: &str = "{direction=\"outbound\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_raises_its_open_files_limit_and_reports_its_resources() {
    let ca = TestCa::start(DAY).await;
    // A hard limit of 4,096 (or this process's, if lower: only root may
    // raise it) over a soft one of 256.
    let hard = own_nofile().1.min(4096);
    let (process, log, admin, _) = web(&ca, &format!("256:{hard}"), &[]);
    let pid = process.0.id();
    let limits = proc_field(pid, "limits", "Max open files");
    let figures: Vec<_> = limits.split_whitespace().take(2).collect();
    assert_eq!(
        figures,
        [hard.to_string(), hard.to_string()],
        "soft raised to hard"
    );
    // One listener may hold 10,000 connections (the default); the limit
    // leaves room for (hard - 256 pooled - 64 others) / 2 (each of those
    // at most a quarter of the limit).
    let budget = (hard - 256.min(hard / 4) - 64.min(hard / 4)) / 2;
    let warning = log.wait_for("the open-files limit allows fewer connections");
    assert_eq!(warning["fields"]["limit"], hard);
    assert_eq!(warning["fields"]["budget"], budget);
    assert_eq!(warning["level"], "WARN");

    let text = get(admin, "/metrics").await.1;
    assert_eq!(family(&text, "ward_tcp_connection_budget"), budget as f64);
    assert_eq!(family(&text, "process_max_fds"), hard as f64);
    let open = family(&text, "process_open_fds");
    let now = fds_of(pid);
    assert!(
        (open - now).abs() <= 4.0,
        "process_open_fds {open}, /proc {now}"
    );
    let rss = family(&text, "process_resident_memory_bytes");
    let kib: f64 = proc_field(pid, "status", "VmRSS:")
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    let ratio = rss / (kib * 1024.0);
    assert!(
        (0.8..1.25).contains(&ratio),
        "resident {rss} B, /proc {kib} kB"
    );
    assert!(family(&text, "process_cpu_seconds_total") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_what_the_open_files_limit_allows_wait_and_the_admin_server_answers() {
    let ca = TestCa::start(DAY).await;
    // 64 descriptors, none to raise: a quarter kept back, a quarter for the
    // pool, room for 16 connections.
    let (process, log, admin, forward) = web(&ca, "64:64", &["--max-connections", "1000"]);
    let warning = log.wait_for("the open-files limit allows fewer connections");
    assert_eq!(warning["fields"]["budget"], 16);
    wait_ready(admin).await;

    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(forward).await.unwrap());
    }
    // 16 held, 84 waiting in the backlog; the admin server still answers,
    // and no accept failed.
    until_metric(admin, &format!("ward_tcp_open_connections{OUT}"), 16.0).await;
    let fds = fds_of(process.0.id());
    assert!(fds <= 48.0, "{fds} descriptors: at least 16 kept back");
    let failed = metric_of(admin, &format!("ward_tcp_accept_errors_total{OUT}")).await;
    assert_eq!(failed, Some(0.0));
    assert!(log.lines("accept failed").is_empty());
    drop(held);
    // Every waiting connection is accepted in the end, and served.
    let last = TcpStream::connect(forward).await.unwrap();
    assert!(
        answer_to_get(last).await.starts_with("HTTP/1.1 50"),
        "the sidecar's 503"
    );
    until_metric(
        admin,
        &format!("ward_tcp_connections_opened_total{OUT}"),
        101.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_failing_for_want_of_descriptors_are_counted_logged_once_and_recover() {
    let ca = TestCa::start(DAY).await;
    let (process, log, admin, forward) = web(&ca, "256:256", &[]);
    let pid = process.0.id();
    wait_ready(admin).await;
    // The soft limit lowered under the sidecar's feet to its lowest free
    // descriptor: once the few below it (if any) are taken, its accepts
    // fail with EMFILE.
    let set_limit = |soft: u64| {
        let nofile = format!("--nofile={soft}:256");
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &nofile])
            .status();
        assert!(status.unwrap().success());
    };
    set_limit(lowest_free_fd(pid));
    let mut apps = Vec::new();
    for _ in 0..10 {
        apps.push(TcpStream::connect(forward).await.unwrap());
    }
    tokio::task::block_in_place(|| log.wait_for("accept failed"));
    // Long enough for several retries, 50 ms apart.
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The limit given back: every waiting connection is accepted, and served.
    set_limit(256);
    tokio::task::block_in_place(|| log.wait_for("accepting again"));
    let last = apps.pop().unwrap();
    assert!(
        answer_to_get(last).await.starts_with("HTTP/1.1 50"),
        "the sidecar's 503"
    );
    let opened = format!("ward_tcp_connections_opened_total{OUT}");
    until_metric(admin, &opened, 10.0).await;
    let failed = metric_of(admin, &format!("ward_tcp_accept_errors_total{OUT}")).await;
    assert!(failed.unwrap() >= 3.0, "{failed:?} failed accepts counted");
    let logged = log.lines("accept failed").len();
    assert_eq!(logged, 1, "logged once, not per retry");
}
