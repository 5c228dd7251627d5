//! The sidecar as a process (docs/proxy.md, "File descriptors and the
//! process's resources"): the built `ward proxy` under a given open-files
//! limit (`prlimit`), as a container runtime would start it. It raises its
//! soft limit to the hard one, warns when that is short of
//! `--max-connections`, reports its descriptors, memory and CPU on
//! /metrics, and when descriptors run out it counts the failed accepts,
//! logs them once, and accepts every waiting connection once descriptors
//! free up. Loopback only; every wait is bounded.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::mesh::*;
use support::pair::DAY;
use support::process::{Log, proxy_with_nofile};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_raises_its_open_files_limit_and_reports_its_resources() {
    let ca = TestCa::start(DAY).await;
    let args = web_args(&ca);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (process, log, admin) =
        tokio::task::block_in_place(|| proxy_with_nofile("256:4096", &args));
    let pid = process.0.id();
    // Soft raised to the hard limit; the hard one untouched.
    let limits = proc_field(pid, "limits", "Max open files");
    assert_eq!(
        limits.split_whitespace().take(2).collect::<Vec<_>>(),
        ["4096", "4096"]
    );
    // One listener of 10,000 connections (the default) may need 2 x 10,000
    // descriptors, plus the pool's 256 and a margin of 64.
    let warning = log.wait_for("the open-files limit is below");
    assert_eq!(warning["fields"]["limit"], 4096);
    assert_eq!(warning["fields"]["needed"], 20_320);
    assert_eq!(warning["level"], "WARN");

    let text = get(admin, "/metrics").await.1;
    assert_eq!(family(&text, "process_max_fds"), 4096.0);
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
async fn accepts_failing_for_want_of_descriptors_are_counted_and_every_connection_is_served_after()
{
    let ca = TestCa::start(DAY).await;
    let mut args = web_args(&ca);
    args.extend(["--max-connections".into(), "1000".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // A hard limit of 64: nothing to raise.
    let (process, log, admin) = tokio::task::block_in_place(|| proxy_with_nofile("64:64", &args));
    let pid = process.0.id();
    let forward = forward_addr(&log);
    let ready = poll(Duration::from_secs(10), || async {
        get(admin, "/ready").await.0 == 200
    });
    assert!(
        ready.await,
        "ready (its SVID) before its descriptors run out"
    );

    // More connections than descriptors: the rest wait in the backlog.
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(forward).await.unwrap());
    }
    tokio::task::block_in_place(|| log.wait_for("accept failed"));
    let fds = fds_of(pid);
    assert!(fds >= 60.0, "{fds} descriptors: all 64 should be in use");
    // Long enough for several retries, 50 ms apart.
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(held);
    tokio::task::block_in_place(|| log.wait_for("accepting again"));

    let outbound = "{direction=\"outbound\"}";
    let text = get(admin, "/metrics").await.1;
    let failed = family(&text, &format!("ward_tcp_accept_errors_total{outbound}"));
    assert!(failed >= 3.0, "{failed} failed accepts counted");
    assert_eq!(
        log.lines("accept failed").len(),
        1,
        "logged once, not per retry"
    );
    // Every waiting connection was accepted in the end, and the sidecar
    // still answers: 503 from the sidecar itself, orders being down.
    let mut app = TcpStream::connect(forward).await.unwrap();
    app.write_all(b"GET / HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), app.read_to_string(&mut answer));
    read.await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 50"), "{answer}");
    let opened = format!("ward_tcp_connections_opened_total{outbound}");
    let all = poll(Duration::from_secs(5), || async {
        metric_value(&get(admin, "/metrics").await.1, &opened) == Some(101.0)
    });
    assert!(
        all.await,
        "101 connections accepted:\n{}",
        get(admin, "/metrics").await.1
    );
}
