//! HTTP routes of the CA. Read-only except `POST /v1/svid`, which is
//! authenticated by bearer credential.
//!
//! | route                | answer                                             |
//! |----------------------|----------------------------------------------------|
//! | `POST /v1/svid`      | PEM chain (leaf, intermediate) or a JSON error     |
//! | `GET /v1/bundle`     | trust bundle, PEM                                  |
//! | `GET /v1/bundle.json`| SPIFFE bundle (JWK Set)                            |
//! | `GET /metrics`       | Prometheus text                                    |
//! | `GET /healthz`       | `ok`, or 503 once the intermediate has expired     |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use time::OffsetDateTime;

use crate::csr::CsrError;
use crate::https::{BodyError, read_body};
use crate::service::{Denial, DenyReason, SvidService};
use crate::store::CaDir;

/// `Retry-After` on a 503: long enough for a restarting API server, short
/// enough that a pod waiting for its first SVID starts promptly.
const RETRY_AFTER_SECS: &str = "5";

/// How long a proxy should wait between bundle refreshes.
const BUNDLE_REFRESH_HINT: Duration = Duration::from_secs(300);

/// Shared state of the routes.
pub struct Routes {
    pub service: Arc<SvidService>,
    pub dir: CaDir,
    pub max_body: usize,
    pub request_timeout: Duration,
}

type Resp = Response<Full<Bytes>>;

impl Routes {
    pub async fn handle(&self, req: Request<Incoming>, client: SocketAddr) -> Resp {
        let path = req.uri().path();
        let allowed: &str = match path {
            "/v1/svid" => "POST",
            "/v1/bundle" | "/v1/bundle.json" | "/metrics" | "/healthz" => "GET",
            _ => return json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        };
        if req.method().as_str() != allowed && !(allowed == "GET" && req.method() == Method::HEAD) {
            let mut resp = json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed",
            );
            resp.headers_mut().insert(
                ALLOW,
                http::HeaderValue::from_static(if allowed == "GET" {
                    "GET, HEAD"
                } else {
                    "POST"
                }),
            );
            return resp;
        }
        match path {
            "/v1/svid" => self.svid(req, client).await,
            "/v1/bundle" => self.bundle(false),
            "/v1/bundle.json" => self.bundle(true),
            "/metrics" => {
                let text = self
                    .service
                    .metrics
                    .render(self.service.authority.not_after());
                ok("text/plain; version=0.0.4; charset=utf-8", text.into())
            }
            _ => {
                if OffsetDateTime::now_utc() < self.service.authority.not_after() {
                    ok("text/plain", Bytes::from_static(b"ok\n"))
                } else {
                    json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "intermediate_expired",
                        "the signing CA has expired",
                    )
                }
            }
        }
    }

    async fn svid(&self, req: Request<Incoming>, client: SocketAddr) -> Resp {
        let (parts, body) = req.into_parts();
        let body = read_body(&parts.headers, body, self.max_body, self.request_timeout)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge(max) => DenyReason::BodyTooLarge(max),
                BodyError::Timeout => DenyReason::Timeout,
                BodyError::Read(why) => {
                    DenyReason::Csr(CsrError::Malformed(format!("body: {why}")))
                }
            });
        let body = match body {
            Ok(body) => body,
            Err(reason) => {
                let denial = Denial::from(reason);
                self.service.reject(&denial, client);
                return denial_response(&denial);
            }
        };
        let authorization = parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes());
        match self.service.issue(authorization, &body, client).await {
            Ok(issued) => ok("application/x-pem-file", issued.chain_pem.into()),
            Err(denial) => denial_response(&denial),
        }
    }

    fn bundle(&self, json: bool) -> Resp {
        match self.dir.load_bundle() {
            Ok((bundle, sequence)) if json => {
                let doc = bundle.to_spiffe_json(sequence, BUNDLE_REFRESH_HINT);
                ok("application/json", doc.to_string().into())
            }
            Ok((bundle, _)) => ok("application/x-pem-file", bundle.to_pem().into()),
            Err(e) => {
                tracing::error!(error = %e, "cannot serve the trust bundle");
                json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "bundle_unavailable",
                    "the trust bundle cannot be read",
                )
            }
        }
    }
}

fn ok(content_type: &'static str, body: Bytes) -> Resp {
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    resp
}

fn denial_response(denial: &Denial) -> Resp {
    let mut resp = json_error(
        denial.reason.status(),
        denial.reason.label(),
        &denial.reason.to_string(),
    );
    if denial.reason.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    }
    if matches!(
        denial.reason.status(),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    ) {
        // A passing condition (API server, audit disk, a rate limit): tell
        // clients when to come back.
        resp.headers_mut().insert(
            RETRY_AFTER,
            http::HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    if matches!(
        denial.reason,
        DenyReason::Timeout | DenyReason::BodyTooLarge(_)
    ) {
        // The rest of the body may still be in flight: do not reuse the connection.
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    resp
}

fn json_error(status: StatusCode, reason: &str, message: &str) -> Resp {
    let body = serde_json::json!({ "error": message, "reason": reason }).to_string();
    let mut resp = ok("application/json", body.into());
    *resp.status_mut() = status;
    resp
}
