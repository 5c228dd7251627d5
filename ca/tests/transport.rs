//! The CA endpoint's defences below the API: body size limit, slow clients,
//! non-TLS and old-TLS clients. Requests that a well-behaved client cannot
//! produce are written by hand over a real TLS 1.3 stream.

mod support;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tokio::io::AsyncWriteExt;
use ward_ca::server::Limits;

use support::*;

const WEB: &str = "spiffe://test.ward/ns/default/sa/web";
const HANDSHAKE_ERRORS: &str = "ward_ca_tls_handshake_errors_total";

/// 11a. A declared Content-Length over 64 KiB is refused before the body is
/// read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_declared_body_over_64k() {
    let srv = TestServer::start().await;
    let (token, _) = srv.token(WEB);
    let before = srv.denied("body_too_large").await;

    let mut tls = srv.tls().await;
    let local = tls.get_ref().0.local_addr().unwrap();
    let head = raw_svid_head(
        &bearer(&token),
        &format!("Content-Length: {}\r\n", 64 * 1024 + 1),
    );
    bounded("write", tls.write_all(head.as_bytes()))
        .await
        .unwrap();
    // No body is sent: the server must answer from the headers alone.
    let (bytes, closed) = read_until_close(&mut tls, STEP).await;
    let resp = RawResponse::parse(&bytes)
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&bytes)));
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["reason"], "body_too_large");
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(closed, "the server closes the connection after a 413");

    assert_eq!(srv.denied("body_too_large").await, before + 1.0);
    srv.expect_audit_denied("body_too_large", local, None, None);
    assert_eq!(srv.metric("ward_ca_svids_issued_total").await, 0.0);
}

/// 11b. A chunked body without a length is cut off once it passes 64 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_chunked_body_over_64k() {
    let srv = TestServer::start().await;
    let (token, _) = srv.token(WEB);
    let before = srv.denied("body_too_large").await;

    let mut tls = srv.tls().await;
    let local = tls.get_ref().0.local_addr().unwrap();
    let head = raw_svid_head(&bearer(&token), "Transfer-Encoding: chunked\r\n");
    let size = 64 * 1024 + 1;
    let mut wire = head.into_bytes();
    wire.extend_from_slice(format!("{size:x}\r\n").as_bytes());
    wire.extend(std::iter::repeat_n(b'A', size));
    // The chunk's CRLF and the last-chunk are never sent: the server must not
    // need the end of the body to decide.
    bounded("write", tls.write_all(&wire)).await.unwrap();
    let (bytes, closed) = read_until_close(&mut tls, STEP).await;
    let resp = RawResponse::parse(&bytes)
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&bytes)));
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["reason"], "body_too_large");
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(closed);

    assert_eq!(srv.denied("body_too_large").await, before + 1.0);
    srv.expect_audit_denied("body_too_large", local, None, None);
}

/// 11 (boundary). A body of exactly 64 KiB is read and judged on its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_of_exactly_64k_is_read() {
    let srv = TestServer::start().await;
    let (token, claims) = srv.token(WEB);
    let body = vec![b'A'; 64 * 1024];
    let resp = srv
        .expect_denied(
            Some(&bearer(&token)),
            body,
            StatusCode::BAD_REQUEST,
            "malformed_csr",
        )
        .await;
    srv.expect_audit_denied("malformed_csr", resp.client, Some(WEB), Some(&claims.jti));
    assert_eq!(srv.denied("body_too_large").await, 0.0);
}

/// 12a. Half the headers, then nothing: the header read timeout closes the
/// connection, and since a request had started it is a `request_timeout`
/// denial, counted and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_connection_stalled_in_headers() {
    let limits = short_limits();
    let srv = TestServer::start_with(limits.clone()).await;
    let series = denied_series("request_timeout");
    let before = srv.metric(&series).await;
    let idle_before = srv.metric("ward_ca_connection_timeouts_total").await;

    let mut tls = srv.tls().await;
    let local = tls.get_ref().0.local_addr().unwrap();
    bounded(
        "write",
        tls.write_all(b"POST /v1/svid HTTP/1.1\r\nHost: localhost\r\nAuthoriz"),
    )
    .await
    .unwrap();
    bounded("flush", tls.flush()).await.unwrap();
    let started = Instant::now();
    let (bytes, closed) =
        read_until_close(&mut tls, limits.request_timeout + Duration::from_secs(3)).await;
    let waited = started.elapsed();
    assert!(
        closed,
        "the server must close a connection stalled in its headers (waited {waited:?})"
    );
    assert!(
        waited >= limits.request_timeout / 2,
        "closed too early: {waited:?}"
    );
    assert!(
        waited <= limits.request_timeout + Duration::from_secs(2),
        "closed too late: {waited:?}"
    );
    if let Some(resp) = RawResponse::parse(&bytes) {
        assert_eq!(resp.status, 408, "only a timeout answer is acceptable");
    }

    let after = srv
        .wait_metric(&series, before + 1.0, Duration::from_secs(2))
        .await;
    assert_eq!(after, before + 1.0, "request_timeout counted once");
    let idle_after = srv.metric("ward_ca_connection_timeouts_total").await;
    assert_eq!(idle_after, idle_before, "not counted as an idle connection");
    let lines = srv.wait_audit(1, Duration::from_secs(2)).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    srv.expect_audit_denied("request_timeout", local, None, None);
}

/// 12b. Headers promise 1000 body bytes, 10 arrive: 408 after the request
/// timeout (or a close), counted as `request_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_out_stalled_body() {
    let limits = short_limits();
    let srv = TestServer::start_with(limits.clone()).await;
    let (token, _) = srv.token(WEB);
    let series = denied_series("request_timeout");
    let before = srv.metric(&series).await;

    let mut tls = srv.tls().await;
    let local = tls.get_ref().0.local_addr().unwrap();
    let mut wire = raw_svid_head(&bearer(&token), "Content-Length: 1000\r\n").into_bytes();
    wire.extend_from_slice(b"-----BEGIN");
    bounded("write", tls.write_all(&wire)).await.unwrap();
    bounded("flush", tls.flush()).await.unwrap();
    let started = Instant::now();
    let (bytes, closed) =
        read_until_close(&mut tls, limits.request_timeout + Duration::from_secs(3)).await;
    let waited = started.elapsed();
    assert!(
        waited >= limits.request_timeout / 2,
        "answered too early: {waited:?}"
    );
    assert!(
        waited <= limits.request_timeout + Duration::from_secs(2),
        "answered too late: {waited:?}"
    );
    match RawResponse::parse(&bytes) {
        Some(resp) => {
            assert_eq!(resp.status, 408, "{:?}", String::from_utf8_lossy(&bytes));
            assert_eq!(resp.json()["reason"], "request_timeout");
            assert_eq!(resp.header("connection"), Some("close"));
        }
        None => assert!(
            closed,
            "neither a 408 nor a close: {:?}",
            String::from_utf8_lossy(&bytes)
        ),
    }

    let after = srv
        .wait_metric(&series, before + 1.0, Duration::from_secs(2))
        .await;
    assert_eq!(after, before + 1.0, "request_timeout counted once");
    srv.expect_audit_denied("request_timeout", local, None, None);
    assert_eq!(srv.metric("ward_ca_svids_issued_total").await, 0.0);
}

/// 16a. Plain HTTP to the TLS port gets no HTTP answer and nothing issued,
/// and counts as a failed handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_http_to_tls_port_is_refused() {
    let srv = TestServer::start().await;
    let (token, _) = srv.token(WEB);
    let (_, csr) = csr_for(WEB);
    let before = srv.metric(HANDSHAKE_ERRORS).await;

    let mut tcp = srv.tcp().await;
    let mut wire = raw_svid_head(
        &bearer(&token),
        &format!("Content-Length: {}\r\n", csr.len()),
    )
    .into_bytes();
    wire.extend_from_slice(csr.as_bytes());
    bounded("write", tcp.write_all(&wire)).await.unwrap();
    let (bytes, closed) = read_until_close(&mut tcp, STEP).await;
    assert!(closed, "the server closes a non-TLS connection");
    assert!(
        !bytes.starts_with(b"HTTP/"),
        "got an HTTP answer over plaintext: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(!String::from_utf8_lossy(&bytes).contains("BEGIN CERTIFICATE"));
    if let Some(first) = bytes.first() {
        assert_eq!(
            *first, 0x15,
            "anything sent back is a TLS alert record: {bytes:02x?}"
        );
    }

    let after = srv
        .wait_metric(HANDSHAKE_ERRORS, before + 1.0, Duration::from_secs(2))
        .await;
    assert_eq!(after, before + 1.0);
    assert_eq!(srv.metric("ward_ca_svids_issued_total").await, 0.0);
    assert!(srv.audit().is_empty(), "no SVID decision was made");
}

/// 16b. A client that only speaks TLS 1.2 cannot connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_only_client_fails_handshake() {
    let srv = TestServer::start().await;
    let before = srv.metric(HANDSHAKE_ERRORS).await;
    let tls12 = client_config(&srv.root_pem, &[&rustls::version::TLS12]);
    let err = srv
        .tls_with(tls12)
        .await
        .expect_err("TLS 1.2 must be refused");
    let text = err.to_string();
    assert!(
        text.to_lowercase().contains("version") || text.contains("Alert"),
        "unexpected error: {text}"
    );
    let after = srv
        .wait_metric(HANDSHAKE_ERRORS, before + 1.0, Duration::from_secs(2))
        .await;
    assert_eq!(after, before + 1.0);
    // The same client with TLS 1.3 gets through.
    let resp = srv.get("/healthz").await;
    assert_eq!(resp.status, StatusCode::OK);
}

/// A TCP connection that never starts TLS is closed after the handshake
/// timeout and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_connection_that_never_starts_tls() {
    let limits = short_limits();
    let srv = TestServer::start_with(limits.clone()).await;
    let before = srv.metric(HANDSHAKE_ERRORS).await;
    let mut tcp = srv.tcp().await;
    let started = Instant::now();
    let (bytes, closed) =
        read_until_close(&mut tcp, limits.handshake_timeout + Duration::from_secs(3)).await;
    let waited = started.elapsed();
    assert!(
        closed && bytes.is_empty(),
        "closed={closed} bytes={bytes:?}"
    );
    assert!(
        waited <= limits.handshake_timeout + Duration::from_secs(2),
        "{waited:?}"
    );
    let after = srv
        .wait_metric(HANDSHAKE_ERRORS, before + 1.0, Duration::from_secs(2))
        .await;
    assert_eq!(after, before + 1.0);
}

/// A client that completes the TLS handshake and then sends nothing must not
/// hold a connection slot forever: the server promises a header read timeout
/// (`Limits::request_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_connection_silent_after_tls_handshake() {
    let limits = short_limits();
    let srv = TestServer::start_with(limits.clone()).await;
    let mut tls = srv.tls().await;
    let started = Instant::now();
    let (bytes, closed) =
        read_until_close(&mut tls, limits.request_timeout + Duration::from_secs(2)).await;
    assert!(
        closed,
        "a TLS connection that never sends a request is still open after {:?} (request_timeout {:?}): \
         one slow client per slot can exhaust max_connections",
        started.elapsed(),
        limits.request_timeout
    );
    if let Some(resp) = RawResponse::parse(&bytes) {
        assert_eq!(resp.status, 408);
    }
}

/// An idle keep-alive connection is closed after the header timeout, but
/// that is not a refused SVID request: it must not be audited or counted as
/// a `request_timeout` denial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_close_is_not_a_denial() {
    let limits = short_limits();
    let srv = TestServer::start_with(limits.clone()).await;
    let (token, _) = srv.token(WEB);
    let (_, csr) = csr_for(WEB);
    let mut conn = srv.connect().await;
    let auth = bearer(&token);
    let resp = conn
        .send(
            Method::POST,
            "/v1/svid",
            &[("authorization", auth.as_str())],
            csr,
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());

    // Stay idle, as a pooling client does, until the server hangs up.
    assert!(
        conn.wait_closed(limits.request_timeout + Duration::from_secs(2))
            .await,
        "the server closes idle keep-alive connections after request_timeout"
    );
    // Give a (wrong) denial time to be recorded, then check there is none.
    let lines = srv.wait_audit(2, Duration::from_millis(500)).await;
    let denied = srv.denied("request_timeout").await;
    assert_eq!(
        lines.len(),
        1,
        "only the issuance is audited; an idle keep-alive close is no SVID decision: {lines:?}"
    );
    assert_eq!(
        denied, 0.0,
        "an idle keep-alive close counted as a request_timeout denial"
    );
}

/// A slow client holding one connection does not stop other clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_does_not_block_others() {
    let srv = TestServer::start_with(Limits {
        max_connections: 8,
        ..short_limits()
    })
    .await;
    let mut slow = srv.tls().await;
    bounded("write", slow.write_all(b"POST /v1/svid HTTP/1.1\r\n"))
        .await
        .unwrap();
    let (token, _) = srv.token(WEB);
    let (_, csr) = csr_for(WEB);
    let resp = srv.post_svid(Some(&bearer(&token)), csr).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    drop(slow);
}

/// Over `max_connections`, new connections are dropped and counted; a slot
/// frees up when a connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_drops_and_counts_extra_connections() {
    let srv = TestServer::start_with(Limits {
        max_connections: 1,
        ..short_limits()
    })
    .await;
    // Hold the only slot with a request in progress (headers not finished).
    let mut holder = srv.tls().await;
    bounded("write", holder.write_all(b"GET /healthz HTTP/1.1\r\n"))
        .await
        .unwrap();
    bounded("flush", holder.flush()).await.unwrap();
    // The holder's handshake is done, so the server has taken its slot.
    let refused = srv.tls_with(srv.tls13()).await;
    assert!(
        refused.is_err(),
        "a connection over the cap must not be served"
    );
    drop(holder);
    // Once the holder is gone its slot is released (bounded polling).
    let deadline = Instant::now() + Duration::from_secs(3);
    let refused_total = loop {
        if let Ok(mut tls) = srv.tls_with(srv.tls13()).await {
            let req = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
            bounded("write", tls.write_all(req)).await.unwrap();
            let (bytes, _) = read_until_close(&mut tls, STEP).await;
            let resp = RawResponse::parse(&bytes).expect("metrics response");
            assert_eq!(resp.status, 200);
            let text = String::from_utf8(resp.body).unwrap();
            break metric_value(&text, "ward_ca_connections_refused_total").unwrap();
        }
        assert!(Instant::now() < deadline, "the slot was never released");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(
        refused_total >= 1.0,
        "refused connections are counted: {refused_total}"
    );
}
