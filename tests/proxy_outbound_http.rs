//! HTTP on the outbound side: the client sidecar (`web`) serves the app's
//! plaintext connection request by request and carries it over mTLS to
//! `orders`. Checked on the client sidecar's own metrics (`direction=
//! "outbound"`, `peer="orders"`): per-request counts, 503/502 answers when
//! orders cannot be reached or is not who the mesh file says, opaque `tcp`
//! ports, detection, upgrades, large bodies, hop-by-hop headers, drain, and
//! a mesh connection the peer closes between requests. Real sockets and
//! real TLS on loopback; every wait is bounded.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use support::apps::{
    banner_app, echo_body_app, h1_connection, h1_send, h2_connection, http_app, http1_requests,
    http2_requests, read_banner, websocket,
};
use support::mesh::*;
use support::pair::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ward_proxy::settings::Limits;

const OUT_COUNT: &str =
    "ward_http_request_duration_seconds_count{direction=\"outbound\",peer=\"orders\"}";
/// Any outbound per-request series at all.
const ANY_OUT_REQUEST: &str = "ward_http_requests_total{direction=\"outbound\"";

/// The app's one request is answered 503 by the sidecar, counted so.
async fn assert_answered_503(web: &Sidecar) {
    let answers = http1_requests(web.forwards[0], &[("GET", "/api/a")]).await;
    assert_eq!(answers[0].0, 503, "{answers:?}");
    assert!(answers[0].2.starts_with("ward:"), "{answers:?}");
    web.assert_metric(&outbound(503), 1.0).await;
}

/// A stand-in for orders' sidecar ([`fake_orders_tls`]) speaking HTTP/2
/// that refuses every second stream of a connection (RST_STREAM
/// REFUSED_STREAM: not processed, as a draining or overloaded peer does)
/// and answers the others 200.
async fn fake_h2_orders_refusing_every_second_stream(ca: &TestCa) -> SocketAddr {
    fake_orders_tls(ca, DAY, |tls| async move {
        let Ok(mut conn) = h2::server::handshake(tls).await else {
            return;
        };
        let mut n = 0;
        while let Some(Ok((_, mut respond))) = conn.accept().await {
            n += 1;
            if n % 2 == 0 {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
            } else {
                let _ = respond.send_response(Response::new(()), true);
            }
        }
    })
    .await
}

/// `GET path` for orders.
fn get_request(path: &str) -> Request<Full<Bytes>> {
    let req = Request::get(path).header("host", "orders");
    req.body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_are_counted_outbound_over_one_mesh_connection() {
    let m = mesh(http_app().await, Opts::default()).await;
    let reqs = [("GET", "/"), ("GET", "/missing"), ("GET", "/")];
    let answers = http1_requests(m.web.forwards[0], &reqs).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses, [200, 404, 200]);
    assert_eq!(answers[0].2, "hello HTTP/1.1");
    m.web.assert_metric(&outbound(200), 2.0).await;
    m.web.assert_metric(&outbound(404), 1.0).await;
    m.web.assert_metric(OUT_COUNT, 3.0).await;
    // One app connection, one mesh connection (opened at its first request).
    m.web.assert_metric(OUT_HANDSHAKES, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_on_a_detect_port_is_counted_outbound() {
    let m = mesh(http_app().await, Opts::on("detect")).await;
    let answers = http2_requests(m.web.forwards[0], &["/", "/missing", "/"]).await;
    assert_eq!(
        answers[0],
        (200, "hello HTTP/2.0".to_string()),
        "h2 to the app"
    );
    assert_eq!(answers[1].0, 404);
    assert_eq!(answers[2].0, 200);
    m.web.assert_metric(&outbound(200), 2.0).await;
    m.web.assert_metric(&outbound(404), 1.0).await;
    m.web.assert_metric(OUT_COUNT, 3.0).await;
}

/// GETs allowed, but nothing under /api/admin.
const GETS_BUT_NOT_ADMIN: &str = r#"roles: { frontend: ["spiffe://mesh.test/ns/shop/sa/web"] }
allow: [{ name: gets, from: [frontend], to: orders, http: { methods: [GET] } }]
deny: [{ name: no-admin, from: [frontend], to: orders, http: { paths: ["/api/admin/*"] } }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_of_the_server_sidecar_are_counted_outbound() {
    let opts = Opts {
        policy: Some(GETS_BUT_NOT_ADMIN),
        ..Opts::default()
    };
    let m = mesh(http_app().await, opts).await;
    let reqs = [
        ("GET", "/api/a"),
        ("GET", "/api/admin/keys"),
        ("POST", "/api/a"),
    ];
    let answers = http1_requests(m.web.forwards[0], &reqs).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses, [200, 403, 403], "{answers:?}");
    // The refusal's request id (for orders' log line) reaches the app.
    assert!(answers[1].1.is_some(), "{answers:?}");
    m.web.assert_metric(&outbound(200), 1.0).await;
    m.web.assert_metric(&outbound(403), 2.0).await;
}

/// 503: no endpoint accepts a connection, or this sidecar has no SVID yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_service_answers_503() {
    let (_held, dead) = refusing_addr();
    let ca = TestCa::start(DAY).await;
    let web = web_towards(&ca, dead).await;
    assert_answered_503(&web).await;
    let series =
        "ward_tcp_connection_errors_total{direction=\"outbound\",reason=\"no_reachable_endpoint\"}";
    web.assert_metric(series, 1.0).await;

    // A CA that never serves: the sidecar never gets its certificate.
    let unserved = TestCa::new(DAY);
    let web = web_towards(&unserved, dead).await;
    assert_answered_503(&web).await;
    let series = "ward_tls_handshake_errors_total{direction=\"outbound\",reason=\"no_identity\"}";
    web.assert_metric(series, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_the_wrong_identity_answers_502_and_gets_nothing() {
    let (app, requests) = echo_body_app().await;
    // The mesh file says orders is .../sa/orders; its sidecar holds .../sa/cache.
    let opts = Opts {
        server_id: "cache",
        ..Opts::default()
    };
    let m = mesh(app, opts).await;
    let answers = http1_requests(m.web.forwards[0], &[("GET", "/secret")]).await;
    assert_eq!(answers[0].0, 502, "{answers:?}");
    assert!(answers[0].2.starts_with("ward:"), "{answers:?}");
    m.web.assert_metric(&outbound(502), 1.0).await;
    let series =
        "ward_tls_handshake_errors_total{direction=\"outbound\",reason=\"unexpected_identity\"}";
    m.web.assert_metric(series, 1.0).await;
    assert_eq!(m.web.metric(OUT_HANDSHAKES).await, 0.0);
    assert_eq!(requests.load(Ordering::SeqCst), 0, "the app saw a request");
    let inbound = m.orders.metrics().await;
    assert!(!inbound.contains("ward_http_requests_total{"), "{inbound}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_through_a_tcp_port_is_not_counted_outbound() {
    let m = mesh(http_app().await, Opts::on("tcp")).await;
    let req = b"GET / HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n";
    // No half-close: hyper (the app) would take it for an abort.
    let mut tcp = TcpStream::connect(m.web.forwards[0]).await.unwrap();
    tcp.write_all(req).await.unwrap();
    let mut back = String::new();
    let read = tcp.read_to_string(&mut back);
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the app closes after its answer")
        .unwrap();
    drop(tcp);
    assert!(back.starts_with("HTTP/1.1 200"), "{back}");
    assert!(back.ends_with("hello HTTP/1.1"), "{back}");
    // Counted as one opaque connection to orders, never as a request.
    let closed = "ward_tcp_connections_closed_total{direction=\"outbound\",peer=\"orders\"}";
    m.web.assert_metric(closed, 1.0).await;
    let text = m.web.metrics().await;
    assert!(!text.contains(ANY_OUT_REQUEST), "{text}");
    assert!(!text.contains(OUT_COUNT), "{text}");
}

/// Bytes that are not HTTP on a port declared `http` are refused by the
/// caller's sidecar, before any mesh connection (the service's sidecar
/// would refuse them too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_http_bytes_on_an_http_port_are_refused_before_the_mesh() {
    let m = mesh(http_app().await, Opts::on("http")).await;
    let back = round_trip(m.web.forwards[0], b"\x00\x01 not http\r\n").await;
    assert!(
        back.map(|b| b.is_empty()).unwrap_or(true),
        "nothing comes back"
    );
    let refused = "ward_tcp_connection_errors_total{direction=\"outbound\",reason=\"not_http\"}";
    m.web.assert_metric(refused, 1.0).await;
    let handshakes = "ward_tls_handshakes_total{direction=\"outbound\",peer=\"orders\"}";
    assert_eq!(m.web.metric(handshakes).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first_through_an_outbound_tcp_port_without_detection() {
    // Detection would wait 30 s on either side; a `tcp` port never waits.
    let opts = Opts::detecting("tcp", Duration::from_secs(30));
    let m = mesh(banner_app().await, opts).await;
    read_banner(m.web.forwards[0]).await;
    assert!(!m.web.metrics().await.contains(ANY_OUT_REQUEST));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_on_a_detect_port_falls_back_to_tcp() {
    let detect = Duration::from_millis(200);
    let opts = Opts::detecting("detect", detect);
    let m = mesh(banner_app().await, opts).await;
    let waited = read_banner(m.web.forwards[0]).await;
    // Not a timing target: nothing may reach the app before some side has
    // waited out the silence.
    assert!(waited >= detect, "{waited:?}");
    // The banner, received from orders, as opaque bytes.
    let banner = "ward_tcp_bytes_total{direction=\"outbound\",flow=\"received\",peer=\"orders\"}";
    m.web.assert_metric(banner, 12.0).await;
    assert!(!m.web.metrics().await.contains(ANY_OUT_REQUEST));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_speaking_first_on_a_detect_port_waits_for_one_detection_only() {
    // The client sidecar gives up on the silent app after 200 ms and says
    // so (ALPN `ward/1+tcp`); orders' sidecar, which would wait 60 s,
    // splices at once. Without the word the banner would not come back
    // within read_banner's 10 s.
    let mut opts = Opts::detecting("detect", Duration::from_millis(200));
    opts.server.detect_timeout = Duration::from_secs(60);
    let m = mesh(banner_app().await, opts).await;
    read_banner(m.web.forwards[0]).await;
    let banner = format!(
        "ward_tcp_bytes_total{{direction=\"inbound\",flow=\"sent\",peer=\"{}\"}}",
        workload("web")
    );
    m.orders.assert_metric(&banner, 12.0).await;
    assert!(
        !m.orders
            .metrics()
            .await
            .contains("ward_http_requests_total")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_through_both_sidecars() {
    let m = mesh(http_app().await, Opts::default()).await;
    let mut tcp = websocket(m.web.forwards[0]).await;
    for msg in [&b"first frame"[..], b"and a second one"] {
        tcp.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut back))
            .await
            .expect("echoed over the tunnel")
            .unwrap();
        assert_eq!(back, msg);
    }
    m.web.assert_metric(&outbound(101), 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_body_arrives_intact() {
    let (app, requests) = echo_body_app().await;
    let m = mesh(app, Opts::default()).await;
    let payload: Bytes = (0..3 * 512 * 1024 + 7).map(|i| (i % 251) as u8).collect();
    let mut sender = h1_connection(m.web.forwards[0]).await;
    let req = Request::post("/upload")
        .header("host", "orders")
        .body(Full::new(payload.clone()))
        .unwrap();
    let (status, back) = h1_send(&mut sender, req).await;
    assert_eq!(status, 200);
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "the body was corrupted on the way");
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    m.web.assert_metric(&outbound(200), 1.0).await;
}

/// An app that gives up halfway through its own upload is not a failure of
/// the service: it counts as 499 (client closed request), never as a 5xx
/// that would page whoever owns orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_aborts_its_upload_is_counted_499_not_5xx() {
    let (app, _) = echo_body_app().await;
    let m = mesh(app, Opts::default()).await;
    let mut tcp = TcpStream::connect(m.web.forwards[0]).await.unwrap();
    tcp.write_all(b"POST /upload HTTP/1.1\r\nHost: orders\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    tcp.write_all(&[7u8; 4096]).await.unwrap();
    // Let the request head reach orders' app before giving up.
    m.web.assert_metric(OUT_HANDSHAKES, 1.0).await;
    drop(tcp);
    m.web.assert_metric(&outbound(499), 1.0).await;
    let text = m.web.metrics().await;
    assert!(!text.contains("status_code=\"5"), "{text}");
}

/// The destination's sidecar strips hop-by-hop headers too, so only a peer
/// that shows what the outbound side sent it tests the outbound side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stay_on_the_app_connection() {
    let ca = TestCa::start(DAY).await;
    let web = web_towards(&ca, fake_orders_sidecar(&ca, usize::MAX, DAY).await).await;
    let mut sender = h1_connection(web.forwards[0]).await;
    let req = Request::get("/headers")
        .header("host", "orders")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("x-kept", "yes")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, body) = h1_send(&mut sender, req).await;
    assert_eq!(status, 200);
    let received = String::from_utf8_lossy(&body).to_lowercase();
    assert!(received.contains("x-kept: yes\n"), "{received}");
    for line in received.lines() {
        for hop in ["x-secret", "keep-alive", "proxy-connection"] {
            assert!(
                !line.starts_with(&format!("{hop}:")),
                "{hop} sent: {received}"
            );
        }
        assert!(
            !(line.starts_with("connection:") && line.contains("x-secret")),
            "{received}"
        );
    }
    web.assert_metric(&outbound(200), 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_drops_the_request_gives_502() {
    let ca = TestCa::start(DAY).await;
    let web = web_towards(&ca, fake_orders_sidecar(&ca, 0, DAY).await).await;
    let answers = http1_requests(web.forwards[0], &[("GET", "/api/a")]).await;
    assert_eq!(answers[0].0, 502, "{answers:?}");
    assert!(answers[0].2.starts_with("ward:"), "{answers:?}");
    web.assert_metric(&outbound(502), 1.0).await;
}

/// orders' sidecar closes each keep-alive connection when its second
/// request arrives (as at its idle timeout, just as the request went out).
/// A GET is sent again on a new connection, so the app gets its answer;
/// a POST might have been acted on, so it gets its 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_a_mesh_connection_closed_under_it_is_sent_again_but_a_post_is_not() {
    let ca = TestCa::start(DAY).await;
    let web = web_towards(&ca, fake_orders_sidecar(&ca, 1, DAY).await).await;
    let reqs = [("GET", "/a"), ("GET", "/b"), ("POST", "/c")];
    let answers = http1_requests(web.forwards[0], &reqs).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses, [200, 200, 502], "{answers:?}");
    // /a on the first mesh connection, /b again on a second, where the
    // POST was dropped.
    assert_two_answered_one_502_over_two_mesh_connections(&web).await;
}

/// The replay tests' count: two requests answered 200 and one 502, over
/// the first mesh connection and the one that replaced it.
async fn assert_two_answered_one_502_over_two_mesh_connections(web: &Sidecar) {
    web.assert_metric(OUT_HANDSHAKES, 2.0).await;
    web.assert_metric(&outbound(200), 2.0).await;
    web.assert_metric(&outbound(502), 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_the_peer_refuses_is_sent_again_if_safe() {
    let ca = TestCa::start(DAY).await;
    let web = web_towards(&ca, fake_h2_orders_refusing_every_second_stream(&ca).await).await;
    let mut app = h2_connection(web.forwards[0]).await;
    let mut statuses = Vec::new();
    for (method, body) in [("GET", ""), ("GET", ""), ("POST", "order")] {
        let req = Request::builder()
            .method(method)
            .uri("http://orders/")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), app.send_request(req)).await;
        statuses.push(resp.expect("answered").unwrap().status().as_u16());
    }
    // The first GET on the first mesh connection; the second, refused
    // there, again on a second connection, where the POST (with a body:
    // not sent again) is refused.
    assert_eq!(statuses, [200, 200, 502]);
    assert_two_answered_one_502_over_two_mesh_connections(&web).await;
}

/// A session the web sidecar resumes (TLS 1.3 resumption verifies no
/// chain) with a server whose SVID has expired since it was made is
/// refused as a full handshake would be: the app gets its 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumed_after_the_server_svid_expired_is_refused() {
    let ca = TestCa::start(DAY).await;
    let ttl = Duration::from_secs(2);
    let web = web_towards(&ca, fake_orders_sidecar(&ca, usize::MAX, ttl).await).await;
    let first = http1_requests(web.forwards[0], &[("GET", "/a")]).await;
    assert_eq!(first[0].0, 200, "{first:?}");
    tokio::time::sleep(ttl + Duration::from_millis(1500)).await;
    let second = http1_requests(web.forwards[0], &[("GET", "/b")]).await;
    assert_eq!(second[0].0, 502, "{second:?}");
    let expired =
        "ward_tls_handshake_errors_total{direction=\"outbound\",reason=\"expired_certificate\"}";
    web.assert_metric(expired, 1.0).await;
    web.assert_metric(OUT_HANDSHAKES, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_the_client_sidecar_finishes_the_request_in_flight() {
    let opts = Opts {
        drain: Duration::from_secs(10),
        ..Opts::default()
    };
    let mut m = mesh(http_app().await, opts).await;
    let mut app = h1_connection(m.web.forwards[0]).await;
    let slow = tokio::spawn(async move { (h1_send(&mut app, get_request("/slow")).await, app) });
    // The mesh connection opens with the request; then drain the client side.
    let open = "ward_tcp_open_connections{direction=\"inbound\"}";
    let sent = poll(Duration::from_secs(5), || async {
        m.orders.metric(open).await == 1.0
    });
    assert!(sent.await, "the request reached orders");
    tokio::time::sleep(Duration::from_millis(200)).await;
    m.web.shutdown();
    let ((status, body), mut app) = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("answered during the drain")
        .unwrap();
    assert_eq!((status, body.as_ref()), (200, &b"slow done"[..]));
    // The sidecar then closes the app's keep-alive connection itself, so the
    // drain ends well before its 10 s deadline.
    tokio::time::timeout(Duration::from_secs(8), &mut m.web.task)
        .await
        .expect("drained")
        .unwrap();
    let ready = tokio::time::timeout(Duration::from_secs(5), app.ready()).await;
    assert!(
        ready.expect("bounded").is_err(),
        "the app connection is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_connection_the_peer_closed_is_reopened_for_the_next_request() {
    // orders' sidecar closes a keep-alive connection idle for 300 ms.
    let opts = Opts {
        server: Limits {
            idle_timeout: Duration::from_millis(300),
            ..Limits::default()
        },
        ..Opts::default()
    };
    let m = mesh(http_app().await, opts).await;
    let mut app = h1_connection(m.web.forwards[0]).await;
    assert_eq!(h1_send(&mut app, get_request("/")).await.0, 200);
    let open = "ward_tcp_open_connections{direction=\"inbound\"}";
    let closed = poll(Duration::from_secs(10), || async {
        m.orders.metric(open).await == 0.0
    });
    assert!(closed.await, "orders closed the idle mesh connection");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Same app connection: the outbound side opens a new mesh connection.
    let (status, body) = h1_send(&mut app, get_request("/")).await;
    assert_eq!((status, body.as_ref()), (200, &b"hello HTTP/1.1"[..]));
    m.web.assert_metric(&outbound(200), 2.0).await;
    m.web.assert_metric(OUT_HANDSHAKES, 2.0).await;
}
