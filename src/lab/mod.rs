//! A small mesh on this machine: ward's CA, three workloads with sidecars
//! and the policy between them. `ward demo` runs it; the system tests in
//! `tests/` build on it.

pub mod prometheus;
pub mod scenario;
