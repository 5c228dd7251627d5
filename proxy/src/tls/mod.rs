//! TLS between sidecars: SPIFFE X509-SVID rules for peer certificates and the
//! rustls verifiers that enforce them during the handshake.

pub mod config;
pub mod failure;
pub mod mesh;
pub mod roots;
pub mod svid;
pub mod verifier;

pub use mesh::{MeshTls, MeshTlsError};
pub use svid::{SvidError, chain_expired, chain_not_after, peer_id, svid_rejection};
pub use verifier::{ClientSvidVerifier, ServerSvidVerifier};
