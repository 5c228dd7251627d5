//! Apps for end-to-end tests, on loopback.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP app: `/` answers 200 "hello <version>", `/api/...` answers its
/// own path (so tests see what reached the app), `/slow` after 1 s, anything
/// else 404; `Upgrade: websocket` switches protocols and echoes bytes. Serves
/// HTTP/1.1 and h2c (prior knowledge) on the same port.
pub async fn http_app() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|mut req: Request<Incoming>| async move {
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    if req
                        .headers()
                        .get("upgrade")
                        .is_some_and(|v| v == "websocket")
                    {
                        let upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(up) = upgrade.await {
                                let mut io = TokioIo::new(up);
                                let mut buf = [0u8; 64];
                                while let Ok(n) = io.read(&mut buf).await {
                                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        });
                        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                        resp.headers_mut()
                            .insert("upgrade", "echo".parse().unwrap());
                        resp.headers_mut()
                            .insert("connection", "upgrade".parse().unwrap());
                        return Ok::<_, Infallible>(resp);
                    }
                    match req.uri().path() {
                        "/" => {
                            *resp.body_mut() =
                                Full::new(Bytes::from(format!("hello {:?}", req.version())))
                        }
                        p if p.starts_with("/api/") => {
                            *resp.body_mut() = Full::new(Bytes::from(p.to_string()))
                        }
                        "/slow" => {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            *resp.body_mut() = Full::new(Bytes::from_static(b"slow done"));
                        }
                        _ => *resp.status_mut() = StatusCode::NOT_FOUND,
                    }
                    Ok(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// Sends requests on one keep-alive connection: (status, x-request-id, body).
pub async fn http1_requests(
    addr: SocketAddr,
    reqs: &[(&str, &str)],
) -> Vec<(u16, Option<String>, String)> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut out = Vec::new();
    for (method, path) in reqs {
        let req = Request::builder()
            .method(*method)
            .uri(*path)
            .header("host", "orders")
            .body(Empty::<Bytes>::new())
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), sender.ready())
            .await
            .unwrap()
            .unwrap();
        let (status, headers, body) = answer(sender.send_request(req)).await;
        let id = headers
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_string());
        out.push((status, id, String::from_utf8_lossy(&body).into_owned()));
    }
    out
}

/// (status, body) of GET requests sent as HTTP/2 (prior knowledge) on one
/// connection, one after the other.
pub async fn http2_requests(addr: SocketAddr, paths: &[&str]) -> Vec<(u16, String)> {
    let mut sender = h2_connection(addr).await;
    let mut out = Vec::new();
    for path in paths {
        let req = Request::get(format!("http://orders{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let (status, _, body) = answer(sender.send_request(req)).await;
        out.push((status, String::from_utf8_lossy(&body).into_owned()));
    }
    out
}

/// An HTTP/2 (prior knowledge) client connection to `addr`.
pub async fn h2_connection<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// A server that speaks first: writes a banner as soon as a client connects.
pub async fn banner_app() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tcp.write_all(b"220 banner\r\n").await;
                let mut buf = [0u8; 16];
                let _ = tcp.read(&mut buf).await;
            });
        }
    });
    addr
}

/// Connects to `addr` and, sending nothing, reads [`banner_app`]'s banner
/// (10 s at most); how long it took from the connect.
pub async fn read_banner(addr: SocketAddr) -> Duration {
    let start = tokio::time::Instant::now();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut banner = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut banner))
        .await
        .expect("the banner arrives without the client sending anything")
        .unwrap();
    assert_eq!(&banner, b"220 banner\r\n");
    start.elapsed()
}

/// Asks [`http_app`] through `addr` for a WebSocket upgrade and checks the
/// 101; the connection, now a byte stream to the app's echo.
pub async fn websocket(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: orders\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// Reads an HTTP/1 response head up to its blank line, a byte at a time so
/// that nothing after it (an upgraded stream) is consumed; 5 s per byte.
pub async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut byte))
            .await
            .expect("the head arrives")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed before the end of the head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// An app that counts the requests it gets and answers each with the body
/// it received (HTTP/1.1 or h2c).
pub async fn echo_body_app() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    count.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        Ok::<_, hyper::Error>(Response::new(Full::new(body)))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, requests)
}

/// An app's HTTP/1 keep-alive connection to `addr`, for [`h1_send`].
pub async fn h1_connection(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends `req` on `sender`: (status, body).
pub async fn h1_send(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (u16, Bytes) {
    tokio::time::timeout(Duration::from_secs(10), sender.ready())
        .await
        .expect("the connection is ready in time")
        .unwrap();
    let (status, _, body) = answer(sender.send_request(req)).await;
    (status, body)
}

/// A response (its head within 10 s, its body within 20 s more):
/// (status, headers, body).
async fn answer(
    response: impl Future<Output = hyper::Result<Response<Incoming>>>,
) -> (u16, HeaderMap, Bytes) {
    let resp = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answered in time")
        .unwrap();
    let (head, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .expect("the body arrives in time")
        .unwrap();
    (head.status.as_u16(), head.headers, body.to_bytes())
}
