//! Answers the proxy writes itself: refusals (which say nothing about the
//! policy, only how to find the log line) and errors reaching the next hop.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::Body;

/// A random id that ties a refusal the caller sees to the proxy's log line.
pub fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A refusal that says nothing about the policy, only how to find the log.
pub fn refusal(status: StatusCode, request_id: &str) -> Response<Body> {
    let text = format!(
        "ward: request refused ({}), request id {request_id}\n",
        status.as_u16()
    );
    let mut resp = answer(status, text);
    if let Ok(value) = http::HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-request-id", value);
    }
    resp
}

/// A plain-text answer from the proxy itself.
pub fn answer(status: StatusCode, text: String) -> Response<Body> {
    let body = Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp
}
