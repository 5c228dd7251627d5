//! Transparent interception end to end, in network-namespace pods: the
//! lab's CA, `web`/`orders`/`db` pods with `ward init` rules and
//! `ward proxy --transparent` as uid 1337, and unmodified clients (curl,
//! bash's /dev/tcp). Needs root, iproute2, iptables and tcpdump; skips with
//! the reason otherwise (fails under `WARD_REQUIRE_NETNS=1`).

mod support;

use support::adversary::{member_file, metrics, replace_mesh, serve_outside};
use support::lab::{WARD, app_addr, curl, member, pod, run, start, stdout, talk};
use support::pods::{require_transparent_capture_or_skip, require_transparent_or_skip};
use ward::lab::prometheus::sum;
use ward::lab::scenario::{FLOWS, Verdict};
use ward::lab::{Lab, Options, Placement};
use ward::pods::Testbed;

#[test]
fn unmodified_clients_get_what_the_policy_says() {
    if !require_transparent_or_skip() {
        return;
    }
    let testbed = Testbed::new().expect("testbed");
    let lab = start(&testbed);
    let web = pod(&member(&lab, "web").host);
    let orders = pod(&member(&lab, "orders").host);
    let orders_url = format!("http://{}", app_addr(&lab, "orders"));

    // An allowed HTTP call, to the pod's own address: the app is unaware.
    let (body, _) = curl(web, "GET", &format!("{orders_url}/orders/7"));
    assert_eq!(body, "orders: GET /orders/7\n\n200", "{}", lab.logs());
    // Denied at L7: the rule allows GET only.
    let (body, _) = curl(web, "POST", &format!("{orders_url}/orders"));
    assert!(body.ends_with("403"), "POST answered {body:?}");

    // A server-speaks-first TCP service on an opaque port: the greeting
    // arrives without the client speaking first, then the echo.
    let db = app_addr(&lab, "db");
    assert_eq!(
        talk(orders, db, "SELECT 1"),
        "db ready\nSELECT 1\n",
        "{}",
        lab.logs()
    );
    // Denied at L4 by a deny rule: no greeting, nothing echoed.
    let refused = talk(web, db, "SELECT 1");
    assert!(
        !refused.contains("db ready") && !refused.contains("SELECT"),
        "web reached db: {refused:?}"
    );

    // The sidecars counted each decision under the deciding rule.
    let scrape = |name: &str| lab.scrape(member(&lab, name)).expect("scrape");
    let orders_metrics = scrape("orders");
    let allowed = [("decision", "allow"), ("rule", "web-reads-orders")];
    assert!(sum(&orders_metrics, "ward_authz_decisions_total", &allowed) >= 2.0);
    let db_metrics = scrape("db");
    let denied = [("decision", "deny"), ("rule", "web-never-db")];
    assert_eq!(sum(&db_metrics, "ward_authz_decisions_total", &denied), 1.0);
    let web_id = [
        ("direction", "inbound"),
        ("peer", "spiffe://demo.ward/ns/shop/sa/web"),
    ];
    // Two app connections (GET, POST): a mesh connection each, or one
    // taken again from web's pool.
    let handshakes = sum(&orders_metrics, "ward_tls_handshakes_total", &web_id);
    let pooled = [("peer", "orders")];
    let reuses = sum(&scrape("web"), "ward_http_pool_reuses_total", &pooled);
    assert!(handshakes >= 1.0, "{orders_metrics}");
    assert_eq!(handshakes + reuses, 2.0, "{orders_metrics}");
    let requests = [
        ("peer", "spiffe://demo.ward/ns/shop/sa/web"),
        ("status_code", "200"),
    ];
    assert_eq!(
        sum(&orders_metrics, "ward_http_requests_total", &requests),
        1.0
    );

    // The lab's own client agrees on every flow of the scenario.
    for flow in &FLOWS {
        let (verdict, output) = lab.call(flow).expect("call");
        assert_eq!(verdict, flow.expect, "{}: {output}", flow.describe());
    }
}

#[test]
fn only_tls_crosses_the_bridge() {
    if !require_transparent_capture_or_skip() {
        return;
    }
    let testbed = Testbed::new().expect("testbed");
    let lab = start(&testbed);
    let web = pod(&member(&lab, "web").host);
    let orders = pod(&member(&lab, "orders").host);
    let capture = testbed.capture().expect("capture on the bridge");
    let secret_path = "/orders/secret-path-5c1f";
    let url = format!("http://{}{secret_path}", app_addr(&lab, "orders"));
    let (body, _) = curl(web, "GET", &url);
    assert!(body.ends_with("200"), "{body}\n{}", lab.logs());
    let secret_line = "SELECT secret_column_9e2a";
    let echoed = talk(orders, app_addr(&lab, "db"), secret_line);
    assert!(echoed.contains(secret_line), "{echoed}");
    let pcap = capture.stop().expect("capture stops");

    let contains = |needle: &[u8]| pcap.windows(needle.len()).any(|w| w == needle);
    assert!(
        pcap.len() > 2_000,
        "the capture saw the traffic ({} bytes)",
        pcap.len()
    );
    for plaintext in [
        secret_path.as_bytes(),
        b"orders: GET",
        secret_line.as_bytes(),
        b"db ready",
    ] {
        assert!(
            !contains(plaintext),
            "{:?} crossed the bridge in the clear",
            String::from_utf8_lossy(plaintext)
        );
    }
    // TLS 1.3 application data records (type 23, legacy version 3.3).
    assert!(
        contains(&[0x17, 0x03, 0x03]),
        "no TLS records on the bridge"
    );
}

#[test]
fn a_pod_without_a_sidecar_cannot_reach_meshed_apps_in_the_clear() {
    if !require_transparent_or_skip() {
        return;
    }
    let testbed = Testbed::new().expect("testbed");
    let lab = start(&testbed);
    let outsider = pod(lab.outsider.as_ref().expect("pod labs have an outsider"));
    let (body, out) = curl(
        outsider,
        "GET",
        &format!("http://{}/orders/1", app_addr(&lab, "orders")),
    );
    assert!(!out.status.success(), "plaintext reached orders: {body}");
    assert!(!body.contains("orders:"), "the app answered: {body}");
    // db's sidecar answers plaintext with a TLS alert at most; the app is
    // never reached.
    let answer = talk(outsider, app_addr(&lab, "db"), "SELECT 1");
    assert!(
        !answer.contains("db ready") && !answer.contains("SELECT"),
        "{answer:?}"
    );
    let metrics = lab.scrape(member(&lab, "orders")).expect("scrape");
    assert!(
        sum(
            &metrics,
            "ward_tls_handshake_errors_total",
            &[("direction", "inbound")]
        ) >= 1.0,
        "the refusal is counted"
    );
    // The admin port stays reachable (probes, Prometheus), by design.
    let admin = format!("http://{}:15020/ready", member(&lab, "orders").host.ip());
    assert!(curl(outsider, "GET", &admin).0.ends_with("200"));
}

/// `--egress deny` (the default, as injected) under the mesh file's mode:
/// `enforce` refuses a destination outside the mesh, `audit` lets it
/// through and counts it as the policy counts what it would deny; a
/// rewrite of the mesh file switches between the two for new connections.
#[test]
fn destinations_outside_the_mesh_are_denied_or_audited_as_the_mesh_file_says() {
    if !require_transparent_or_skip() {
        return;
    }
    let testbed = Testbed::new().expect("testbed");
    let lab = start(&testbed);
    let web = pod(&member(&lab, "web").host);
    // A TCP server outside the mesh, reachable in plaintext from other pods
    // (TCP DNS, the API server, another namespace's Service look like this).
    let outside = serve_outside(&lab, "banner", 9000);
    let reached = "outside ready\nhello\n";
    let decisions = |decision: &str| {
        let egress = [
            ("direction", "outbound"),
            ("decision", decision),
            ("rule", "egress"),
        ];
        sum(&metrics(&lab, "web"), "ward_authz_decisions_total", &egress)
    };
    let audit_lines = || {
        lab.logs()
            .lines()
            .filter(|l| l.contains("egress denied (audit mode: let through)"))
            .filter(|l| l.contains(&outside.to_string()))
            .count()
    };

    // The lab's mesh file has no `mode`: enforce.
    let refused = talk(web, outside, "hello");
    assert!(
        !refused.contains("outside"),
        "egress went through: {refused:?}"
    );
    assert_eq!(decisions("deny"), 1.0);

    let enforce = std::fs::read_to_string(member_file(&testbed, "web", "mesh.yaml")).unwrap();
    replace_mesh(&lab, &testbed, &format!("mode: audit\n{enforce}"));
    assert_eq!(talk(web, outside, "hello"), reached, "{}", lab.logs());
    assert_eq!(talk(web, outside, "hello"), reached);
    let m = metrics(&lab, "web");
    assert_eq!(decisions("audit_deny"), 2.0, "{m}");
    assert_eq!(decisions("deny"), 1.0, "{m}");
    assert_eq!(decisions("allow"), 0.0, "{m}");
    let sent = [("direction", "outbound"), ("peer", "egress")];
    assert!(sum(&m, "ward_tcp_bytes_total", &sent) > 0.0, "{m}");
    assert_eq!(audit_lines(), 2, "{}", lab.logs());

    replace_mesh(&lab, &testbed, &format!("mode: enforce\n{enforce}"));
    let refused = talk(web, outside, "hello");
    assert!(
        !refused.contains("outside"),
        "egress went through: {refused:?}"
    );
    assert_eq!(decisions("deny"), 2.0);
    assert_eq!(decisions("audit_deny"), 2.0);
    assert_eq!(audit_lines(), 2);
}

#[test]
fn restarting_or_crashing_the_proxy_leaks_no_rules() {
    if !require_transparent_or_skip() {
        return;
    }
    let testbed = Testbed::new().expect("testbed");
    let mut lab = start(&testbed);
    let save = |lab: &Lab<'_>| {
        let web = pod(&member(lab, "web").host);
        // Both backends and families: whichever `ward init` picked, and
        // anything that might have appeared in the other.
        let tools = [
            "iptables-nft-save",
            "ip6tables-nft-save",
            "iptables-legacy-save",
            "ip6tables-legacy-save",
        ];
        let saves: Vec<String> = tools
            .iter()
            .map(|t| stdout(&run(web, t, &["-t", "nat"])))
            .collect();
        // Counters and the header's timestamp change; the rules must not.
        saves
            .concat()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap_or(l).to_string())
            .collect::<Vec<_>>()
    };
    let before = save(&lab);
    assert!(
        before.iter().any(|l| l.contains("WARD_OUTPUT")),
        "{before:?}"
    );
    let get = &FLOWS[0];
    assert_eq!(get.expect, Verdict::Allowed);

    lab.stop_sidecar("web", true); // SIGKILL: a crash
    // With the sidecar gone the app's traffic is still redirected: it fails
    // closed instead of leaving the pod in the clear.
    let (verdict, output) = lab.call(get).expect("call");
    assert_eq!(verdict, Verdict::Denied, "no sidecar, no traffic: {output}");
    lab.restart_sidecar("web").expect("restarts");
    assert_eq!(
        lab.call(get).expect("call").0,
        Verdict::Allowed,
        "{}",
        lab.logs()
    );

    lab.restart_sidecar("web").expect("graceful restart");
    assert_eq!(lab.call(get).expect("call").0, Verdict::Allowed);
    // `ward init` again (a restarted init container) changes nothing either.
    let web = pod(&member(&lab, "web").host);
    let again = run(web, WARD, &["init"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(save(&lab), before, "rules changed across restarts");
}

/// `ward init --proxy-mark` with `ward proxy --mark`: the proxy runs as a
/// UID the rules do not exempt, so only the mark keeps its own connections
/// out of interception. Without `--mark` the same setup loops into the
/// proxy's outbound port and is refused: the mark is what makes it work.
#[test]
fn the_proxy_can_be_exempted_by_socket_mark_instead_of_uid() {
    if !require_transparent_or_skip() {
        return;
    }
    let init = |mark: bool| {
        let mut args = vec!["--proxy-uid".to_string(), "4242".into()];
        if mark {
            args.extend(["--proxy-mark".into(), "0x539".into()]);
        }
        args
    };
    let get = &FLOWS[0];
    let testbed = Testbed::new().expect("testbed");
    let options = Options {
        init_args: init(true),
        proxy_args: vec!["--mark".into(), "0x539".into()],
        proxy_as_root: true,
    };
    let lab = Lab::start_with(WARD.as_ref(), Placement::Pods(&testbed), options)
        .unwrap_or_else(|e| panic!("lab: {e}\n{}", testbed.logs()));
    assert_eq!(
        lab.call(get).expect("call").0,
        Verdict::Allowed,
        "{}",
        lab.logs()
    );
    drop(lab);
    drop(testbed);

    // Control: the same rules without a mark on the proxy's sockets. Its
    // connection to the CA is redirected back into itself, so it never
    // gets an SVID: the lab cannot start.
    let testbed = Testbed::new().expect("testbed");
    let options = Options {
        init_args: init(true),
        proxy_args: Vec::new(),
        proxy_as_root: true,
    };
    let started = Lab::start_with(WARD.as_ref(), Placement::Pods(&testbed), options);
    assert!(
        started.is_err(),
        "without the mark the proxy's traffic must be intercepted"
    );
}
