//! The client sidecar's pool of idle HTTP/1 mesh connections
//! (docs/pooling.md): an app that opens a connection per request reuses
//! one mTLS connection instead of paying a handshake each time, but never
//! past the pool's age limit, the peer's SVID, a change of our own SVID,
//! or the drain; and a peer dropping a request on a pooled connection
//! costs a GET nothing.
//! Checked on both sidecars' metrics, over real sockets and real TLS on
//! loopback; every wait is bounded.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use support::apps::{h1_connection, h1_send, http_app, http1_requests};
use support::mesh::*;
use support::pair::*;
use ward_proxy::settings::Limits;

const POOLED: &str = "ward_http_pool_idle_connections{peer=\"orders\"}";
const REUSES: &str = "ward_http_pool_reuses_total{peer=\"orders\"}";
/// Mesh connections open at orders' sidecar.
const ORDERS_OPEN: &str = "ward_tcp_open_connections{direction=\"inbound\"}";

/// One app connection with one GET; its status.
async fn one_get(web: &Sidecar) -> u16 {
    http1_requests(web.forwards[0], &[("GET", "/")]).await[0].0
}

/// web's own limits in `opts`, orders' the defaults.
fn client(limits: Limits) -> Opts {
    Opts {
        client: limits,
        ..Opts::default()
    }
}

/// web keeping at most `n` idle connections per endpoint.
fn max_idle(n: usize) -> Opts {
    client(Limits {
        pool_max_idle: n,
        ..Limits::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_connections_one_after_another_share_one_mesh_connection() {
    let m = mesh(http_app().await, Opts::default()).await;
    for reuses in 0..3 {
        assert_eq!(one_get(&m.web).await, 200);
        // Back in the pool once the app connection has ended.
        m.web.assert_metric(POOLED, 1.0).await;
        m.web.assert_metric(REUSES, f64::from(reuses)).await;
    }
    m.web.assert_metric(OUT_HANDSHAKES, 1.0).await;
    m.web.assert_metric(&outbound(200), 3.0).await;
    let opened = "ward_tcp_connections_opened_total{direction=\"inbound\"}";
    m.orders.assert_metric(opened, 1.0).await;
    m.orders.assert_metric(ORDERS_OPEN, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooling_off_makes_a_handshake_per_app_connection() {
    let m = mesh(http_app().await, max_idle(0)).await;
    for handshakes in 1..=2 {
        assert_eq!(one_get(&m.web).await, 200);
        m.web
            .assert_metric(OUT_HANDSHAKES, f64::from(handshakes))
            .await;
        // The mesh connection closed with the app's.
        m.orders.assert_metric(ORDERS_OPEN, 0.0).await;
    }
    m.web.assert_metric(REUSES, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_keeps_at_most_pool_max_idle_per_endpoint() {
    let m = mesh(http_app().await, max_idle(2)).await;
    // Three app connections at once, each holding its own mesh connection.
    let mut apps = Vec::new();
    for _ in 0..3 {
        let mut app = h1_connection(m.web.forwards[0]).await;
        let get = Request::get("http://orders/").body(Full::new(Bytes::new()));
        assert_eq!(h1_send(&mut app, get.unwrap()).await.0, 200);
        apps.push(app);
    }
    m.web.assert_metric(OUT_HANDSHAKES, 3.0).await;
    drop(apps);
    // Two given back are kept, the third is closed.
    m.web.assert_metric(POOLED, 2.0).await;
    m.orders.assert_metric(ORDERS_OPEN, 2.0).await;
    for _ in 0..2 {
        assert_eq!(one_get(&m.web).await, 200);
    }
    m.web.assert_metric(REUSES, 2.0).await;
    m.web.assert_metric(OUT_HANDSHAKES, 3.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_the_pool_max_age_is_closed_not_reused() {
    let short = Limits {
        pool_max_age: Duration::from_millis(300),
        ..Limits::default()
    };
    let m = mesh(http_app().await, client(short)).await;
    assert_eq!(one_get(&m.web).await, 200);
    // The sweep closes it, not the next app connection.
    m.orders.assert_metric(ORDERS_OPEN, 0.0).await;
    m.web.assert_metric(POOLED, 0.0).await;
    assert_eq!(one_get(&m.web).await, 200);
    m.web.assert_metric(OUT_HANDSHAKES, 2.0).await;
    m.web.assert_metric(REUSES, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_svid_never_reuses_a_connection_pooled_before_it() {
    // Renewed at about half its 10 s life, before the pooled connection
    // reaches its age limit (10 s) or the peer's SVID expires.
    let opts = Opts {
        svid_ttl: Duration::from_secs(10),
        ..Opts::default()
    };
    let m = mesh(http_app().await, opts).await;
    assert_eq!(one_get(&m.web).await, 200);
    m.web.assert_metric(POOLED, 1.0).await;
    let renewed = "ward_identity_renewals_total{result=\"success\"}";
    let first = m.web.metric(renewed).await;
    let renewal = poll(Duration::from_secs(15), || async {
        m.web.metric(renewed).await > first
    });
    assert!(renewal.await, "web renews its SVID");
    assert_eq!(one_get(&m.web).await, 200);
    m.web.assert_metric(OUT_HANDSHAKES, 2.0).await;
    m.web.assert_metric(REUSES, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_not_reused_past_the_server_svid() {
    let ca = TestCa::start(DAY).await;
    // A stand-in for orders whose SVID (never renewed) expires in 5 s.
    let orders = fake_orders_sidecar(&ca, usize::MAX, Duration::from_secs(5)).await;
    let web = web_towards(&ca, orders).await;
    assert_eq!(one_get(&web).await, 200);
    web.assert_metric(POOLED, 1.0).await;
    // Swept from the pool when the SVID expires, before the pool's age
    // limit (10 s); refused on a new handshake.
    assert!(
        poll(Duration::from_secs(8), || async {
            web.metric(POOLED).await == 0.0
        })
        .await,
        "the expired connection leaves the pool"
    );
    assert_eq!(one_get(&web).await, 502);
    web.assert_metric(REUSES, 0.0).await;
    let expired =
        "ward_tls_handshake_errors_total{direction=\"outbound\",reason=\"expired_certificate\"}";
    web.assert_metric(expired, 1.0).await;
}

/// A peer that drops a pooled connection as a request arrives on it (a
/// stand-in answering one request per connection): the GET is sent again
/// on a new connection, the POST, which the peer may have processed, is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_peer_drops_on_a_pooled_connection_is_resent_if_a_get() {
    let ca = TestCa::start(DAY).await;
    let orders = fake_orders_sidecar(&ca, 1, DAY).await;
    let web = web_towards(&ca, orders).await;
    assert_eq!(one_get(&web).await, 200);
    web.assert_metric(POOLED, 1.0).await;
    assert_eq!(one_get(&web).await, 200, "sent again on a new connection");
    web.assert_metric(REUSES, 1.0).await;
    web.assert_metric(OUT_HANDSHAKES, 2.0).await;
    web.assert_metric(POOLED, 1.0).await;
    let post = http1_requests(web.forwards[0], &[("POST", "/")]).await;
    assert_eq!(post[0].0, 502, "{post:?}");
    web.assert_metric(REUSES, 2.0).await;
    web.assert_metric(OUT_HANDSHAKES, 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_closes_pooled_connections_at_once() {
    let mut m = mesh(http_app().await, Opts::default()).await;
    assert_eq!(one_get(&m.web).await, 200);
    m.web.assert_metric(POOLED, 1.0).await;
    m.orders.assert_metric(ORDERS_OPEN, 1.0).await;
    m.web.shutdown();
    // Well within the 10 s the pool would keep it and the 5 s drain.
    m.orders.assert_metric(ORDERS_OPEN, 0.0).await;
    let stopped = tokio::time::timeout(Duration::from_secs(2), &mut m.web.task).await;
    assert!(stopped.is_ok(), "web stops at once: nothing is in flight");
}
