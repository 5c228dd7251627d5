//! rustls configurations for the mesh: TLS 1.3 only, X25519MLKEM768
//! preferred with X25519 fallback, ALPN `ward/1` (or `ward/1+tcp`, see
//! [`Carries`]), and mutual SVID verification (see `verifier`).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::server::ResolvesServerCert;
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use ward_config::{SpiffeId, TrustDomain};

use super::verifier::{ClientSvidVerifier, ServerSvidVerifier};
use crate::identity::Svid;

/// ALPN protocol id of ward's sidecar-to-sidecar connections.
pub const MESH_ALPN: &[u8] = b"ward/1";
/// The same protocol, with the client sidecar's word that it carries
/// opaque bytes (see [`Carries::Opaque`]).
pub const MESH_OPAQUE_ALPN: &[u8] = b"ward/1+tcp";

/// What a client sidecar carries on a mesh connection, told to the
/// service's sidecar by the ALPN ids it offers, at no cost in round trips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carries {
    /// HTTP it serves request by request: offers `ward/1`.
    Http,
    /// Bytes of a port declared `tcp`, or that its detection found not to
    /// be HTTP (or silent: a server-speaks-first protocol). Offers
    /// `ward/1+tcp`, then `ward/1` for a server sidecar that predates it.
    /// The server sidecar then splices a `detect` port at once instead of
    /// detecting again, so a server-speaks-first protocol waits for
    /// detection once, not twice. A hint, never a pass: where only HTTP
    /// may pass, the server sidecar still looks at the bytes.
    Opaque,
}

impl Carries {
    /// The ALPN ids a client sidecar offers for this.
    pub fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Carries::Http => vec![MESH_ALPN.to_vec()],
            Carries::Opaque => vec![MESH_OPAQUE_ALPN.to_vec(), MESH_ALPN.to_vec()],
        }
    }

    /// The client's word, from the protocol the handshake settled on.
    pub fn negotiated(alpn: Option<&[u8]>) -> Self {
        if alpn == Some(MESH_OPAQUE_ALPN) {
            Carries::Opaque
        } else {
            Carries::Http
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = vec![kx_group::X25519MLKEM768, kx_group::X25519];
    Arc::new(provider)
}

/// Inbound: requires a client SVID of `trust_domain`; presents what
/// `certs` resolves (so a renewed SVID applies to new handshakes).
pub fn server_config(
    certs: Arc<dyn ResolvesServerCert>,
    roots: Arc<RootCertStore>,
    trust_domain: TrustDomain,
) -> Result<ServerConfig, rustls::Error> {
    let verifier = ClientSvidVerifier::new(roots, trust_domain)
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(certs);
    // Ours first: rustls picks the first of these the client offers.
    config.alpn_protocols = vec![MESH_OPAQUE_ALPN.to_vec(), MESH_ALPN.to_vec()];
    Ok(config)
}

/// Outbound: presents `svid` and accepts only a server presenting `expected`.
pub fn client_config(
    svid: &Svid,
    roots: Arc<RootCertStore>,
    trust_domain: TrustDomain,
    expected: SpiffeId,
) -> Result<ClientConfig, rustls::Error> {
    let verifier = ServerSvidVerifier::new(roots, trust_domain, expected);
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(svid.certified.clone())));
    config.alpn_protocols = vec![MESH_ALPN.to_vec()];
    // Peers are named by SPIFFE ID, not DNS: SNI would only leak the target.
    config.enable_sni = false;
    Ok(config)
}
