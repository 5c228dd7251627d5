//! Role-based allow rules between services: the model operators write
//! (`model`), request path normalization (`path`), and the compiled,
//! immutable decision engine (`engine`).

pub mod engine;
pub mod model;
pub mod path;

pub use model::{HttpMatch, IdentityPattern, Mode, PathPattern, Policy, Probe, Role, Rule, Target};
