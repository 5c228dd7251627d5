//! Services dialed by cluster IP, as apps in Kubernetes dial them, in
//! network-namespace pods: the testbed's bridge namespace plays kube-proxy
//! (DNAT from a cluster IP and Service port to pod IP and target port), and
//! the mesh file lists each Service's cluster IP and Service port as its
//! endpoint, never a pod IP. The caller's sidecar matches the cluster IP
//! and originates mutual TLS to it; the node's DNAT takes the connection to
//! a pod, whose sidecar sees the pod's address and the target port: policy
//! and declared protocols apply to the target port. Needs root, iproute2,
//! iptables, curl, bash, python3 and tcpdump; skips with the reason
//! otherwise (fails under `WARD_REQUIRE_NETNS=1`).

mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use support::adversary::{contains, count, eventually, metrics, replace_mesh, start_sidecar};
use support::lab::{WARD, app_addr, curl, pod_of, run, talk};
use support::pods::{require_transparent_capture_or_skip, require_transparent_or_skip};
use ward::lab::{Lab, Options, Placement, scenario};
use ward::pods::{PodCommand, Testbed};

/// orders' Service: port 80, target port 8080 (where its app listens).
const ORDERS_SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 20), 80);
/// db's Service: port 6432, target port 5432.
const DB_SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 30), 6432);

const WEB: &str = "spiffe://demo.ward/ns/shop/sa/web";

/// The scenario's mesh file with each Service's cluster IP and Service port
/// as its one endpoint; `ports` and the policy stay on the target ports.
fn cluster_ip_mesh() -> String {
    scenario::mesh_yaml(|w| match w.name {
        "orders" => ORDERS_SERVICE.into(),
        "db" => DB_SERVICE.into(),
        other => panic!("{other} serves nothing the scenario calls"),
    })
}

/// `name`'s pod address and app port: its Service's target.
fn target(lab: &Lab<'_>, name: &str) -> SocketAddrV4 {
    match app_addr(lab, name) {
        SocketAddr::V4(addr) => addr,
        SocketAddr::V6(addr) => panic!("pods serve on IPv4: {addr}"),
    }
}

/// The lab with orders and db behind their cluster IPs, and `yaml` as
/// every sidecar's mesh file. Protocol detection waits 30 s: a port
/// declared `tcp` that got sniffed (its protocol looked up under the
/// Service port instead of the target port) would hold db's banner past
/// the clients' 5 s.
/// The lab with the mesh file `yaml`, every sidecar given `proxy_args` too.
fn start_behind_cluster_ips<'tb>(
    testbed: &'tb Testbed,
    yaml: &str,
    proxy_args: &[&str],
) -> Lab<'tb> {
    let mut args = vec!["--detect-timeout", "30s"];
    args.extend_from_slice(proxy_args);
    let options = Options {
        proxy_args: args.into_iter().map(String::from).collect(),
        ..Options::default()
    };
    let lab = match Lab::start_with(WARD.as_ref(), Placement::Pods(testbed), options) {
        Ok(lab) => lab,
        Err(e) => panic!("lab did not start: {e}\n{}", testbed.logs()),
    };
    for (service, name) in [(ORDERS_SERVICE, "orders"), (DB_SERVICE, "db")] {
        let backend = target(&lab, name);
        testbed
            .set_cluster_ip(service, &[backend])
            .expect("cluster ip");
    }
    replace_mesh(&lab, testbed, yaml);
    lab
}

#[test]
fn a_cluster_ip_endpoint_gets_mutual_tls_and_the_target_ports_policy() {
    if !require_transparent_capture_or_skip() {
        return;
    }
    let testbed = Testbed::new().expect("testbed");
    let lab = start_behind_cluster_ips(&testbed, &cluster_ip_mesh(), &[]);
    let web = pod_of(&lab, "web");
    let orders = pod_of(&lab, "orders");
    let capture = testbed.capture().expect("capture on the bridge");

    // HTTP to Service port 80: orders' app on 8080 answers, and the L7 rule
    // (GET only) holds.
    let secret_path = "/orders/cluster-ip-7c3e";
    let url = format!("http://{ORDERS_SERVICE}{secret_path}");
    let (body, _) = curl(web, "GET", &url);
    assert_eq!(
        body,
        format!("orders: GET {secret_path}\n\n200"),
        "{}",
        lab.logs()
    );
    let (body, _) = curl(web, "POST", &url);
    assert!(body.ends_with("403"), "POST answered {body:?}");
    // Opaque TCP to Service port 6432: db's rule allows orders on port
    // 5432, the target port, which is what db's sidecar sees.
    let secret_line = "SELECT cluster_ip_4b1d";
    let db = SocketAddr::V4(DB_SERVICE);
    assert_eq!(
        talk(orders, db, secret_line),
        format!("db ready\n{secret_line}\n"),
        "{}",
        lab.logs()
    );
    let refused = talk(web, db, "SELECT 1");
    assert!(
        !refused.contains("db ready") && !refused.contains("SELECT"),
        "web reached db: {refused:?}"
    );
    // The pod address is no longer in the mesh file: outside the mesh.
    let direct = format!("http://{}/orders/1", app_addr(&lab, "orders"));
    let (body, out) = curl(web, "GET", &direct);
    assert!(!out.status.success(), "the pod IP was let out: {body}");

    let pcap = capture.stop().expect("capture stops");
    for plaintext in [
        secret_path.as_bytes(),
        b"orders: GET",
        secret_line.as_bytes(),
    ] {
        assert!(
            !contains(&pcap, plaintext),
            "{:?} crossed the bridge in the clear",
            String::from_utf8_lossy(plaintext)
        );
    }
    assert!(
        contains(&pcap, &[0x17, 0x03, 0x03]),
        "no TLS records on the bridge"
    );
    // Every mesh connection went through the node's DNAT: 2 to db (web's
    // is refused by db's sidecar after the handshake); to orders, one for
    // web's GET and one for its POST, unless the POST took the GET's
    // from web's pool.
    let m = metrics(&lab, "web");
    let to = |peer| [("direction", "outbound"), ("peer", peer)];
    let to_orders = count(&m, "ward_tls_handshakes_total", &to("orders"));
    let reuses = count(&m, "ward_http_pool_reuses_total", &[("peer", "orders")]);
    assert!(to_orders >= 1.0, "{m}");
    assert_eq!(to_orders + reuses, 2.0, "{m}");
    for (service, connections) in [(ORDERS_SERVICE, to_orders), (DB_SERVICE, 2.0)] {
        let counted = testbed.cluster_ip_connections(service).expect("counted");
        assert_eq!(counted as f64, connections, "{service}");
    }
    assert_eq!(
        count(&m, "ward_tls_handshakes_total", &to("db")),
        1.0,
        "{m}"
    );
    let egress = [
        ("direction", "outbound"),
        ("decision", "deny"),
        ("rule", "egress"),
    ];
    assert_eq!(count(&m, "ward_authz_decisions_total", &egress), 1.0, "{m}");
    let m = metrics(&lab, "orders");
    let from_web = [("direction", "inbound"), ("peer", WEB)];
    assert_eq!(
        count(&m, "ward_tls_handshakes_total", &from_web),
        to_orders,
        "{m}"
    );
    let allowed = [("decision", "allow"), ("rule", "web-reads-orders")];
    assert!(
        count(&m, "ward_authz_decisions_total", &allowed) >= 2.0,
        "{m}"
    );
    let post = [("decision", "deny"), ("rule", "default")];
    assert_eq!(count(&m, "ward_authz_decisions_total", &post), 1.0, "{m}");
    let m = metrics(&lab, "db");
    let allowed = [("decision", "allow"), ("rule", "orders-uses-db")];
    assert_eq!(
        count(&m, "ward_authz_decisions_total", &allowed),
        1.0,
        "{m}"
    );
    let denied = [("decision", "deny"), ("rule", "web-never-db")];
    assert_eq!(count(&m, "ward_authz_decisions_total", &denied), 1.0, "{m}");
}

/// The Service's pods change (a new replica, both at once, the wrong pod,
/// none) and the mesh file does not: callers follow the cluster IP, and the
/// caller's sidecar still accepts only the Service's identity.
#[test]
fn callers_follow_the_cluster_ip_while_its_pods_change() {
    if !require_transparent_or_skip() {
        return;
    }
    let testbed = Testbed::new().expect("testbed");
    // web's pool reuses a mesh connection (to whichever pod kube-proxy
    // picked when it opened) for 250 ms at most.
    let max_age = Duration::from_millis(250);
    let pooling = ["--pool-max-age", "250ms"];
    let lab = start_behind_cluster_ips(&testbed, &cluster_ip_mesh(), &pooling);
    let web = pod_of(&lab, "web");
    // A second replica of orders: interception, an app telling its name,
    // and a sidecar with orders' identity and files.
    let replica = testbed.add_pod("orders-2").expect("replica pod");
    let init = run(&replica, WARD, &["init"]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut app = PodCommand::new(WARD);
    app.args([
        "demo-app",
        "http",
        "--listen",
        "0.0.0.0:8080",
        "--name",
        "orders-2",
    ]);
    replica.spawn(&app).expect("replica app starts");
    start_sidecar(&lab, &testbed, &replica, "orders", &[]);
    let replica_target = SocketAddrV4::new(replica.ipv4(), 8080);
    let url = format!("http://{ORDERS_SERVICE}/orders/1");
    let answered_by = || {
        let (body, _) = curl(web, "GET", &url);
        body.strip_suffix(": GET /orders/1\n\n200")
            .map(str::to_string)
    };

    // The pod moved: the same mesh file reaches the replica.
    testbed
        .set_cluster_ip(ORDERS_SERVICE, &[replica_target])
        .expect("moved");
    let moved = eventually(Duration::from_secs(10), || {
        answered_by().as_deref() == Some("orders-2")
    });
    assert!(moved, "{}\n{}", lab.logs(), replica.logs());
    // Two pods: each new mesh connection goes to either (20 calls, each
    // after the last one's connection aged out of web's pool, miss one of
    // them with probability 2^-19).
    let orders_target = target(&lab, "orders");
    testbed
        .set_cluster_ip(ORDERS_SERVICE, &[orders_target, replica_target])
        .expect("both");
    let fresh_answer = || {
        std::thread::sleep(max_age * 2);
        answered_by()
    };
    let seen: BTreeSet<Option<String>> = (0..20).map(|_| fresh_answer()).collect();
    let both = ["orders", "orders-2"].map(|n| Some(n.to_string()));
    assert_eq!(seen, BTreeSet::from(both), "{}", lab.logs());

    // The cluster IP leads to another Service's pod: web's sidecar refuses
    // db's identity, and db's app never sees the call.
    testbed
        .set_cluster_ip(ORDERS_SERVICE, &[target(&lab, "db")])
        .expect("wrong pod");
    assert_eq!(fresh_answer(), None);
    let m = metrics(&lab, "web");
    let wrong = [("direction", "outbound"), ("reason", "unexpected_identity")];
    assert_eq!(
        count(&m, "ward_tls_handshake_errors_total", &wrong),
        1.0,
        "{m}"
    );
    let db = metrics(&lab, "db");
    assert_eq!(count(&db, "ward_authz_decisions_total", &[]), 0.0, "{db}");
    // No pods at all: the connection fails and is counted as such.
    testbed.set_cluster_ip(ORDERS_SERVICE, &[]).expect("none");
    assert_eq!(answered_by(), None);
    let m = metrics(&lab, "web");
    let unreachable = [
        ("direction", "outbound"),
        ("reason", "no_reachable_endpoint"),
    ];
    assert_eq!(
        count(&m, "ward_tcp_connection_errors_total", &unreachable),
        1.0,
        "{m}"
    );
}

/// The operator's mistake this guards against: `ports` (and so the policy)
/// written with the Service port. The receiving sidecar sees the target
/// port, which no longer matches the rule: the call is denied.
#[test]
fn ports_listed_as_service_ports_miss_the_policy() {
    if !require_transparent_or_skip() {
        return;
    }
    let yaml = cluster_ip_mesh();
    let on_service_port = yaml
        .replace("port: 5432,", "port: 6432,")
        .replace("ports: [5432]", "ports: [6432]");
    assert_eq!(
        on_service_port.matches("6432").count(),
        3,
        "{on_service_port}"
    );
    let testbed = Testbed::new().expect("testbed");
    let lab = start_behind_cluster_ips(&testbed, &on_service_port, &[]);
    let orders = pod_of(&lab, "orders");

    let answer = talk(orders, SocketAddr::V4(DB_SERVICE), "SELECT 1");
    assert!(!answer.contains("SELECT"), "orders reached db: {answer:?}");
    // orders' sidecar found the Service and its identity; db's sidecar saw
    // port 5432, which the rule for 6432 does not cover.
    let m = metrics(&lab, "orders");
    let to_db = [("direction", "outbound"), ("peer", "db")];
    assert_eq!(count(&m, "ward_tls_handshakes_total", &to_db), 1.0, "{m}");
    let m = metrics(&lab, "db");
    let default = [("decision", "deny"), ("rule", "default")];
    assert_eq!(
        count(&m, "ward_authz_decisions_total", &default),
        1.0,
        "{m}"
    );
    let rule = [("rule", "orders-uses-db")];
    assert_eq!(count(&m, "ward_authz_decisions_total", &rule), 0.0, "{m}");
}
