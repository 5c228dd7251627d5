//! Adversarial tests of transparent mode, in network-namespace pods: the
//! lab's mesh (CA, `web`/`orders`/`db` behind `ward init` + `ward proxy
//! --transparent`, an `outsider` pod without a sidecar), attacked with
//! unmodified clients (python3, curl, openssl, bash): connections aimed at
//! the proxy's own ports, garbage and foreign TLS on the inbound port,
//! stalled handshakes, aborted and half-closed connections. Each test
//! checks that nothing loops or hangs, that refusals are counted, and that
//! the proxy keeps serving afterwards. Needs root, iproute2, iptables,
//! python3 (openssl where used); skips with the reason otherwise (fails
//! under `WARD_REQUIRE_NETNS=1`).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use support::adversary::*;
use support::lab::{app_addr, outsider, pod_of, run, start, stdout};
use support::pods::require_transparent_or_skip;
use ward::pods::{PodCommand, Testbed};

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
    assert_only_pooled_connections_open(&lab, &["web", "orders"], Duration::from_secs(5));
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
    // Nothing is left open anywhere, well before any idle timeout, but for
    // the mesh connections pooled for the next app connections.
    let sidecars = ["web", "orders", "db"];
    assert_only_pooled_connections_open(&lab, &sidecars, Duration::from_secs(15));
    assert_still_serving(&lab);
}
