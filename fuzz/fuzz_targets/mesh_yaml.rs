//! Fuzzes the mesh-file loader, `ward_config::MeshConfig::parse` (services
//! and access policy, docs/mesh.md and docs/policy.md): for any input it must
//! return, never panic, and what it accepts must satisfy the invariants in
//! `common/mesh_check.rs`. Run with `fuzz/run.sh [SECONDS]`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../common/mesh_check.rs"]
mod mesh_check;

fuzz_target!(|data: &[u8]| mesh_check::check(data));
