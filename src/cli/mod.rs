//! Subcommands of the `ward` binary.

pub mod ca;
pub mod demo;
pub mod demo_app;
pub mod init;
pub mod inject;
pub mod injector;
pub mod policy;
pub mod proxy;

/// For the servers (`ward proxy`, `ward ca serve`, `ward injector`): they
/// need a descriptor per connection, and runtimes often leave the soft
/// open-files limit far below the hard one (docs/proxy.md). Not for the
/// other commands, whose children (`ward demo`'s, `ward init`'s iptables)
/// keep the limit they would have had.
pub fn raise_open_files_limit() {
    match ward_proxy::process::raise_open_files_limit() {
        Ok(limit) => tracing::info!(was = limit.was, now = limit.now, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}
