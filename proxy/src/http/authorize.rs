//! Inbound requests meet the policy: the path is normalized, the compiled
//! policy (or, for plaintext probes, the declared probe paths) decides, and
//! what is allowed goes to the app with the normalized path, so what was
//! checked is what the app sees.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use ward_config::policy::engine::HttpRequest;
use ward_config::policy::path::normalize;

use super::Body;
use super::headers::set_path;
use super::respond::{refusal, request_id};
use super::upstream::{Hop, Upstream};
use crate::metrics::INBOUND;

impl Upstream {
    /// Decides `req` and forwards it if it passes. Outbound requests are
    /// not policed here: the destination's sidecar decides.
    pub(super) async fn authorized(&self, mut req: Request<Incoming>) -> Response<Body> {
        let Hop::App { addr: app, authz } = &self.hop else {
            return self.send(req).await;
        };
        let shared = &self.shared;
        let path = match normalize(req.uri().path()) {
            Ok(path) => path,
            Err(e) => {
                let id = request_id();
                let labels = [INBOUND, "deny", "invalid_path"];
                shared.metrics.authz.with_label_values(&labels).inc();
                let peer = authz.as_ref().map(|a| a.peer.to_string());
                tracing::warn!(peer, request_id = %id, error = %e, "refused an ambiguous request path");
                return refusal(StatusCode::BAD_REQUEST, &id);
            }
        };
        let snapshot = shared.registry.snapshot();
        // The refusal, if any, with the id of its log line.
        let refused = match authz {
            Some(authz) => {
                let http = HttpRequest {
                    method: req.method().as_str(),
                    path: &path,
                };
                let outcome = authz.decide(shared, &snapshot, Some(http));
                (!outcome.verdict.passes()).then(|| outcome.request_id.unwrap_or_else(request_id))
            }
            None => {
                let probe = snapshot.engine.is_probe(app.port(), Some(&path));
                let decision = if probe { "allow" } else { "deny" };
                shared
                    .metrics
                    .authz
                    .with_label_values(&[INBOUND, decision, "probe"])
                    .inc();
                (!probe).then(|| {
                    let id = request_id();
                    tracing::warn!(path = %path, port = app.port(), request_id = %id, "plaintext request outside the declared probes");
                    id
                })
            }
        };
        drop(snapshot);
        if let Some(id) = refused {
            return refusal(StatusCode::FORBIDDEN, &id);
        }
        let rewritten = if path != req.uri().path() {
            set_path(&mut req, &path)
        } else {
            Ok(())
        };
        if let Err(e) = rewritten {
            let id = request_id();
            tracing::warn!(error = %e, request_id = %id, "cannot rewrite the request path");
            return refusal(StatusCode::BAD_REQUEST, &id);
        }
        self.send(req).await
    }
}
