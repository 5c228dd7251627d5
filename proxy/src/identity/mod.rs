//! The proxy's workload identity: an in-memory key and the SVID chain the CA
//! issues for it.

pub mod ca_client;
pub mod csr;
pub mod manager;
pub mod svid;

pub use ca_client::{CaClient, CaClientError};
pub use manager::{Identity, IdentityConfig, IdentityError, IdentityManager};
pub use svid::{Svid, SvidInstallError};
