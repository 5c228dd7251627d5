//! The policy enforced by a real server sidecar, for a real client sidecar:
//! default deny at L4, HTTP rules per request with normalized paths, deny
//! over allow, audit mode, and reloads (a revoked peer's open connection is
//! closed; a broken file leaves the last good policy in force).

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustls::pki_types::ServerName;
use support::apps::{http_app, http1_requests};
use support::mesh::*;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use ward_config::TrustDomain;
use ward_proxy::tls::config::{Carries, MESH_OPAQUE_ALPN, client_config};

const DAY: Duration = Duration::from_secs(86_400);

struct Mesh {
    ca: TestCa,
    path: PathBuf,
    app: SocketAddr,
    protocol: &'static str,
    web: Sidecar,
    orders: Sidecar,
}

/// Successful mesh file loads: [`mesh`] leaves orders' sidecar at 2.
const RELOADED: &str = "ward_policy_reloads_total{result=\"success\"}";

impl Mesh {
    /// Rewrites the mesh file (same services) with another policy and
    /// waits until orders' sidecar has loaded it.
    async fn set_policy(&self, policy: &str) {
        let endpoint = self.orders.inbound.unwrap();
        let orders = workload("orders");
        write_mesh_with_policy(
            &self.path,
            &[("orders", &orders, endpoint, self.app.port(), self.protocol)],
            policy,
        );
        assert!(reloads(&self.orders, 3.0).await, "the new policy is loaded");
    }

    async fn authz(&self, decision: &str, rule: &str) -> f64 {
        let series = format!(
            "ward_authz_decisions_total{{decision=\"{decision}\",direction=\"inbound\",rule=\"{rule}\"}}"
        );
        self.orders.metric(&series).await
    }
}

/// web --forward--> web sidecar ==mTLS==> orders sidecar --> `app`.
async fn mesh(app: SocketAddr, protocol: &'static str, policy: &str) -> Mesh {
    let ca = TestCa::start(DAY).await;
    let path = ca.tmp.path().join("mesh.yaml");
    let orders_id = workload("orders");
    write_mesh_with_policy(
        &path,
        &[("orders", &orders_id, app, app.port(), protocol)],
        policy,
    );
    let mut server = SidecarSpec::new(&ca, orders_id.clone(), path.clone());
    server.app = Some(app);
    let orders = server.start().await;
    write_mesh_with_policy(
        &path,
        &[(
            "orders",
            &orders_id,
            orders.inbound.unwrap(),
            app.port(),
            protocol,
        )],
        policy,
    );
    let mut client = SidecarSpec::new(&ca, workload("web"), path.clone());
    client.forwards = vec![("orders".into(), app.port())];
    let web = client.start().await;
    assert!(web.wait_ready(Duration::from_secs(10)).await);
    assert!(orders.wait_ready(Duration::from_secs(10)).await);
    // Orders started on the file with the app's address; the rewrite must
    // be in force before a test changes the policy and counts reloads.
    assert!(
        reloads(&orders, 2.0).await,
        "the endpoint rewrite is loaded"
    );
    Mesh {
        ca,
        path,
        app,
        protocol,
        web,
        orders,
    }
}

/// Whether `sidecar` reaches `n` successful loads of the mesh file.
async fn reloads(sidecar: &Sidecar, n: f64) -> bool {
    poll(Duration::from_secs(5), || async {
        sidecar.metric(RELOADED).await >= n
    })
    .await
}

const WEB_ONLY_GETS: &str = r#"roles:
  frontend: ["spiffe://mesh.test/ns/shop/sa/web"]
allow:
  - name: web-reads-api
    from: [frontend]
    to: orders
    http: { methods: [GET], paths: ["/api/*", "/"] }
deny:
  - name: no-admin
    from: [frontend]
    to: orders
    http: { paths: ["/api/admin/*"] }
"#;

const DB_ONLY: &str = r#"roles:
  storage: ["spiffe://mesh.test/ns/shop/sa/db"]
allow:
  - { name: db-only, from: [storage], to: orders }
"#;

const EVERYONE: &str = r#"roles:
  everyone: ["spiffe://mesh.test/ns/shop/sa/*"]
allow:
  - { name: everyone, from: [everyone], to: orders }
"#;

/// [`EVERYONE`], with web also named exactly.
const EVERYONE_AND_WEB: &str = r#"roles:
  everyone: ["spiffe://mesh.test/ns/shop/sa/*"]
  frontend: ["spiffe://mesh.test/ns/shop/sa/web"]
allow:
  - { name: everyone, from: [everyone], to: orders }
"#;

/// Metric labels are bounded by the mesh file: a peer it does not name
/// (here admitted by a wildcard only) is counted as `other` in every
/// per-peer family, and never appears in a series; once a reload names
/// it, new connections carry its ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_peers_the_mesh_file_names_label_metrics() {
    let m = mesh(http_app().await, "http", EVERYONE).await;
    let web = workload("web");
    let series = |peer: &str| {
        [
            format!("ward_tls_handshakes_total{{direction=\"inbound\",peer=\"{peer}\"}}"),
            format!("ward_tcp_connections_closed_total{{direction=\"inbound\",peer=\"{peer}\"}}"),
            format!(
                "ward_http_requests_total{{direction=\"inbound\",peer=\"{peer}\",status_code=\"200\"}}"
            ),
            format!(
                "ward_http_request_duration_seconds_count{{direction=\"inbound\",peer=\"{peer}\"}}"
            ),
        ]
    };
    let counted = |peer: String, expected: f64| {
        let orders = &m.orders;
        async move {
            poll(Duration::from_secs(5), || async {
                let text = orders.metrics().await;
                series(&peer)
                    .iter()
                    .all(|s| metric_value(&text, s) == Some(expected))
            })
            .await
        }
    };
    let received = |peer: &str| {
        format!("ward_tcp_bytes_total{{direction=\"inbound\",flow=\"received\",peer=\"{peer}\"}}")
    };

    let answers = http1_requests(m.web.forwards[0], &[("GET", "/")]).await;
    assert_eq!(answers[0].0, 200);
    close_pooled(&m.web).await;
    assert!(
        counted("other".into(), 1.0).await,
        "{}",
        m.orders.metrics().await
    );
    assert!(m.orders.metric(&received("other")).await > 0.0);
    let text = m.orders.metrics().await;
    assert!(!text.contains(web.as_str()), "web's ID is a series: {text}");

    m.set_policy(EVERYONE_AND_WEB).await;
    let answers = http1_requests(m.web.forwards[0], &[("GET", "/")]).await;
    assert_eq!(answers[0].0, 200);
    close_pooled(&m.web).await;
    assert!(
        counted(web.to_string(), 1.0).await,
        "{}",
        m.orders.metrics().await
    );
    assert!(m.orders.metric(&received(web.as_str())).await > 0.0);
    assert!(
        counted("other".into(), 1.0).await,
        "the first connection stays where it was"
    );
}

/// Closes the mesh connection web pools once its app connection has given
/// it back: orders then counts it closed, and web's next app connection
/// makes a new one, labelled by the mesh file of its time.
async fn close_pooled(web: &Sidecar) {
    let pooled = "ward_http_pool_idle_connections{peer=\"orders\"}";
    web.assert_metric(pooled, 1.0).await;
    web.shared.pool.close_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_is_denied_by_default() {
    let (app, accepted) = echo_app().await;
    let m = mesh(app, "tcp", DB_ONLY).await;
    let back = round_trip(m.web.forwards[0], b"let me in").await;
    assert!(
        back.map(|b| b.is_empty()).unwrap_or(true),
        "nothing may come back"
    );
    assert!(
        poll(Duration::from_secs(5), || async {
            m.authz("deny", "default").await == 1.0
        })
        .await
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the app never saw the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_decided_one_by_one_on_normalized_paths() {
    let m = mesh(http_app().await, "http", WEB_ONLY_GETS).await;
    let answers = http1_requests(
        m.web.forwards[0],
        &[
            ("GET", "/api/items"),
            ("GET", "/api//v1/../items?x=1"),
            ("POST", "/api/items"),
            ("GET", "/api/admin/users"),
            ("GET", "/api/./admin/users"),
            ("GET", "/api%2Fadmin/users"),
        ],
    )
    .await;
    assert_eq!((answers[0].0, answers[0].2.as_str()), (200, "/api/items"));
    // What was checked is what the app received: the normalized path.
    assert_eq!((answers[1].0, answers[1].2.as_str()), (200, "/api/items"));
    for (i, want) in [(2, 403), (3, 403), (4, 403), (5, 400)] {
        let (status, id, body) = &answers[i];
        assert_eq!(*status, want, "request {i}: {body}");
        let id = id.as_deref().expect("a request id on every refusal");
        assert!(body.contains(id), "{body}");
        assert!(
            !body.contains("no-admin") && !body.contains("web-reads"),
            "no policy details to the caller: {body}"
        );
    }
    assert_eq!(
        m.authz("allow", "web-reads-api").await,
        2.0 + 1.0,
        "two requests and the connection"
    );
    assert_eq!(m.authz("deny", "default").await, 1.0);
    assert_eq!(m.authz("deny", "no-admin").await, 2.0);
    assert_eq!(m.authz("deny", "invalid_path").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_lets_denials_through_and_counts_them() {
    let policy = "mode: audit\n";
    let m = mesh(http_app().await, "http", policy).await;
    let answers = http1_requests(m.web.forwards[0], &[("GET", "/api/anything")]).await;
    assert_eq!(answers[0].0, 200);
    assert_eq!(
        m.authz("audit_deny", "default").await,
        2.0,
        "the connection and the request"
    );
    assert_eq!(m.authz("deny", "default").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_revokes_a_peer_closes_its_open_connection() {
    let (app, _) = echo_app().await;
    let m = mesh(app, "tcp", EVERYONE).await;
    let mut open = TcpStream::connect(m.web.forwards[0]).await.unwrap();
    open.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    open.read_exact(&mut buf).await.unwrap();

    m.set_policy(DB_ONLY).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the revoked connection must be closed");
    assert!(rest.is_empty());
    assert!(
        round_trip(m.web.forwards[0], b"again")
            .await
            .map(|b| b.is_empty())
            .unwrap_or(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_policy_file_leaves_the_last_good_one_in_force() {
    let (app, accepted) = echo_app().await;
    let m = mesh(app, "tcp", EVERYONE).await;
    assert_eq!(round_trip(m.web.forwards[0], b"one").await.unwrap(), b"one");
    let endpoint = m.orders.inbound.unwrap();
    let orders = workload("orders");
    let broken = "roles:\n  everyone: [\"spiffe://mesh.test/ns/shop/sa/*\"]\nallow:\n  - { name: x, from: [nobody], to: orders }\n";
    write_mesh_with_policy(
        &m.path,
        &[("orders", &orders, endpoint, m.app.port(), m.protocol)],
        broken,
    );
    let failed = "ward_policy_reloads_total{result=\"failure\"}";
    assert!(
        poll(Duration::from_secs(5), || async {
            m.orders.metric(failed).await >= 1.0
        })
        .await
    );
    assert_eq!(round_trip(m.web.forwards[0], b"two").await.unwrap(), b"two");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_http_probes_reach_the_app_without_mtls_and_nothing_else_does() {
    let app = http_app().await;
    let policy = format!(
        "probes:\n  - port: {}\n    paths: [\"/api/healthz\"]\n",
        app.port()
    );
    let m = mesh(app, "http", &policy).await;
    let inbound = m.orders.inbound.unwrap();
    // kubelet: plaintext HTTP to the sidecar's inbound port.
    let answers = http1_requests(
        inbound,
        &[
            ("GET", "/api/healthz"),
            ("GET", "/api/./healthz"),
            ("GET", "/api/orders"),
        ],
    )
    .await;
    assert_eq!((answers[0].0, answers[0].2.as_str()), (200, "/api/healthz"));
    assert_eq!(
        answers[1].0, 200,
        "probe paths are matched after normalization"
    );
    assert_eq!(answers[2].0, 403, "only the declared probe paths pass");
    assert_eq!(m.authz("allow", "probe").await, 2.0);
    assert_eq!(m.authz("deny", "probe").await, 1.0);
    // The probe does not open the port to the mesh: web has no allow rule,
    // so orders' sidecar closes the connection and web's sidecar answers
    // its app 502 (outbound HTTP) instead of the app's 200.
    let via_mesh = http1_requests_or_closed(m.web.forwards[0]).await;
    assert_eq!(via_mesh, Some(502), "web must not get through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_probe_opens_the_whole_port_in_plaintext() {
    let (app, _) = echo_app().await;
    let policy = format!("probes:\n  - port: {}\n", app.port());
    let m = mesh(app, "tcp", &policy).await;
    assert_eq!(
        round_trip(m.orders.inbound.unwrap(), b"are you alive")
            .await
            .unwrap(),
        b"are you alive"
    );
    assert_eq!(m.authz("allow", "probe").await, 1.0);
}

/// A client that says it carries opaque bytes (ALPN `ward/1+tcp`, what a
/// sidecar offers once its own detection found no HTTP) on a `detect` port
/// whose policy admits it by HTTP rules only: the word lets the server
/// sidecar skip detection only where that checks nothing. Non-HTTP bytes
/// are still refused, and HTTP is still decided request by request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_saying_it_carries_opaque_bytes_still_meets_the_http_rules() {
    let m = mesh(http_app().await, "detect", WEB_ONLY_GETS).await;
    let authority = m.ca.dir.load(None, OffsetDateTime::now_utc()).unwrap();
    let svid = support::svid(&authority, &workload("web"), DAY);
    let td = TrustDomain::new(TD).unwrap();
    let mut config =
        client_config(&svid, support::roots(&m.ca.dir), td, workload("orders")).unwrap();
    config.alpn_protocols = Carries::Opaque.alpn();
    let connector = TlsConnector::from(Arc::new(config));
    let orders = m.orders.inbound.unwrap();
    let exchange = async |bytes: &[u8]| {
        let tcp = TcpStream::connect(orders).await.unwrap();
        let mut tls = connector
            .connect(ServerName::from(orders.ip()), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(MESH_OPAQUE_ALPN));
        tls.write_all(bytes).await.unwrap();
        let mut back = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut back));
        let _ = read.await.expect("orders' sidecar answers or closes");
        String::from_utf8_lossy(&back).into_owned()
    };
    assert_eq!(
        exchange(b"ping\r\n").await,
        "",
        "non-HTTP bytes do not pass"
    );
    let refused = "ward_tcp_connection_errors_total{direction=\"inbound\",reason=\"not_http\"}";
    m.orders.assert_metric(refused, 1.0).await;
    let admin =
        exchange(b"GET /api/admin/users HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n");
    let answer = admin.await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert_eq!(m.authz("deny", "no-admin").await, 1.0);
}

/// One GET through `addr`; `None` if the connection is closed instead.
async fn http1_requests_or_closed(addr: SocketAddr) -> Option<u16> {
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    tcp.write_all(b"GET /api/healthz HTTP/1.1\r\nHost: orders\r\n\r\n")
        .await
        .ok()?;
    let mut head = [0u8; 12];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut head))
        .await
        .ok()?
        .ok()?;
    (read >= 12)
        .then(|| String::from_utf8_lossy(&head[9..12]).parse().ok())
        .flatten()
}
