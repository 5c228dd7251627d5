use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn counters() -> (IntCounter, IntCounter) {
    (
        IntCounter::new("a", "a").unwrap(),
        IntCounter::new("b", "b").unwrap(),
    )
}

/// A splice of `a` and `b` in a task of its own, with its two counters.
fn spawn_splice(
    a: tokio::io::DuplexStream,
    b: tokio::io::DuplexStream,
) -> (
    tokio::task::JoinHandle<Result<(), SpliceError>>,
    IntCounter,
    IntCounter,
) {
    let (ab, ba) = counters();
    let task = tokio::spawn(splice(
        a,
        b,
        Duration::from_secs(5),
        Some(ab.clone()),
        Some(ba.clone()),
    ));
    (task, ab, ba)
}

#[tokio::test]
async fn carries_both_ways_and_passes_half_close() {
    let (client, proxy_a) = tokio::io::duplex(1024);
    let (proxy_b, server) = tokio::io::duplex(1024);
    let (task, ab, ba) = spawn_splice(proxy_a, proxy_b);
    let (mut client, mut server) = (client, server);
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap(); // half-close: client is done sending
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap(); // sees EOF after the request
    assert_eq!(got, b"request");
    server.write_all(b"late response").await.unwrap(); // other direction still open
    server.shutdown().await.unwrap();
    let mut resp = Vec::new();
    client.read_to_end(&mut resp).await.unwrap();
    assert_eq!(resp, b"late response");
    task.await.unwrap().unwrap();
    assert_eq!(ab.get(), 7);
    assert_eq!(ba.get(), 13);
}

#[tokio::test]
async fn idle_pairs_are_closed() {
    let (_client, proxy_a) = tokio::io::duplex(1024);
    let (proxy_b, _server) = tokio::io::duplex(1024);
    let (ab, ba) = counters();
    let started = Instant::now();
    let res = splice(
        proxy_a,
        proxy_b,
        Duration::from_millis(100),
        Some(ab),
        Some(ba),
    )
    .await;
    assert!(matches!(res, Err(SpliceError::Idle(_))));
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// Both directions at once, through pipes far smaller than what they
/// carry: every byte arrives in order, while the other side pushes back,
/// and is counted once.
#[tokio::test]
async fn carries_large_streams_both_ways_under_backpressure() {
    let (client, proxy_a) = tokio::io::duplex(4096);
    let (proxy_b, server) = tokio::io::duplex(4096);
    let (task, ab, ba) = spawn_splice(proxy_a, proxy_b);
    let up: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let down: Vec<u8> = (0..700_000u32).map(|i| (i % 241) as u8).collect();
    let side = |mut io: tokio::io::DuplexStream, send: Vec<u8>| async move {
        let (mut r, mut w) = tokio::io::split(&mut io);
        let write = async {
            w.write_all(&send).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let read = r.read_to_end(&mut got);
        let (_, n) = tokio::join!(write, read);
        n.unwrap();
        got
    };
    let (at_server, at_client) = tokio::join!(side(server, down.clone()), side(client, up.clone()));
    assert!(at_server == up, "client -> server bytes differ");
    assert!(at_client == down, "server -> client bytes differ");
    task.await.unwrap().unwrap();
    assert_eq!(ab.get(), up.len() as u64);
    assert_eq!(ba.get(), down.len() as u64);
}
