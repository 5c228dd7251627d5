//! Header rules every served request follows, either direction: which
//! headers are for one hop only, which upgrades are carried, and path
//! rewriting (inbound: the app sees the normalized path that was checked).

use http::header::{CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Version};

/// Hop-by-hop headers (RFC 9110 §7.6.1) outside http's standard set.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether `name` is meaningful for one connection only.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE].contains(name)
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Only WebSocket upgrades are carried: any other protocol switch (h2c,
/// custom) would turn a policed HTTP connection into unchecked bytes, so
/// those requests go to the app as plain requests, Upgrade header removed.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Removes hop-by-hop headers and those the Connection header names. For
/// an upgrade request, `Connection: upgrade` and `Upgrade` must go through;
/// `TE: trailers` stays too, as gRPC servers require it (HTTP/2 allows TE
/// with that one value). Runs on every request and answer, both sides: one
/// pass over the (few) headers, no allocation unless Connection names some.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let strip = |name: &HeaderName| {
        is_hop_by_hop(name) && !(keep_upgrade && (name == CONNECTION || name == UPGRADE))
    };
    if !keep_upgrade && !headers.keys().any(strip) {
        return;
    }
    let te_trailers = headers
        .get(TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // Connection names more headers to drop (a header named like an option,
    // "close" included, goes too); "keep-alive", its usual value, is in the
    // list already and allocates nothing.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| !token.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .filter(|name| !is_hop_by_hop(name))
        .collect();
    for name in &named {
        headers.remove(name);
    }
    while let Some(name) = headers.keys().find(|name| strip(name)).cloned() {
        headers.remove(&name);
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Replaces the path of `req`, keeping its query.
pub fn set_path<B>(req: &mut Request<B>, path: &str) -> Result<(), http::Error> {
    let mut parts = req.uri().clone().into_parts();
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    parts.path_and_query = Some(format!("{path}{query}").parse()?);
    *req.uri_mut() = http::Uri::from_parts(parts)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|&(name, value)| {
                (
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers_but_keeps_te_trailers() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["te", "x-kept"]);
        let mut gzip = HeaderMap::new();
        gzip.insert(TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut gzip, false);
        assert!(gzip.is_empty());
        let mut plain = HeaderMap::new();
        plain.insert(http::header::HOST, HeaderValue::from_static("app"));
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 1);
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_says_connection_upgrade() {
        let mut h = headers(&[
            ("connection", "Upgrade, x-secret"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("host", "app"),
        ]);
        strip_hop_by_hop(&mut h, true);
        let mut left: Vec<_> = h
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ("connection", "upgrade"),
                ("host", "app"),
                ("upgrade", "websocket")
            ]
        );
    }
}
