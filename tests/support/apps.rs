//! Apps for end-to-end tests, on loopback.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
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
        let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .unwrap()
            .unwrap();
        let status = resp.status().as_u16();
        let id = resp
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_string());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        out.push((status, id, String::from_utf8_lossy(&body).into_owned()));
    }
    out
}
