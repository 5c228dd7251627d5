//! Transparent mode under failure and load, in network-namespace pods (the
//! lab's mesh with an `outsider` pod without a sidecar): dead sidecars fail
//! closed, IPv6 is intercepted and policed, egress passthrough does not
//! open a way around the mesh, hundreds of connections at once. Checks
//! that nothing leaks in the clear (captures on the bridge) and that the
//! proxy keeps serving. Needs root, iproute2, iptables, python3, tcpdump;
//! skips with the reason otherwise (fails under `WARD_REQUIRE_NETNS=1`).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::adversary::*;
use support::lab::{WARD, app_addr, curl, member, outsider, pod, pod_of, run, start, stdout};
use support::pods::{require_transparent_capture_or_skip, require_transparent_or_skip};
use ward::pods::{PodCommand, Testbed};

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
    // db's sidecar serves its app's HTTP, so db hears why from it.
    let (body, _) = curl(pod_of(&lab, "db"), "GET", &url);
    assert!(
        body.starts_with("ward: orders: no endpoint") && body.ends_with("\n503"),
        "reached the app over mTLS: {body}"
    );
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
    let path = member_file(&testbed, "web", "mesh.yaml");
    let mut yaml = std::fs::read_to_string(&path).expect("mesh file");
    for service in ["orders", "db"] {
        let v4 = app_addr(&lab, service).to_string();
        yaml = yaml.replace(
            &format!("[\"{v4}\"]"),
            &format!("[\"{v4}\", \"{}\"]", v6(service)),
        );
    }
    assert!(yaml.contains(&v6("orders").to_string()), "{yaml}");
    replace_mesh(&lab, &testbed, &yaml);

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
    let outside_url = format!("http://{}/x", serve_outside(&lab, "http", 9000));

    // web's sidecar again, now with --egress passthrough.
    lab.stop_sidecar("web", false);
    let web = pod_of(&lab, "web");
    let proxy = start_sidecar(&lab, &testbed, web, "web", &["--egress", "passthrough"]);

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
    // Every connection is closed again on every sidecar, but for the mesh
    // connections pooled for the next app connections.
    let sidecars = ["web", "orders", "db"];
    assert_only_pooled_connections_open(&lab, &sidecars, Duration::from_secs(10));
    assert_still_serving(&lab);
}
