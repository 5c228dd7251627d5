//! Adversarial tests of transparent mode, in network-namespace pods: the
//! lab's mesh (CA, `web`/`orders`/`db` behind `ward init` + `ward proxy
//! --transparent`, an `outsider` pod without a sidecar), attacked with
//! unmodified clients (python3, curl, openssl, bash): connections aimed at
//! the proxy's own ports, garbage and foreign TLS on the inbound port,
//! dead sidecars, IPv6, egress passthrough, many connections at once,
//! aborted and half-closed connections, stalled handshakes. Each test
//! checks that nothing loops, hangs or leaks in the clear, that refusals
//! are counted, and that the proxy keeps serving afterwards. Needs root,
//! iproute2, iptables, python3 (and tcpdump/openssl where used); skips with
//! the reason otherwise (fails under `WARD_REQUIRE_NETNS=1`).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::lab::{
    WARD, app_addr, curl, member, outsider, pod, pod_of, run, run_for, start, stdout,
};
use support::pods::{require_transparent_capture_or_skip, require_transparent_or_skip};
use ward::lab::prometheus::sum;
use ward::lab::scenario;
use ward::lab::{Lab, PROXY_UID};
use ward::pods::{Pod, PodCommand, Testbed};

fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn have(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// python3 runs `script` in `pod` (as root: intercepted); its stdout.
fn py(pod: &Pod<'_>, timeout: Duration, script: &str, args: &[String]) -> String {
    let mut all = vec!["-c", script];
    all.extend(args.iter().map(String::as_str));
    let out = run_for(pod, timeout, python(), &all);
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        stdout(&out)
    );
    stdout(&out)
}

/// For each `host port` pair: connect (5 s), send the payload (hex), read
/// until EOF (5 s). One line per target: `host port outcome bytes-received
/// first-bytes-hex`, where outcome is refused, eof, reset or timeout.
const PROBE: &str = r#"
import socket, sys
payload = bytes.fromhex(sys.argv[1])
args = sys.argv[2:]
for host, port in zip(args[::2], args[1::2]):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(5)
    got = b""
    try:
        s.connect((host, int(port)))
        if payload:
            try:
                s.sendall(payload)
            except OSError:
                pass
        while True:
            chunk = s.recv(65536)
            if not chunk:
                outcome = "eof"
                break
            got += chunk
    except ConnectionRefusedError:
        outcome = "refused"
    except ConnectionResetError:
        outcome = "reset"
    except socket.timeout:
        outcome = "timeout"
    finally:
        s.close()
    print(host, port, outcome, len(got), got[:32].hex(), flush=True)
"#;

#[derive(Debug)]
struct Probed {
    target: String,
    outcome: String,
    received: Vec<u8>,
}

fn probe(pod: &Pod<'_>, payload: &[u8], targets: &[SocketAddr]) -> Vec<Probed> {
    let mut args = vec![payload.iter().map(|b| format!("{b:02x}")).collect()];
    for t in targets {
        args.push(t.ip().to_string());
        args.push(t.port().to_string());
    }
    let out = py(pod, Duration::from_secs(60), PROBE, &args);
    let probed: Vec<Probed> = out
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 5, "probe line {line:?}");
            let received = (0..f[4].len() / 2)
                .map(|i| u8::from_str_radix(&f[4][2 * i..2 * i + 2], 16).expect("hex"))
                .collect();
            Probed {
                target: format!("{} {}", f[0], f[1]),
                outcome: f[2].to_string(),
                received,
            }
        })
        .collect();
    assert_eq!(probed.len(), targets.len(), "{out}");
    probed
}

fn metrics(lab: &Lab<'_>, name: &str) -> String {
    lab.scrape(member(lab, name)).expect("scrape")
}

fn count(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    sum(text, metric, labels)
}

fn loops(text: &str, direction: &str) -> f64 {
    count(
        text,
        "ward_tcp_connection_errors_total",
        &[("direction", direction), ("reason", "loop")],
    )
}

/// Polls `cond` every 200 ms for up to `timeout`.
fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The mesh still works: web's GET to orders is allowed, orders reaches
/// db, and both sidecars say ready.
fn assert_still_serving(lab: &Lab<'_>) {
    let web = pod_of(lab, "web");
    let url = format!("http://{}/orders/42", app_addr(lab, "orders"));
    let (body, _) = curl(web, "GET", &url);
    assert_eq!(body, "orders: GET /orders/42\n\n200", "{}", lab.logs());
    let flow = &scenario::FLOWS[2];
    let (verdict, line) = lab.call(flow).expect("call");
    assert_eq!(verdict, flow.expect, "{}: {line}", flow.describe());
    for name in ["web", "orders", "db"] {
        let m = member(lab, name);
        let url = lab.admin_url(m, "/ready");
        let args = [
            "-sS",
            "-m",
            "5",
            "-w",
            "%{http_code}",
            "-o",
            "/dev/null",
            &url,
        ];
        let ready = run(pod(&m.host), "curl", &args);
        assert_eq!(stdout(&ready), "200", "{name} is not ready");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A lab member's files (token, bundle, mesh file), as the lab lays them out.
fn member_file(testbed: &Testbed, name: &str, file: &str) -> PathBuf {
    testbed.dir().join("lab").join(name).join(file)
}

#[test]
fn connections_aimed_at_the_proxy_ports_are_refused_not_looped() {
    if !require_transparent_or_skip() {
        return;
    }
    let testbed = Testbed::new().expect("testbed");
    let lab = start(&testbed);
    let web = pod_of(&lab, "web");
    let orders = pod_of(&lab, "orders");
    let sa = |ip: IpAddr, port: u16| SocketAddr::new(ip, port);
    let lo4: IpAddr = "127.0.0.1".parse().expect("ip");
    let lo6: IpAddr = "::1".parse().expect("ip");
    let (web4, web6) = (IpAddr::from(web.ipv4()), IpAddr::from(web.ipv6()));
    let (orders4, orders6) = (IpAddr::from(orders.ipv4()), IpAddr::from(orders.ipv6()));
    let request = b"GET /orders/1 HTTP/1.0\r\n\r\n";

    // Inside web, the app dials its own sidecar's ports: on loopback, and
    // on its own pod addresses (routed via lo, so never redirected).
    let own = [
        sa(lo4, 15001),
        sa(lo6, 15001),
        sa(lo4, 15006),
        sa(lo6, 15006),
        sa(web4, 15006),
        sa(web6, 15006),
        sa(web4, 15001),
        sa(web6, 15001),
    ];
    let started = Instant::now();
    let probed = probe(web, request, &own);
    for p in &probed {
        assert!(
            p.received.is_empty() && p.outcome != "timeout",
            "{}: {} with {:?}",
            p.target,
            p.outcome,
            String::from_utf8_lossy(&p.received)
        );
    }
    // The outbound port listens on loopback only: the pod address refuses.
    for p in &probed[6..] {
        assert_eq!(p.outcome, "refused", "{p:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the proxy kept refused connections open"
    );
    let m = metrics(&lab, "web");
    assert_eq!(loops(&m, "outbound"), 2.0, "{m}");
    assert_eq!(loops(&m, "inbound"), 4.0, "{m}");

    // From web (meshed), another pod's proxy ports: not a service port, so
    // the egress rule refuses them before anything leaves the pod.
    let theirs = [
        sa(orders4, 15006),
        sa(orders4, 15001),
        sa(orders6, 15006),
        sa(orders6, 15001),
    ];
    for p in probe(web, request, &theirs) {
        assert!(p.received.is_empty(), "{p:?}");
        assert_ne!(p.outcome, "timeout", "{p:?}");
    }
    let m = metrics(&lab, "web");
    let egress = [
        ("direction", "outbound"),
        ("decision", "deny"),
        ("rule", "egress"),
    ];
    assert_eq!(count(&m, "ward_authz_decisions_total", &egress), 4.0);
    assert_eq!(loops(&metrics(&lab, "orders"), "inbound"), 0.0);

    // From a pod without a sidecar, straight at orders' proxy ports: the
    // PREROUTING redirect takes them to 15006, which refuses its own ports.
    for p in probe(outsider(&lab), request, &theirs) {
        assert!(p.received.is_empty(), "{p:?}");
        assert_ne!(p.outcome, "timeout", "{p:?}");
    }
    let m = metrics(&lab, "orders");
    assert_eq!(loops(&m, "inbound"), 4.0, "{m}");
    // Nothing was forwarded to orders' app for any of it.
    assert_eq!(count(&m, "ward_http_requests_total", &[]), 0.0, "{m}");

    assert_still_serving(&lab);
    // No refused connection is left open.
    for name in ["web", "orders"] {
        let gone = eventually(Duration::from_secs(5), || {
            count(&metrics(&lab, name), "ward_tcp_open_connections", &[]) == 0.0
        });
        assert!(gone, "{name} still holds connections");
    }
}

#[test]
fn a_dead_sidecar_fails_closed_both_ways() {
    if !require_transparent_capture_or_skip() {
        return;
    }
    let testbed = Testbed::new().expect("testbed");
    let mut lab = start(&testbed);
    let capture = testbed.capture().expect("capture on the bridge");

    // Outbound: web's sidecar crashes; web's app keeps calling.
    lab.stop_sidecar("web", true);
    let web = pod_of(&lab, "web");
    let secret_out = "/orders/leak-out-7f3b";
    let url = format!("http://{}{secret_out}", app_addr(&lab, "orders"));
    let (body, out) = curl(web, "GET", &url);
    assert!(!out.status.success(), "went out without a sidecar: {body}");
    let db = app_addr(&lab, "db");
    let secret_tcp = "SELECT leak_col_44d1";
    let answers = probe(web, format!("{secret_tcp}\n").as_bytes(), &[db]);
    assert_eq!(answers[0].outcome, "refused", "{:?}", answers[0]);

    // Inbound: orders' sidecar crashes; its app is still up (locally)...
    lab.stop_sidecar("orders", true);
    let orders = pod_of(&lab, "orders");
    let (local, _) = curl(orders, "GET", "http://127.0.0.1:8080/orders/local");
    assert!(local.ends_with("200"), "orders' app is down: {local}");
    // ...but nothing from outside reaches it: not the outsider in the clear,
    // nor db's sidecar over mTLS.
    let secret_in = "/orders/leak-in-19ae";
    let url = format!("http://{}{secret_in}", app_addr(&lab, "orders"));
    let (body, out) = curl(outsider(&lab), "GET", &url);
    assert!(!out.status.success(), "reached the app: {body}");
    assert!(!body.contains("orders:"), "{body}");
    let url6 = format!("http://[{}]:8080{secret_in}", pod_of(&lab, "orders").ipv6());
    let (body, out) = curl(outsider(&lab), "GET", &url6);
    assert!(!out.status.success(), "reached the app over IPv6: {body}");
    let (body, out) = curl(pod_of(&lab, "db"), "GET", &url);
    assert!(!out.status.success(), "reached the app over mTLS: {body}");
    let unreachable = [
        ("direction", "outbound"),
        ("reason", "no_reachable_endpoint"),
    ];
    let m = metrics(&lab, "db");
    assert_eq!(
        count(&m, "ward_tcp_connection_errors_total", &unreachable),
        1.0,
        "{m}"
    );
    let pcap = capture.stop().expect("capture stops");

    assert!(pcap.len() > 200, "the capture saw the outsider's attempts");
    for leak in [
        secret_out.as_bytes(),
        secret_tcp.as_bytes(),
        b"orders: GET",
        b"db ready",
    ] {
        assert!(
            !contains(&pcap, leak),
            "{:?} crossed the bridge in the clear",
            String::from_utf8_lossy(leak)
        );
    }
    // The outsider's request never got an answer: it was not even sent,
    // the connection was refused.
    assert!(!contains(&pcap, secret_in.as_bytes()));

    // Back up, the mesh serves again.
    lab.restart_sidecar("web").expect("web restarts");
    lab.restart_sidecar("orders").expect("orders restarts");
    assert_still_serving(&lab);
}

#[test]
fn garbage_and_foreign_tls_on_the_inbound_port_are_refused_and_counted() {
    if !require_transparent_or_skip() {
        return;
    }
    let testbed = Testbed::new().expect("testbed");
    let lab = start(&testbed);
    let outsider = outsider(&lab);
    let orders = app_addr(&lab, "orders");
    let orders6 = SocketAddr::new(pod_of(&lab, "orders").ipv6().into(), 8080);
    let db = app_addr(&lab, "db");

    // Random bytes (not a handshake record), and a handshake record header
    // followed by noise, on the HTTP and the opaque port, both families.
    let mut noise = [0u8; 4096];
    aws_lc_rs::rand::fill(&mut noise).expect("random bytes");
    noise[0] = 0x42;
    let mut fake_hello = noise;
    fake_hello[..5].copy_from_slice(&[0x16, 0x03, 0x01, 0x02, 0x00]);
    let plain_http = b"GET /orders/1 HTTP/1.1\r\nHost: orders\r\n\r\n";
    let mut attempts = 0.0;
    for payload in [&noise[..], &fake_hello[..], &plain_http[..]] {
        for p in probe(outsider, payload, &[orders, orders6, db]) {
            attempts += 1.0;
            assert_ne!(p.outcome, "timeout", "{p:?}");
            assert_ne!(p.outcome, "refused", "{p:?}");
            assert!(
                !contains(&p.received, b"orders:") && !contains(&p.received, b"db ready"),
                "the app answered: {p:?}"
            );
            // At most a TLS alert comes back, never plaintext.
            assert!(
                p.received.is_empty() || p.received[0] == 0x15,
                "not an alert: {p:?}"
            );
        }
    }

    // Real TLS clients without a mesh identity.
    if have("openssl") {
        let connect = orders.to_string();
        for version in ["-tls1_2", "-tls1_3"] {
            let script = format!(
                "printf 'GET /orders/1 HTTP/1.0\\r\\n\\r\\n' | timeout 10 openssl s_client -connect {connect} {version} -quiet -verify_quiet 2>&1"
            );
            let out = run(outsider, "sh", &["-c", &script]);
            let text = stdout(&out);
            assert!(
                !text.contains("orders:"),
                "{version} reached the app: {text}"
            );
            attempts += 1.0;
        }
    } else {
        eprintln!("openssl not installed: TLS client checks skipped");
    }

    let m = metrics(&lab, "orders");
    let errors = |reason: &str| {
        count(
            &m,
            "ward_tls_handshake_errors_total",
            &[("direction", "inbound"), ("reason", reason)],
        )
    };
    let orders_attempts = attempts - 3.0; // three went to db
    let total = count(
        &m,
        "ward_tls_handshake_errors_total",
        &[("direction", "inbound")],
    );
    assert_eq!(total, orders_attempts, "{m}");
    assert!(errors("not_tls") >= 6.0, "{m}");
    if have("openssl") {
        assert_eq!(errors("incompatible_peer"), 1.0, "TLS 1.2 only\n{m}");
        assert_eq!(errors("no_client_certificate"), 1.0, "no cert\n{m}");
    }
    assert_eq!(count(&m, "ward_http_requests_total", &[]), 0.0, "{m}");
    let db_errors = count(
        &metrics(&lab, "db"),
        "ward_tls_handshake_errors_total",
        &[("direction", "inbound")],
    );
    assert_eq!(db_errors, 3.0);
    assert_still_serving(&lab);
}

#[test]
fn stalled_handshakes_are_cut_and_do_not_block_others() {
    if !require_transparent_or_skip() {
        return;
    }
    let testbed = Testbed::new().expect("testbed");
    let lab = start(&testbed);
    let orders = app_addr(&lab, "orders");
    // 30 connections that send the first byte of a handshake and stall;
    // each reports how long until the proxy closed it.
    let script = r#"
import socket, sys, time, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"\x16")
    socks.append(s)
print("open", flush=True)
start = time.monotonic()
out = []
def wait(s):
    s.settimeout(20)
    try:
        while s.recv(4096):
            pass
        out.append(time.monotonic() - start)
    except OSError:
        out.append(-1)
ts = [threading.Thread(target=wait, args=(s,)) for s in socks]
[t.start() for t in ts]
[t.join() for t in ts]
print(" ".join("%.1f" % x for x in out), flush=True)
"#;
    let mut cmd = PodCommand::new(python());
    cmd.args([
        "-c",
        script,
        &orders.ip().to_string(),
        &orders.port().to_string(),
        "30",
    ]);
    let stalled = outsider(&lab).spawn(&cmd).expect("stalling client starts");
    assert!(
        eventually(Duration::from_secs(10), || stalled
            .stdout()
            .contains("open")),
        "{}",
        stalled.logs()
    );
    // While they hang, a real client is served at once.
    let t = Instant::now();
    assert_still_serving(&lab);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    stalled
        .wait(Duration::from_secs(30))
        .expect("the proxy closes stalled handshakes");
    let out = stalled.stdout();
    let times: Vec<f64> = out
        .lines()
        .nth(1)
        .expect("times")
        .split(' ')
        .map(|x| x.parse().expect("number"))
        .collect();
    assert_eq!(times.len(), 30);
    // Closed by the handshake timeout (10 s), not by the client's 20 s.
    assert!(
        times.iter().all(|&t| (0.0..15.0).contains(&t)),
        "close times {times:?}"
    );
    let m = metrics(&lab, "orders");
    let timeouts = [("direction", "inbound"), ("reason", "timeout")];
    assert_eq!(
        count(&m, "ward_tls_handshake_errors_total", &timeouts),
        30.0
    );
}

#[test]
fn ipv6_is_intercepted_and_outside_the_mesh_denied() {
    if !require_transparent_capture_or_skip() {
        return;
    }
    let testbed = Testbed::new().expect("testbed");
    let lab = start(&testbed);
    let web = pod_of(&lab, "web");
    let orders = pod_of(&lab, "orders");
    // ip6tables rules are in place in every meshed pod.
    let rules = stdout(&run(web, "ip6tables-save", &["-t", "nat"]));
    assert!(rules.contains("WARD_OUTPUT"), "{rules}");

    let capture = testbed.capture().expect("capture");
    let secret = "/orders/v6-secret-a41c";
    let url = format!("http://[{}]:8080{secret}", orders.ipv6());
    // The mesh file lists orders by its IPv4 address only: to web's
    // sidecar the IPv6 address is outside the mesh, so egress denies it.
    let (body, out) = curl(web, "GET", &url);
    assert!(!out.status.success(), "{body}");
    let m = metrics(&lab, "web");
    let egress = [
        ("direction", "outbound"),
        ("decision", "deny"),
        ("rule", "egress"),
    ];
    assert_eq!(count(&m, "ward_authz_decisions_total", &egress), 1.0);
    // Inbound over IPv6 is intercepted too: plaintext from the outsider
    // ends in a failed handshake at orders' sidecar, not at the app.
    let (body, out) = curl(outsider(&lab), "GET", &url);
    assert!(!out.status.success(), "{body}");
    assert!(!body.contains("orders:"), "{body}");
    let pcap = capture.stop().expect("capture stops");
    assert!(
        !contains(&pcap[..], b"orders: GET"),
        "an answer crossed the bridge in the clear"
    );
    // web's request never left web (only the outsider's did).
    let occurrences = pcap
        .windows(secret.len())
        .filter(|w| *w == secret.as_bytes())
        .count();
    assert_eq!(occurrences, 1, "copies of the request path on the bridge");
    let m = metrics(&lab, "orders");
    assert_eq!(
        count(
            &m,
            "ward_tls_handshake_errors_total",
            &[("direction", "inbound"), ("reason", "not_tls")]
        ),
        1.0,
        "{m}"
    );
    assert_still_serving(&lab);
}

#[test]
fn a_full_ipv6_mesh_flow_is_mutual_tls_and_policed() {
    if !require_transparent_capture_or_skip() {
        return;
    }
    let testbed = Testbed::new().expect("testbed");
    let lab = start(&testbed);
    let web = pod_of(&lab, "web");
    let orders = pod_of(&lab, "orders");
    // orders' app, on IPv6 loopback too (where the inbound proxy sends
    // IPv6 connections), under another name to tell the two apart.
    let mut app6 = PodCommand::new(WARD);
    app6.args([
        "demo-app",
        "http",
        "--listen",
        "[::1]:8080",
        "--name",
        "orders6",
    ]);
    orders.spawn(&app6).expect("IPv6 app starts");
    // Every sidecar's mesh file lists each service's IPv6 endpoint too;
    // the sidecars reload it on change.
    let v6 = |name: &str| {
        let m = member(&lab, name);
        SocketAddr::new(
            pod(&m.host).ipv6().into(),
            m.workload.app.port().unwrap_or(0),
        )
    };
    for name in ["web", "orders", "db"] {
        let path = member_file(&testbed, name, "mesh.yaml");
        let mut yaml = std::fs::read_to_string(&path).expect("mesh file");
        for service in ["orders", "db"] {
            let v4 = app_addr(&lab, service).to_string();
            yaml = yaml.replace(
                &format!("[\"{v4}\"]"),
                &format!("[\"{v4}\", \"{}\"]", v6(service)),
            );
        }
        assert!(yaml.contains(&v6("orders").to_string()), "{yaml}");
        std::fs::write(&path, yaml).expect("mesh file rewritten");
    }
    for name in ["web", "orders", "db"] {
        let reloaded = eventually(Duration::from_secs(10), || {
            count(
                &metrics(&lab, name),
                "ward_policy_reloads_total",
                &[("result", "success")],
            ) >= 2.0 // the start counts as the first load
        });
        assert!(reloaded, "{name} did not reload:\n{}", lab.logs());
    }

    let capture = testbed.capture().expect("capture");
    let secret = "/orders/v6-mesh-d00d";
    let url = format!("http://{}{secret}", v6("orders"));
    let (body, _) = curl(web, "GET", &url);
    assert_eq!(
        body,
        format!("orders6: GET {secret}\n\n200"),
        "{}",
        lab.logs()
    );
    let (body, _) = curl(web, "POST", &url);
    assert!(body.ends_with("403"), "POST over IPv6 answered {body:?}");
    let pcap = capture.stop().expect("capture stops");
    assert!(
        !contains(&pcap, secret.as_bytes()),
        "plaintext on the bridge"
    );
    assert!(!contains(&pcap, b"orders6:"), "plaintext on the bridge");
    assert!(contains(&pcap, &[0x17, 0x03, 0x03]), "no TLS records");
    let m = metrics(&lab, "orders");
    let requests = [
        ("peer", "spiffe://demo.ward/ns/shop/sa/web"),
        ("status_code", "200"),
    ];
    assert_eq!(count(&m, "ward_http_requests_total", &requests), 1.0);
}

#[test]
fn egress_passthrough_lets_plaintext_out_but_not_around_the_mesh() {
    if !require_transparent_or_skip() {
        return;
    }
    let testbed = Testbed::new().expect("testbed");
    let mut lab = start(&testbed);
    let outsider = outsider(&lab);
    let mut server = PodCommand::new(WARD);
    server.args([
        "demo-app",
        "http",
        "--listen",
        "0.0.0.0:9000",
        "--name",
        "outside",
    ]);
    outsider.spawn(&server).expect("server starts");
    let outside_url = format!("http://{}:9000/x", outsider.ipv4());
    assert!(eventually(Duration::from_secs(10), || curl(
        outsider,
        "GET",
        &outside_url
    )
    .0
    .ends_with("200")));

    // web's sidecar again, now with --egress passthrough.
    lab.stop_sidecar("web", false);
    let web = pod_of(&lab, "web");
    let file = |f: &str| member_file(&testbed, "web", f);
    let mut sidecar = PodCommand::new(WARD);
    sidecar
        .args(["proxy", "--transparent", "--egress", "passthrough"])
        .args(["--identity", &scenario::identity("web")])
        .args(["--ca", &lab.ca_url()])
        .arg("--ca-bundle")
        .arg(file("bundle.pem"))
        .arg("--token-file")
        .arg(file("token"))
        .arg("--mesh")
        .arg(file("mesh.yaml"))
        .uid(PROXY_UID);
    let proxy = web.spawn(&sidecar).expect("sidecar starts");
    let ready = eventually(Duration::from_secs(30), || {
        let (body, _) = curl(web, "GET", "http://127.0.0.1:15020/ready");
        body.ends_with("200")
    });
    assert!(ready, "{}", proxy.logs());

    let (body, out) = curl(web, "GET", &outside_url);
    assert_eq!(body, "outside: GET /x\n\n200", "{:?} {}", out, proxy.logs());
    let m = metrics(&lab, "web");
    let allowed = [
        ("direction", "outbound"),
        ("decision", "allow"),
        ("rule", "egress"),
    ];
    assert_eq!(count(&m, "ward_authz_decisions_total", &allowed), 1.0);
    let sent = [("direction", "outbound"), ("peer", "egress")];
    assert!(count(&m, "ward_tcp_bytes_total", &sent) > 0.0, "{m}");

    // Mesh destinations still go through mTLS and policy.
    let orders_url = format!("http://{}/orders", app_addr(&lab, "orders"));
    assert!(curl(web, "GET", &orders_url).0.ends_with("200"));
    assert!(curl(web, "POST", &orders_url).0.ends_with("403"));
    let db = app_addr(&lab, "db");
    let denied = probe(web, b"SELECT 1\n", &[db]);
    assert!(
        !contains(&denied[0].received, b"db ready"),
        "web reached db: {denied:?}"
    );
    // A meshed pod's undeclared port is "outside the mesh": passthrough
    // sends plaintext there, and the peer's sidecar still refuses it, so
    // passthrough is no way around the peer's policy. Its proxy ports
    // count as loops there.
    let orders = pod_of(&lab, "orders");
    let sneaky = [
        SocketAddr::new(orders.ipv4().into(), 8081),
        SocketAddr::new(orders.ipv4().into(), 15006),
    ];
    for p in probe(web, b"GET /orders/1 HTTP/1.0\r\n\r\n", &sneaky) {
        assert!(!contains(&p.received, b"orders:"), "{p:?}");
        assert_ne!(p.outcome, "timeout", "{p:?}");
    }
    let om = metrics(&lab, "orders");
    assert_eq!(loops(&om, "inbound"), 1.0, "{om}");
    let not_tls = [("direction", "inbound"), ("reason", "not_tls")];
    assert_eq!(
        count(&om, "ward_tls_handshake_errors_total", &not_tls),
        1.0,
        "{om}"
    );
}

#[test]
fn hundreds_of_concurrent_connections_through_the_transparent_path() {
    if !require_transparent_or_skip() {
        return;
    }
    let testbed = Testbed::new().expect("testbed");
    let lab = start(&testbed);
    // Each thread opens its own connection, makes one request and reads
    // to EOF; all threads start before any is read.
    let http = r#"
import socket, sys, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok, bad = [], []
barrier = threading.Barrier(n)
def one(i):
    try:
        s = socket.create_connection((host, port), timeout=30)
        barrier.wait(timeout=30)
        s.sendall(b"GET /orders/%d HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n" % i)
        got = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            got += c
        s.close()
        (ok if b"orders: GET /orders/%d\n" % i in got else bad).append((i, got[:80]))
    except Exception as e:
        bad.append((i, repr(e)))
ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
[t.start() for t in ts]
[t.join() for t in ts]
print(len(ok), len(bad), bad[:3], flush=True)
"#;
    let tcp = r#"
import socket, sys, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok, bad = [], []
def one(i):
    try:
        s = socket.create_connection((host, port), timeout=30)
        f = s.makefile("rwb")
        greeting = f.readline()
        f.write(b"line %d\n" % i); f.flush()
        echo = f.readline()
        s.close()
        (ok if greeting == b"db ready\n" and echo == b"line %d\n" % i else bad).append((i, greeting, echo))
    except Exception as e:
        bad.append((i, repr(e)))
ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
[t.start() for t in ts]
[t.join() for t in ts]
print(len(ok), len(bad), bad[:3], flush=True)
"#;
    let n = 200;
    let orders = app_addr(&lab, "orders");
    let db = app_addr(&lab, "db");
    let args = |a: SocketAddr| vec![a.ip().to_string(), a.port().to_string(), n.to_string()];
    let web = pod_of(&lab, "web");
    let out = py(web, Duration::from_secs(90), http, &args(orders));
    assert!(out.starts_with(&format!("{n} 0 ")), "{out}\n{}", lab.logs());
    let out = py(
        pod_of(&lab, "orders"),
        Duration::from_secs(90),
        tcp,
        &args(db),
    );
    assert!(out.starts_with(&format!("{n} 0 ")), "{out}\n{}", lab.logs());

    let m = metrics(&lab, "orders");
    let requests = [
        ("peer", "spiffe://demo.ward/ns/shop/sa/web"),
        ("status_code", "200"),
    ];
    assert_eq!(
        count(&m, "ward_http_requests_total", &requests),
        f64::from(n)
    );
    // Every connection is closed again on every sidecar.
    for name in ["web", "orders", "db"] {
        let drained = eventually(Duration::from_secs(10), || {
            count(&metrics(&lab, name), "ward_tcp_open_connections", &[]) == 0.0
        });
        assert!(drained, "{name}:\n{}", metrics(&lab, name));
    }
    assert_still_serving(&lab);
}

#[test]
fn aborted_and_half_closed_connections_end_cleanly() {
    if !require_transparent_or_skip() {
        return;
    }
    let testbed = Testbed::new().expect("testbed");
    let lab = start(&testbed);
    let orders = pod_of(&lab, "orders");
    let db = app_addr(&lab, "db");
    // Half-close: the client sends its line and shuts its write side; the
    // echo still arrives, then EOF (db's app closes on EOF), within 5 s.
    let half = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"half closed\n")
s.shutdown(socket.SHUT_WR)
got = b""
try:
    while True:
        c = s.recv(4096)
        if not c:
            print("eof", got, flush=True)
            break
        got += c
except socket.timeout:
    print("timeout", got, flush=True)
"#;
    let args = vec![db.ip().to_string(), db.port().to_string()];
    let out = py(orders, Duration::from_secs(20), half, &args);
    assert_eq!(
        out.trim(),
        r"eof b'db ready\nhalf closed\n'",
        "{}",
        lab.logs()
    );
    // Aborts: RST after the greeting, RST right after connecting, and RST
    // in the middle of an HTTP request, 20 of each.
    let abort = r#"
import socket, struct, sys
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for _ in range(20):
    s = socket.create_connection((host, port), timeout=5)
    if mode == "greeting":
        s.recv(100)
    elif mode == "partial":
        s.sendall(b"GET /orders/1 HTTP/1.1\r\nHost: o\r\nContent-Le")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
print("done", flush=True)
"#;
    let with =
        |a: SocketAddr, mode: &str| vec![a.ip().to_string(), a.port().to_string(), mode.into()];
    for mode in ["greeting", "connect"] {
        assert_eq!(
            py(orders, Duration::from_secs(30), abort, &with(db, mode)).trim(),
            "done"
        );
    }
    let web = pod_of(&lab, "web");
    let orders_addr = app_addr(&lab, "orders");
    for mode in ["partial", "connect"] {
        assert_eq!(
            py(
                web,
                Duration::from_secs(30),
                abort,
                &with(orders_addr, mode)
            )
            .trim(),
            "done"
        );
    }
    // Nothing is left open anywhere, well before any idle timeout.
    for name in ["web", "orders", "db"] {
        let drained = eventually(Duration::from_secs(15), || {
            count(&metrics(&lab, name), "ward_tcp_open_connections", &[]) == 0.0
        });
        assert!(
            drained,
            "{name} leaks connections:\n{}",
            metrics(&lab, name)
        );
    }
    assert_still_serving(&lab);
}
