//! The pod testbed (`ward::pods`) with real namespaces: pods reach each
//! other over the bridge on IPv4 and IPv6, captures see what crosses it,
//! processes run as the uid asked for, cluster IPs lead to the pods they
//! are set to, and nothing outlives the testbed or touches the root
//! namespace. Plain programs (python3, curl, sh) stand in
//! for ward. Skips with a reason unless root; `WARD_REQUIRE_NETNS=1` makes a
//! skip a failure.

mod support;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::pods::{require_capture_or_skip, require_cluster_ips_or_skip, require_pods_or_skip};
use ward::pods::{NAME_PREFIX, Pod, PodCommand, PodsError, Testbed};

/// Serves `dir` over HTTP on [::]:8080 (dual stack) in `pod`.
fn http_server(pod: &Pod<'_>, dir: &std::path::Path) {
    pod.spawn(
        PodCommand::new("python3")
            .args(["-m", "http.server", "8080", "--bind", "::", "--directory"])
            .arg(dir),
    )
    .expect("start http.server");
}

/// `curl` from `pod` to http://ip:8080/path, retried (the server may still
/// be starting) for up to 15 s until it answers at all.
fn curl_until_answered(pod: &Pod<'_>, ip: IpAddr, path: &str) -> Output {
    let url = match ip {
        IpAddr::V4(v4) => format!("http://{v4}:8080{path}"),
        IpAddr::V6(v6) => format!("http://[{v6}]:8080{path}"),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = pod
            .run(PodCommand::new("curl").args(["-sS", "-g", "--max-time", "2", &url]))
            .expect("run curl");
        // 7: connection refused (not listening yet); anything else is an answer.
        if out.status.code() != Some(7) || Instant::now() >= deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process counts as gone once it has no /proc entry or is a zombie
/// (orphans wait there for whichever init adopts them).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn marker(what: &str) -> String {
    format!("ward-{what}-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

#[test]
fn pods_reach_each_other_over_ipv4_and_ipv6() {
    if !require_pods_or_skip() {
        return;
    }
    let tb = Testbed::new().expect("testbed");
    let a = tb.add_pod("a").expect("pod a");
    let b = tb.add_pod("b").expect("pod b");
    assert_ne!(a.ipv4(), b.ipv4());
    let body = marker("hello");
    let file = a
        .write_file("www/hello.txt", body.as_bytes())
        .expect("write");
    http_server(&a, file.parent().expect("www"));

    for ip in [IpAddr::V4(a.ipv4()), IpAddr::V6(a.ipv6())] {
        let out = curl_until_answered(&b, ip, "/hello.txt");
        assert!(
            out.status.success() && out.stdout == body.as_bytes(),
            "GET from b to a at {ip}: {out:?}\n{}",
            tb.logs()
        );
    }
}

#[test]
fn a_capture_on_the_bridge_sees_plaintext_between_pods() {
    if !require_capture_or_skip() {
        return;
    }
    let tb = Testbed::new().expect("testbed");
    let a = tb.add_pod("a").expect("pod a");
    let b = tb.add_pod("b").expect("pod b");
    let bridge = tb.capture().expect("capture on the bridge");
    let on_b = b.capture().expect("capture on b's eth0");
    http_server(&a, a.dir());
    let secret = marker("plaintext");
    let out = curl_until_answered(&b, IpAddr::V4(a.ipv4()), &format!("/{secret}"));
    assert!(out.status.success(), "{out:?}\n{}", tb.logs());

    for (what, capture) in [("bridge", bridge), ("b's eth0", on_b)] {
        let pcap = capture.stop().expect("stop capture");
        // A pcap file (microsecond, either byte order) with the request in it.
        assert!(
            pcap.starts_with(&[0xd4, 0xc3, 0xb2, 0xa1])
                || pcap.starts_with(&[0xa1, 0xb2, 0xc3, 0xd4]),
            "{what}: not a pcap file ({} bytes)",
            pcap.len()
        );
        assert!(
            contains(&pcap, secret.as_bytes()),
            "{what}: the request for /{secret} is not in the capture ({} bytes)\n{}",
            pcap.len(),
            tb.logs()
        );
    }
}

/// Starts, in `pod`, a shell with a background child and a child that left
/// the process group (setsid), and returns all three pids.
fn start_family(pod: &Pod<'_>) -> Vec<u32> {
    let shell = pod
        .spawn(PodCommand::new("sh").args([
            "-c",
            "sleep 300 & echo $!; setsid sleep 300 & echo $!; exec sleep 300",
        ]))
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pids = vec![shell.pid()];
    loop {
        let out = shell.stdout();
        let children: Vec<u32> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if children.len() == 2 {
            pids.extend(children);
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "children not reported: {}",
            shell.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_cleaned_up(namespaces: &[String], pids: &[u32]) {
    assert!(!namespaces.is_empty());
    let listed = netns_list();
    for ns in namespaces {
        assert!(
            !listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns)),
            "{ns} left behind:\n{listed}"
        );
    }
    for &pid in pids {
        assert!(gone(pid), "process {pid} outlived its testbed");
    }
}

#[test]
fn dropping_the_testbed_ends_its_processes_and_namespaces() {
    if !require_pods_or_skip() {
        return;
    }
    let tb = Testbed::new().expect("testbed");
    let pod = tb.add_pod("a").expect("pod");
    let pids = start_family(&pod);
    let namespaces = tb.namespaces();
    let dir = tb.dir().to_owned();
    assert_eq!(namespaces.len(), 2, "{namespaces:?}");
    drop(pod);
    drop(tb);
    assert_cleaned_up(&namespaces, &pids);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn close_reports_a_clean_teardown() {
    if !require_pods_or_skip() {
        return;
    }
    let tb = Testbed::new().expect("testbed");
    let pids = start_family(&tb.add_pod("a").expect("pod"));
    let namespaces = tb.namespaces();
    tb.close().expect("close");
    assert_cleaned_up(&namespaces, &pids);
}

#[test]
fn a_panic_while_holding_a_testbed_still_cleans_up() {
    if !require_pods_or_skip() {
        return;
    }
    let mut seen: Option<(Vec<String>, Vec<u32>)> = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let tb = Testbed::new().expect("testbed");
        let pids = start_family(&tb.add_pod("a").expect("pod"));
        seen = Some((tb.namespaces(), pids));
        panic!("deliberate panic with a live testbed");
    }));
    assert!(result.is_err());
    let (namespaces, pids) = seen.expect("the closure got as far as the panic");
    assert_cleaned_up(&namespaces, &pids);
}

#[test]
fn namespaces_of_dead_runs_are_removed() {
    if !require_pods_or_skip() {
        return;
    }
    // Pids are below pid_max, so a run with this "pid" is never alive.
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").expect("pid_max");
    let dead = pid_max.trim();
    let stale = format!("{NAME_PREFIX}{dead}-0-pod-stale");
    let ok = Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .expect("ip");
    assert!(ok.success(), "ip netns add {stale}");
    let mut inside = Command::new("ip")
        .args(["netns", "exec", &stale, "sleep", "300"])
        .spawn()
        .expect("a process in the stale namespace");
    let stale_dir: PathBuf = std::env::temp_dir().join(format!("{NAME_PREFIX}{dead}-0-leftover"));
    std::fs::create_dir_all(stale_dir.join("logs")).expect("stale dir");

    let tb = Testbed::new().expect("testbed");

    assert!(!netns_list().contains(&stale), "{stale} survived");
    assert!(!stale_dir.exists(), "{} survived", stale_dir.display());
    let deadline = Instant::now() + Duration::from_secs(5);
    while inside.try_wait().expect("try_wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "the stale namespace's process survived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Our own live testbed is not stale to itself.
    assert!(netns_list().contains(tb.bridge_netns()));
}

/// Links, addresses, routes and iptables rules of the root namespace.
fn root_snapshot() -> String {
    let mut all = String::new();
    for args in [
        &["ip", "-o", "link"][..],
        &["ip", "-o", "addr"],
        &["ip", "route"],
        &["ip", "-6", "route"],
        &["iptables-save"],
        &["ip6tables-save"],
    ] {
        let out = Command::new(args[0]).args(&args[1..]).output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        // iptables-save stamps its comments with the time.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            all.push_str(line);
            all.push('\n');
        }
    }
    all
}

#[test]
fn the_root_namespace_is_untouched() {
    if !require_capture_or_skip() {
        return;
    }
    let before = root_snapshot();
    let tb = Testbed::new().expect("testbed");
    let a = tb.add_pod("a").expect("pod a");
    let b = tb.add_pod("b").expect("pod b");
    let capture = tb.capture().expect("capture");
    http_server(&a, a.dir());
    let out = curl_until_answered(&b, IpAddr::V4(a.ipv4()), "/");
    assert!(out.status.success(), "{out:?}\n{}", tb.logs());
    assert_eq!(
        root_snapshot(),
        before,
        "root namespace changed while the testbed lives"
    );
    capture.stop().expect("stop capture");
    drop(tb);
    assert_eq!(
        root_snapshot(),
        before,
        "root namespace changed after the testbed"
    );
}

/// kube-proxy's job, done by the bridge namespace: a cluster IP and port
/// lead to the target port of whichever pods it is set to, one picked per
/// connection, and the pods see the connection come from the node.
#[test]
fn a_cluster_ip_leads_to_the_pods_it_is_set_to() {
    if !require_cluster_ips_or_skip() {
        return;
    }
    let before = root_snapshot();
    let tb = Testbed::new().expect("testbed");
    let client = tb.add_pod("client").expect("client pod");
    let backends = [
        tb.add_pod("b").expect("pod b"),
        tb.add_pod("c").expect("pod c"),
    ];
    for pod in &backends {
        let file = pod
            .write_file("www/who", pod.name().as_bytes())
            .expect("write");
        http_server(pod, file.parent().expect("www"));
        let out = curl_until_answered(&client, IpAddr::V4(pod.ipv4()), "/who");
        assert!(out.status.success(), "{out:?}\n{}", tb.logs());
    }
    let [b, c] = backends
        .each_ref()
        .map(|p| SocketAddrV4::new(p.ipv4(), 8080));
    let service = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 20), 80);
    let who = || {
        let url = format!("http://{service}/who");
        let out = client
            .run(PodCommand::new("curl").args(["-sS", "--max-time", "5", &url]))
            .expect("run curl");
        (String::from_utf8_lossy(&out.stdout).into_owned(), out)
    };

    tb.set_cluster_ip(service, &[b]).expect("cluster ip");
    assert_eq!(who().0, "b", "{}", tb.logs());
    tb.set_cluster_ip(service, &[c]).expect("moved");
    assert_eq!(who().0, "c");
    // Both, at random: 20 calls miss one of them with probability 2^-19.
    tb.set_cluster_ip(service, &[b, c]).expect("both");
    let seen: BTreeSet<String> = (0..20).map(|_| who().0).collect();
    assert_eq!(seen, BTreeSet::from(["b".into(), "c".into()]));
    // No backends: refused at once (no route), not left to time out.
    tb.set_cluster_ip(service, &[]).expect("none");
    let (_, out) = who();
    assert_eq!(
        out.status.code(),
        Some(7),
        "curl could not connect: {out:?}"
    );

    assert_eq!(tb.cluster_ip_connections(service).expect("counted"), 23);
    // The pods saw each connection come from the node (masquerade).
    let from_node = format!("{} - -", tb.node_ipv4());
    for pod in &backends {
        assert!(pod.logs().contains(&from_node), "{}", pod.logs());
    }
    let outside = SocketAddrV4::new(Ipv4Addr::new(10, 97, 0, 1), 80);
    assert!(matches!(
        tb.set_cluster_ip(outside, &[b]),
        Err(PodsError::NotAServiceIp(ip)) if ip == *outside.ip()
    ));
    assert_eq!(root_snapshot(), before, "the root namespace changed");
}

#[test]
fn a_process_spawned_as_uid_1337_runs_as_1337_and_reads_what_it_was_handed() {
    if !require_pods_or_skip() {
        return;
    }
    let tb = Testbed::new().expect("testbed");
    let pod = tb.add_pod("a").expect("pod");
    let ids = pod
        .run(
            PodCommand::new("sh")
                .args(["-c", "id -u; id -g; id -G"])
                .uid(1337),
        )
        .expect("id");
    assert_eq!(
        String::from_utf8_lossy(&ids.stdout),
        "1337\n1337\n1337\n",
        "{ids:?}"
    );

    let token = pod
        .write_file("secrets/token", b"join-token")
        .expect("write");
    let cat = PodCommand::new("cat").arg(&token).uid(1337).clone();
    let denied = pod.run(&cat).expect("cat");
    assert!(
        !denied.status.success(),
        "uid 1337 read a root-only file: {denied:?}"
    );
    pod.hand_to_uid(&token, 1337).expect("hand over");
    let read = pod.run(&cat).expect("cat");
    assert_eq!(read.stdout, b"join-token", "{}", pod.logs());
}

#[test]
fn run_is_bounded_and_logs_say_what_happened() {
    if !require_pods_or_skip() {
        return;
    }
    let tb = Testbed::new().expect("testbed");
    let pod = tb.add_pod("a").expect("pod");
    let started = Instant::now();
    let slow = pod.run(
        PodCommand::new("sleep")
            .arg("30")
            .timeout(Duration::from_millis(300)),
    );
    assert!(matches!(slow, Err(PodsError::Timeout { .. })), "{slow:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let talk = pod
        .spawn(
            PodCommand::new("sh")
                .args(["-c", "echo out:$WARD_TEST_VAR; echo err >&2; exit 3"])
                .env("WARD_TEST_VAR", "set"),
        )
        .expect("spawn");
    let status = talk.wait(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(3));
    assert_eq!(talk.stdout(), "out:set\n");
    let logs = talk.logs();
    assert!(
        logs.contains("pod a: sh -c") && logs.contains("err"),
        "{logs}"
    );
    assert!(pod.logs().contains("sleep 30"), "{}", pod.logs());
}
