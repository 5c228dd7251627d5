//! The webhook's HTTP routes.
//!
//! | route          | answer                                                  |
//! |----------------|---------------------------------------------------------|
//! | `POST /mutate` | the AdmissionReview answer, or 4xx with `{"error": ...}` |
//! | `GET /healthz` | `ok`                                                    |
//! | `GET /metrics` | Prometheus text                                         |

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use ward_ca::https::{Handler, read_body};

use super::metrics::{self, InjectorMetrics};
use super::review;
use crate::inject::Config;

/// The path the MutatingWebhookConfiguration's `clientConfig` must name.
pub const MUTATE_PATH: &str = "/mutate";

pub struct Routes {
    pub config: Arc<Config>,
    pub metrics: Arc<InjectorMetrics>,
    pub max_body: usize,
    pub request_timeout: Duration,
}

type Resp = Response<Full<Bytes>>;

impl Routes {
    async fn handle(&self, req: Request<Incoming>) -> Resp {
        let (allowed, allow) = match req.uri().path() {
            MUTATE_PATH => (Method::POST, "POST"),
            "/healthz" | "/metrics" => (Method::GET, "GET"),
            _ => return json_error(StatusCode::NOT_FOUND, "no such endpoint"),
        };
        if req.method() != allowed {
            let mut resp = json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
            return resp;
        }
        match req.uri().path() {
            "/healthz" => ok("text/plain", Bytes::from_static(b"ok\n")),
            "/metrics" => ok(
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render().into(),
            ),
            _ => self.mutate(req).await,
        }
    }

    /// `POST /mutate`: one AdmissionReview in, its answer out, counted.
    async fn mutate(&self, req: Request<Incoming>) -> Resp {
        let (parts, body) = req.into_parts();
        let body = match read_body(&parts.headers, body, self.max_body, self.request_timeout).await
        {
            Ok(body) => body,
            Err(e) => {
                self.metrics.reviewed(metrics::BAD_REQUEST);
                // The rest of the body may still be in flight: do not reuse
                // the connection.
                let mut resp = json_error(e.status(), &e.to_string());
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                return resp;
            }
        };
        // Parsing and injecting up to max_body of JSON is CPU work: off the
        // async workers, so one large review does not stall the others'
        // timers and the accept loop.
        let config = self.config.clone();
        let reviewed = tokio::task::spawn_blocking(move || review::review(&config, &body)).await;
        let Ok(reviewed) = reviewed else {
            tracing::error!("an admission review task failed");
            self.metrics.reviewed(metrics::ERROR);
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        };
        match reviewed {
            Ok((answer, decision)) => {
                tracing::info!(
                    uid = %decision.uid,
                    object = %decision.object,
                    result = %decision.result,
                    "admission review"
                );
                self.metrics.reviewed(decision.verdict.label());
                ok("application/json", answer.to_string().into())
            }
            Err(e) => {
                tracing::warn!(error = %e, "malformed admission review");
                self.metrics.reviewed(metrics::BAD_REQUEST);
                json_error(StatusCode::BAD_REQUEST, &e.to_string())
            }
        }
    }
}

/// The webhook only logs a full connection table: it has no metric for it.
impl Handler for Routes {
    fn handle(
        &self,
        req: Request<Incoming>,
        _client: SocketAddr,
    ) -> impl Future<Output = Resp> + Send {
        Routes::handle(self, req)
    }

    fn connection_refused(&self, client: SocketAddr) {
        tracing::warn!(%client, "connection cap reached; dropping a connection");
    }
}

fn ok(content_type: &'static str, body: Bytes) -> Resp {
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json_error(status: StatusCode, message: &str) -> Resp {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut resp = ok("application/json", body.into());
    *resp.status_mut() = status;
    resp
}
