//! Client of the CA's HTTPS API (`POST /v1/svid`, `GET /v1/bundle`). The CA's
//! serving certificate is verified against the configured trust bundle; the
//! host part of the URL is the name checked. One short-lived connection per
//! call: calls happen a few times a day, not per request.

use std::sync::Arc;
use std::time::Duration;

use crate::dial::Dialer;
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::tls::roots::roots_from_pem;

/// Upper bound on a CA response (a chain is ~2 KiB).
const MAX_RESPONSE: usize = 1 << 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error("invalid CA URL {0:?}: expected https://host:port")]
    BadUrl(String),
    #[error("the CA bundle holds no usable certificate: {0}")]
    BadBundle(String),
    #[error("cannot reach the CA at {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("HTTP exchange with the CA failed: {0}")]
    Http(String),
    #[error("the CA did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the CA refused ({status}, {reason}): {message}")]
    Refused {
        status: StatusCode,
        reason: String,
        message: String,
    },
}

/// A CA endpoint and the roots its serving certificate must chain to.
#[derive(Clone)]
pub struct CaClient {
    authority: String,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    dialer: Dialer,
}

impl CaClient {
    /// `url` is `https://host[:port]`; `bundle_pem` holds the trusted roots.
    pub fn new(url: &str, bundle_pem: &str) -> Result<Self, CaClientError> {
        let bad_url = || CaClientError::BadUrl(url.to_string());
        let uri: Uri = url.parse().map_err(|_| bad_url())?;
        if uri.scheme_str() != Some("https") {
            return Err(bad_url());
        }
        let host = uri.host().ok_or_else(bad_url)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_string()).map_err(|_| bad_url())?;
        let authority = format!(
            "{}:{}",
            uri.host().ok_or_else(bad_url)?,
            uri.port_u16().unwrap_or(443)
        );
        let roots =
            roots_from_pem(bundle_pem).map_err(|e| CaClientError::BadBundle(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| CaClientError::BadBundle(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            authority,
            server_name,
            connector: TlsConnector::from(Arc::new(config)),
            dialer: Dialer::default(),
        })
    }

    /// Dial the CA with `dialer` (the proxy's socket mark).
    pub fn with_dialer(mut self, dialer: Dialer) -> Self {
        self.dialer = dialer;
        self
    }

    /// Sends the CSR with the bearer token; returns the PEM chain (leaf first).
    pub async fn request_svid(&self, token: &str, csr_pem: &str) -> Result<String, CaClientError> {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/svid")
            .header(http::header::HOST, &self.authority)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            )
            .header(http::header::CONTENT_TYPE, "application/pkcs10")
            .body(Full::new(Bytes::from(csr_pem.to_string())))
            .map_err(|e| CaClientError::Http(e.to_string()))?;
        self.call(req).await
    }

    /// Fetches the PEM trust bundle.
    pub async fn fetch_bundle(&self) -> Result<String, CaClientError> {
        let req = Request::builder()
            .uri("/v1/bundle")
            .header(http::header::HOST, &self.authority)
            .body(Full::new(Bytes::new()))
            .map_err(|e| CaClientError::Http(e.to_string()))?;
        self.call(req).await
    }

    async fn call(&self, req: Request<Full<Bytes>>) -> Result<String, CaClientError> {
        tokio::time::timeout(CALL_TIMEOUT, self.exchange(req))
            .await
            .map_err(|_| CaClientError::Timeout(CALL_TIMEOUT))?
    }

    async fn exchange(&self, req: Request<Full<Bytes>>) -> Result<String, CaClientError> {
        let connect_err = |e| CaClientError::Connect(self.authority.clone(), e);
        let tcp = self
            .dialer
            .connect_host(&self.authority)
            .await
            .map_err(connect_err)?;
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(connect_err)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| CaClientError::Http(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| CaClientError::Http(e.to_string()));
        let result = match resp {
            Ok(resp) => {
                let status = resp.status();
                let body = Limited::new(resp.into_body(), MAX_RESPONSE)
                    .collect()
                    .await
                    .map_err(|e| CaClientError::Http(e.to_string()))?
                    .to_bytes();
                let text = String::from_utf8_lossy(&body).into_owned();
                if status == StatusCode::OK {
                    Ok(text)
                } else {
                    Err(refusal(status, &text))
                }
            }
            Err(e) => Err(e),
        };
        driver.abort();
        result
    }
}

/// Reads the CA's JSON error body (`{"error": ..., "reason": ...}`).
fn refusal(status: StatusCode, body: &str) -> CaClientError {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let field = |k: &str| {
        json.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let message = field("error");
    CaClientError::Refused {
        status,
        reason: field("reason"),
        message: if message.is_empty() {
            body.chars().take(200).collect()
        } else {
            message
        },
    }
}
