//! ward-config: the vocabulary every part of ward shares and everything an
//! operator writes: SPIFFE identities, durations, the mesh file and (later)
//! its compiled policy. Pure code: no sockets, no clocks, no files except
//! explicit `load()` functions, so every rule here is testable by value.
#![forbid(unsafe_code)]

pub mod duration;
pub mod mesh;
pub mod policy;
pub mod spiffe;

pub use duration::{DurationError, parse_duration, parse_timeout};
pub use mesh::{MeshConfig, MeshError, MeshWarning, PortSpec, Protocol, Service};
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain, WorkloadName};
