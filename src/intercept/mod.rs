//! Transparent interception: what `ward init` programs into a pod's network
//! namespace so that the workload's TCP goes through the sidecar without the
//! workload knowing. ward owns four chains in the `nat` table and two jump
//! rules into them; everything else in the table is left as it was.
//!
//! The pieces: [`settings`] (what to redirect and what to leave alone,
//! validated), [`save`] (reading `iptables-save` output), [`rules`] (pure:
//! settings + current table → `iptables-restore` input) and [`backend`]
//! (which iptables to use, and running it). Changes are applied with one
//! `iptables-restore --noflush` per address family, so each family is changed
//! atomically and running `ward init` twice leaves the same table as once.

pub mod backend;
pub mod cidr;
pub mod rules;
pub mod save;
pub mod settings;

pub use backend::{Backend, BackendChoice, InterceptError};
pub use cidr::{Cidr, CidrError};
pub use settings::{Settings, SettingsError};

use std::fmt;

/// An address family: one `iptables` (IPv4) or `ip6tables` (IPv6) table set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}
