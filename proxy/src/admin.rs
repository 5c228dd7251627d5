//! The admin server: `GET /metrics`, `/ready`, `/live`. Read-only by design:
//! nothing here changes the proxy, so exposing the port to Prometheus and
//! kubelet grants nothing else.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::Shared;
use crate::listener::AcceptFailures;

/// Admin connections served at once: kubelet's probes and a scrape or two
/// need a few; more (anyone on the pod network can connect) wait in the
/// backlog rather than take the rest of the descriptors kept back beside
/// the connection budget (`process.rs`).
const MAX_CONNECTIONS: usize = 32;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut failures = AcceptFailures::new(&shared, "admin");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                failures.failed(e).await;
                continue;
            }
        };
        failures.accepted();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&req, &shared)) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn route(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the admin server is read-only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let mut resp = text(StatusCode::OK, shared.metrics.render());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/live" => text(StatusCode::OK, "live\n".into()),
        "/ready" => match not_ready_reason(shared) {
            None => text(StatusCode::OK, "ready\n".into()),
            Some(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "try /metrics, /ready or /live\n".into(),
        ),
    }
}

fn not_ready_reason(shared: &Shared) -> Option<&'static str> {
    if shared.drain.is_draining() {
        Some("draining")
    } else if !shared.identity.is_ready() {
        Some("no valid SVID")
    } else {
        None
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}
