//! Two sidecars and a CA on loopback: an app's plaintext TCP goes through
//! the client sidecar, crosses mutual TLS with SVIDs the CA issued over
//! HTTPS, and reaches the server app through the server sidecar.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::mesh::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DAY: Duration = Duration::from_secs(86_400);

/// web --forward--> [web sidecar] ==mTLS==> [orders sidecar] --> echo app
struct Pair {
    _ca: TestCa,
    web: Sidecar,
    orders: Sidecar,
    app_accepts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn pair_with(ca: TestCa, orders_identity: &str, drain: Duration) -> Pair {
    let (app, app_accepts) = echo_app().await;
    let mesh = ca.tmp.path().join("mesh.yaml");
    let mut server = SidecarSpec::new(&ca, workload(orders_identity), mesh.clone());
    server.app = Some(app);
    server.drain_timeout = drain;
    // The server's inbound port must be in the mesh file before the client
    // starts: write a placeholder, start the server, then the real file.
    write_mesh(&mesh, &[("orders", &workload("orders"), app, 8080)]);
    let orders = server.start().await;
    write_mesh(
        &mesh,
        &[("orders", &workload("orders"), orders.inbound.unwrap(), 8080)],
    );
    let mut client = SidecarSpec::new(&ca, workload("web"), mesh);
    client.forwards = vec![("orders".into(), 8080)];
    client.drain_timeout = drain;
    let web = client.start().await;
    assert!(
        web.wait_ready(Duration::from_secs(10)).await,
        "web sidecar ready"
    );
    assert!(
        orders.wait_ready(Duration::from_secs(10)).await,
        "orders sidecar ready"
    );
    Pair {
        _ca: ca,
        web,
        orders,
        app_accepts,
    }
}

async fn pair() -> Pair {
    pair_with(TestCa::start(DAY).await, "orders", Duration::from_secs(5)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_crosses_mutual_tls_end_to_end() {
    let p = pair().await;
    let echoed = round_trip(p.web.forwards[0], b"hello orders")
        .await
        .unwrap();
    assert_eq!(echoed, b"hello orders");
    assert_eq!(p.app_accepts.load(Ordering::SeqCst), 1);

    // Both sides counted the connection under the peer's authenticated name.
    let web_id = workload("web");
    let closed_in =
        format!("ward_tcp_connections_closed_total{{direction=\"inbound\",peer=\"{web_id}\"}}");
    assert!(
        poll(Duration::from_secs(5), || async {
            p.orders.metric(&closed_in).await == 1.0
        })
        .await
    );
    let recv = format!(
        "ward_tcp_bytes_total{{direction=\"inbound\",flow=\"received\",peer=\"{web_id}\"}}"
    );
    assert_eq!(p.orders.metric(&recv).await, 12.0);
    let sent = "ward_tcp_bytes_total{direction=\"outbound\",flow=\"sent\",peer=\"orders\"}";
    assert_eq!(p.web.metric(sent).await, 12.0);
    let metrics = p.web.metrics().await;
    for family in [
        "ward_tcp_connections_opened_total",
        "ward_tcp_open_connections",
        "ward_identity_cert_expiration_timestamp_seconds",
        "ward_identity_renewals_total{result=\"success\"} 1",
        "ward_build_info{version=",
    ] {
        assert!(metrics.contains(family), "missing {family} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_and_large_transfers_pass_through() {
    let p = pair().await;
    let mut tcp = TcpStream::connect(p.web.forwards[0]).await.unwrap();
    let payload: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = tcp.split();
    let write = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap(); // half-close; the echo app must still answer
    };
    let read = async {
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        back
    };
    let (_, back) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(write, read) })
            .await
            .expect("bounded");
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "payload corrupted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_a_server_with_an_unexpected_identity() {
    // The mesh file says orders is spiffe://.../orders, but the sidecar
    // answering at that endpoint holds spiffe://.../cache.
    let p = pair_with(TestCa::start(DAY).await, "cache", Duration::from_secs(5)).await;
    let result = round_trip(p.web.forwards[0], b"secret").await;
    assert!(
        result.map(|b| b.is_empty()).unwrap_or(true),
        "nothing may come back"
    );
    let series =
        "ward_tls_handshake_errors_total{direction=\"outbound\",reason=\"unexpected_identity\"}";
    assert!(
        poll(Duration::from_secs(5), || async {
            p.web.metric(series).await == 1.0
        })
        .await
    );
    assert_eq!(
        p.app_accepts.load(Ordering::SeqCst),
        0,
        "the app never saw the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_swaps_the_certificate_without_touching_open_connections() {
    // 4-second SVIDs: renewal at ~2 s.
    let p = pair_with(
        TestCa::start(Duration::from_secs(4)).await,
        "orders",
        Duration::from_secs(5),
    )
    .await;
    let first_expiry = p
        .web
        .metric("ward_identity_cert_expiration_timestamp_seconds")
        .await;
    let mut long = TcpStream::connect(p.web.forwards[0]).await.unwrap();
    long.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    long.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"before");

    let renewed = "ward_identity_renewals_total{result=\"success\"}";
    assert!(
        poll(Duration::from_secs(10), || async {
            p.web.metric(renewed).await >= 2.0 && p.orders.metric(renewed).await >= 2.0
        })
        .await
    );
    assert!(
        p.web
            .metric("ward_identity_cert_expiration_timestamp_seconds")
            .await
            > first_expiry
    );

    // Past the first SVID's expiry, the old connection still works...
    tokio::time::sleep(Duration::from_secs(3)).await;
    long.write_all(b"after!").await.unwrap();
    long.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after!");
    // ...and new connections handshake with the renewed SVIDs.
    assert_eq!(
        round_trip(p.web.forwards[0], b"fresh").await.unwrap(),
        b"fresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_reports_not_ready_and_lets_open_connections_finish() {
    let mut p = pair_with(TestCa::start(DAY).await, "orders", Duration::from_secs(3)).await;
    let mut open = TcpStream::connect(p.web.forwards[0]).await.unwrap();
    open.write_all(b"in flight").await.unwrap();
    let mut buf = [0u8; 9];
    open.read_exact(&mut buf).await.unwrap();

    p.orders.shutdown();
    assert!(
        poll(Duration::from_secs(2), || async {
            get(p.orders.admin, "/ready").await.0 == 503
        })
        .await
    );
    // The connection opened before the drain keeps working during it.
    open.write_all(b"still ok!").await.unwrap();
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still ok!");
    // New connections to the draining sidecar are not accepted.
    assert!(
        round_trip(p.web.forwards[0], b"new")
            .await
            .map(|b| b.is_empty())
            .unwrap_or(true)
    );
    // At the drain deadline the remaining connection is closed and the proxy stops.
    tokio::time::timeout(Duration::from_secs(10), &mut p.orders.task)
        .await
        .expect("stops after the drain timeout")
        .unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut rest))
        .await
        .expect("closed");
    assert!(n.map(|n| n == 0).unwrap_or(true));
}
