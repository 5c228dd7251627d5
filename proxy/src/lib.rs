//! ward-proxy: the sidecar. This crate holds the proxy's identity (its key,
//! generated in memory, and the SVID the CA issues for it) and the TLS rules
//! between sidecars: SPIFFE X509-SVID verification of peers. Listeners,
//! interception, forwarding, policy enforcement and the admin server build on
//! these.
#![forbid(unsafe_code)]

pub mod identity;
pub mod tls;
