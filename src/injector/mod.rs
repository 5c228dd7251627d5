//! `ward injector`: the Kubernetes mutating admission webhook that adds
//! ward's sidecar to Pods as they are created. It calls the same
//! `ward::inject::inject` as `ward inject` on the Pod in the
//! AdmissionReview ([`review()`]), turns the difference into a JSON Patch
//! ([`patch`]) and serves that over HTTPS ([`server`]; its routes in
//! `routes.rs`).

mod metrics;
pub mod patch;
pub mod review;
mod routes;
pub mod server;
mod serving_cert;

#[cfg(test)]
mod tests;

pub use review::{Decision, ReviewError, review};
pub use routes::MUTATE_PATH;
pub use server::{InjectorServer, ServeError, webhook_limits};
pub use serving_cert::{CertError, TlsFiles};
