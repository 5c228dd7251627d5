//! A stand-in for the Kubernetes API server's TokenReview endpoint: real
//! HTTPS on 127.0.0.1 (its own throwaway CA), answering each token with a
//! recorded TokenReview response from `ca/tests/data/tokenreview/`, and
//! remembering every request so tests can check what the CA sent.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// The path kube's `Api::<TokenReview>::create` posts to.
pub const TOKENREVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// The CA's own credential towards the API server, as the fake expects it.
pub const CA_OWN_TOKEN: &str = "ward-ca-serviceaccount-token";

/// How the fake answers one token.
#[derive(Clone, Copy)]
pub enum Answer {
    /// HTTP status and a recording from `ca/tests/data/tokenreview/<name>.json`.
    Recorded(u16, &'static str),
    /// Answers nothing until [`FakeKubeApi::release`] (then `expired`).
    Hang,
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

/// A TokenReview endpoint on 127.0.0.1.
pub struct FakeKubeApi {
    pub addr: SocketAddr,
    pub ca_der: CertificateDer<'static>,
    config: Arc<ServerConfig>,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    release: Arc<Notify>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

/// A token that passes the CA's local precheck (audience `ward`, valid for
/// an hour; unsigned, as the stand-in never checks), told apart by `name`.
pub fn jwt(name: &str) -> String {
    jwt_with(name, "ward", 3600)
}

/// As [`jwt`], with audience `aud`, expiring `expires_in` seconds from now.
pub fn jwt_with(name: &str, aud: &str, expires_in: i64) -> String {
    let exp = time::OffsetDateTime::now_utc().unix_timestamp() + expires_in;
    let claims = serde_json::json!({"aud": [aud], "exp": exp, "ward-test": name});
    format!(
        "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.{}.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// The recorded answers, compiled in (this file is shared with the `ward`
/// package's tests, whose manifest directory differs).
fn recording(name: &str) -> &'static str {
    match name {
        "authenticated" => include_str!("../data/tokenreview/authenticated.json"),
        "audience-unaware" => include_str!("../data/tokenreview/audience-unaware.json"),
        "expired" => include_str!("../data/tokenreview/expired.json"),
        "forbidden" => include_str!("../data/tokenreview/forbidden.json"),
        "unbound" => include_str!("../data/tokenreview/unbound.json"),
        "user" => include_str!("../data/tokenreview/user.json"),
        "wrong-audience" => include_str!("../data/tokenreview/wrong-audience.json"),
        other => panic!("no recorded TokenReview answer {other:?}"),
    }
}

/// What survives a restart: the address, the TLS identity and the answers,
/// as with a real API server coming back.
pub struct Stopped {
    addr: SocketAddr,
    ca_der: CertificateDer<'static>,
    config: Arc<ServerConfig>,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    release: Arc<Notify>,
}

impl FakeKubeApi {
    /// Listens on a fresh port.
    pub async fn start() -> Self {
        let (ca_der, config) = tls();
        Stopped {
            addr: "127.0.0.1:0".parse().unwrap(),
            ca_der,
            config: Arc::new(config),
            answers: Arc::default(),
            release: Arc::default(),
        }
        .restart()
        .await
    }

    /// Stops listening and drops every open connection: the address becomes
    /// unreachable.
    pub fn stop(self) -> Stopped {
        self.task.abort();
        Stopped {
            addr: self.addr,
            ca_der: self.ca_der.clone(),
            config: self.config.clone(),
            answers: self.answers.clone(),
            release: self.release.clone(),
        }
    }

    /// Lets every request held by [`Answer::Hang`] finish.
    pub fn release(&self) {
        self.release.notify_waiters();
    }

    /// Answers `token` with `answer` from now on. Unknown tokens get the
    /// API server's answer for an invalid token (`expired`).
    pub fn answer(&self, token: &str, answer: Answer) {
        self.answers
            .lock()
            .unwrap()
            .insert(token.to_string(), answer);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// A kube client for this endpoint, authenticating as the CA would.
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(format!("https://{}", self.addr).parse().unwrap());
        config.root_cert = Some(vec![self.ca_der.to_vec()]);
        config.auth_info.token = Some(CA_OWN_TOKEN.to_string().into());
        kube::Client::try_from(config).unwrap()
    }

    /// A kubeconfig file for this endpoint (for `ward ca serve`).
    pub fn kubeconfig(&self) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(pem(&self.ca_der));
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: https://{addr}\n    certificate-authority-data: {ca}\n\
             users:\n- name: ward-ca\n  user:\n    token: {CA_OWN_TOKEN}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: ward-ca\n",
            addr = self.addr
        )
    }
}

impl Stopped {
    /// Listens again on the same address with the same certificate.
    pub async fn restart(self) -> FakeKubeApi {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(addr.ip().is_loopback(), "the fake API stays on loopback");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let acceptor = TlsAcceptor::from(self.config.clone());
        let (answers, release, s) = (self.answers.clone(), self.release.clone(), seen.clone());
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the task closes them all.
            let mut connections = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, answers, release, seen) = (
                    acceptor.clone(),
                    answers.clone(),
                    release.clone(),
                    s.clone(),
                );
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req| {
                        handle(req, answers.clone(), release.clone(), seen.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        FakeKubeApi {
            addr,
            ca_der: self.ca_der,
            config: self.config,
            answers: self.answers,
            release: self.release,
            seen,
            task,
        }
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: Request<Incoming>,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    release: Arc<Notify>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let token = body["spec"]["token"].as_str().unwrap_or("").to_string();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        authorization: parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body,
    });
    let answer = answers.lock().unwrap().get(&token).copied();
    let (status, name) = match answer {
        Some(Answer::Recorded(status, name)) => (status, name),
        Some(Answer::Hang) => {
            release.notified().await;
            (201, "expired")
        }
        None => (201, "expired"),
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(recording(name).as_bytes())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// A throwaway CA and a serving certificate for 127.0.0.1 signed by it.
fn tls() -> (CertificateDer<'static>, ServerConfig) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    (ca_cert.der().clone(), config)
}

fn pem(der: &CertificateDer<'_>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}
