//! HTTP through two sidecars: the server sidecar serves HTTP/1.1 and HTTP/2
//! request by request (per-request metrics under the caller's identity),
//! passes upgrades through, never delays server-speaks-first protocols on
//! ports declared `tcp`, finishes in-flight requests when it drains, and
//! closes HTTP/2 connections left idle.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::apps::{banner_app, http_app, http1_requests, http2_requests, read_banner, websocket};
use support::mesh::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ward_proxy::settings::Limits;

const DAY: Duration = Duration::from_secs(86_400);

struct Mesh {
    _ca: TestCa,
    web: Sidecar,
    orders: Sidecar,
}

/// web --forward--> web sidecar ==mTLS==> orders sidecar --> `app`, whose
/// port is declared `protocol` in the mesh file.
async fn mesh(app: SocketAddr, protocol: &str, limits: Limits, drain: Duration) -> Mesh {
    mesh_declared(app, [protocol, protocol], limits, drain).await
}

/// [`mesh`] with web's and orders' mesh files declaring the port
/// `[web's, orders']` protocols.
async fn mesh_declared(
    app: SocketAddr,
    [web_protocol, orders_protocol]: [&str; 2],
    limits: Limits,
    drain: Duration,
) -> Mesh {
    let ca = TestCa::start(DAY).await;
    let orders_id = workload("orders");
    let orders_mesh = ca.tmp.path().join("orders-mesh.yaml");
    let service = |endpoint, protocol| [("orders", &orders_id, endpoint, app.port(), protocol)];
    write_mesh_protocols(&orders_mesh, &service(app, orders_protocol));
    let mut server = SidecarSpec::new(&ca, orders_id.clone(), orders_mesh);
    server.app = Some(app);
    server.limits = limits.clone();
    server.drain_timeout = drain;
    let orders = server.start().await;
    let web_mesh = ca.tmp.path().join("web-mesh.yaml");
    write_mesh_protocols(&web_mesh, &service(orders.inbound.unwrap(), web_protocol));
    let mut client = SidecarSpec::new(&ca, workload("web"), web_mesh);
    client.forwards = vec![("orders".into(), app.port())];
    client.limits = limits;
    let web = client.start().await;
    assert!(web.wait_ready(Duration::from_secs(10)).await);
    assert!(orders.wait_ready(Duration::from_secs(10)).await);
    Mesh {
        _ca: ca,
        web,
        orders,
    }
}

fn requests_series(status: u16) -> String {
    format!(
        "ward_http_requests_total{{direction=\"inbound\",peer=\"{}\",status_code=\"{status}\"}}",
        workload("web")
    )
}

/// (status, body) of GET requests on one keep-alive connection.
async fn h1_get(addr: SocketAddr, paths: &[&str]) -> Vec<(u16, String)> {
    let reqs: Vec<(&str, &str)> = paths.iter().map(|p| ("GET", *p)).collect();
    http1_requests(addr, &reqs)
        .await
        .into_iter()
        .map(|(status, _, body)| (status, body))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_are_served_and_counted_per_request() {
    let m = mesh(
        http_app().await,
        "http",
        Limits::default(),
        Duration::from_secs(5),
    )
    .await;
    // Three requests on one keep-alive connection.
    let answers = h1_get(m.web.forwards[0], &["/", "/missing", "/"]).await;
    assert_eq!(answers[0], (200, "hello HTTP/1.1".to_string()));
    assert_eq!(answers[1].0, 404);
    assert_eq!(answers[2].0, 200);
    assert_eq!(m.orders.metric(&requests_series(200)).await, 2.0);
    assert_eq!(m.orders.metric(&requests_series(404)).await, 1.0);
    let count = format!(
        "ward_http_request_duration_seconds_count{{direction=\"inbound\",peer=\"{}\"}}",
        workload("web")
    );
    assert_eq!(m.orders.metric(&count).await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_is_detected_and_served() {
    let m = mesh(
        http_app().await,
        "detect",
        Limits::default(),
        Duration::from_secs(5),
    )
    .await;
    let answers = http2_requests(m.web.forwards[0], &["/", "/", "/"]).await;
    assert!(
        answers
            .iter()
            .all(|a| *a == (200, "hello HTTP/2.0".to_string())),
        "{answers:?}"
    );
    assert_eq!(m.orders.metric(&requests_series(200)).await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_pass_through() {
    let m = mesh(
        http_app().await,
        "http",
        Limits::default(),
        Duration::from_secs(5),
    )
    .await;
    let mut tcp = websocket(m.web.forwards[0]).await;
    tcp.write_all(b"ping over the upgraded connection")
        .await
        .unwrap();
    let mut back = [0u8; 33];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ping over the upgraded connection");
    assert_eq!(m.orders.metric(&requests_series(101)).await, 1.0);
    // The tunnel is a connection like any other: open (so capped and
    // drained) until it ends, on both sidecars.
    let open = |direction: &str| format!("ward_tcp_open_connections{{direction=\"{direction}\"}}");
    assert_eq!(m.web.metric(&open("outbound")).await, 1.0);
    assert_eq!(m.orders.metric(&open("inbound")).await, 1.0);
    drop(tcp);
    m.web.assert_metric(&open("outbound"), 0.0).await;
    m.orders.assert_metric(&open("inbound"), 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_upgrades_are_not_turned_into_tunnels() {
    let m = mesh(
        http_app().await,
        "http",
        Limits::default(),
        Duration::from_secs(5),
    )
    .await;
    let mut tcp = TcpStream::connect(m.web.forwards[0]).await.unwrap();
    tcp.write_all(
        b"GET /api/h2c HTTP/1.1\r\nHost: orders\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &head, b"HTTP/1.1 200",
        "served as a plain request, not switched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first_on_a_tcp_port_is_not_delayed() {
    // Detection would wait 60 s here; a port declared tcp must not wait at all.
    let limits = Limits {
        detect_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let m = mesh(banner_app().await, "tcp", limits, Duration::from_secs(5)).await;
    read_banner(m.web.forwards[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_http_bytes_on_an_http_port_are_refused() {
    // web's file says tcp, so its sidecar carries the bytes; orders' says http.
    let m = mesh_declared(
        http_app().await,
        ["tcp", "http"],
        Limits::default(),
        Duration::from_secs(5),
    )
    .await;
    let back = round_trip(m.web.forwards[0], b"\x00\x01 not http at all").await;
    assert!(back.map(|b| b.is_empty()).unwrap_or(true));
    let series = "ward_tcp_connection_errors_total{direction=\"inbound\",reason=\"not_http\"}";
    assert!(
        poll(Duration::from_secs(5), || async {
            m.orders.metric(series).await == 1.0
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_the_request_in_flight() {
    let mut m = mesh(
        http_app().await,
        "http",
        Limits::default(),
        Duration::from_secs(10),
    )
    .await;
    let addr = m.web.forwards[0];
    let slow = tokio::spawn(async move { h1_get(addr, &["/slow"]).await });
    // Let the request reach the app, then drain the server sidecar.
    assert!(
        poll(Duration::from_secs(5), || async {
            m.orders
                .metric("ward_tcp_open_connections{direction=\"inbound\"}")
                .await
                == 1.0
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    m.orders.shutdown();
    let answers = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answers, vec![(200, "slow done".to_string())]);
    // With nothing left in flight the drain ends before its 10 s deadline.
    tokio::time::timeout(Duration::from_secs(8), &mut m.orders.task)
        .await
        .expect("drained")
        .unwrap();
}

/// An HTTP/2 connection on which nothing moves for the idle timeout is
/// closed, on both sides, as an opaque one would be: the app's connection
/// to its sidecar and the mesh connection between the sidecars.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_at_the_idle_timeout() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(400),
        ..Limits::default()
    };
    let m = mesh(http_app().await, "http", limits, Duration::from_secs(5)).await;
    let tcp = TcpStream::connect(m.web.forwards[0]).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("http://orders/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The sender stays alive: only the idle timeout can end the connection.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "the app's idle h2 connection stayed open");
    let open = |direction: &str| format!("ward_tcp_open_connections{{direction=\"{direction}\"}}");
    m.web.assert_metric(&open("outbound"), 0.0).await;
    m.orders.assert_metric(&open("inbound"), 0.0).await;
    drop(sender);
}
