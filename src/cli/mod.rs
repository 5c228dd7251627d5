//! Subcommands of the `ward` binary.

pub mod ca;
pub mod demo;
pub mod demo_app;
pub mod init;
pub mod inject;
pub mod injector;
pub mod policy;
pub mod proxy;
