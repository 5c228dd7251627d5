//! The library half of the `ward` package: what the CLI, `ward demo` and the
//! system tests in `tests/` share. Kept apart from `cli/` so that tests can
//! call it directly instead of through a subprocess.
#![forbid(unsafe_code)]

pub mod inject;
pub mod injector;
pub mod intercept;
pub mod lab;
pub mod pods;
