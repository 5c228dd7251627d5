#!/usr/bin/env bash
# Fuzz the mesh-file loader (`MeshConfig::parse`) for a bounded time:
#
#   fuzz/run.sh [SECONDS]      # default 60; works from any directory
#
# Installs cargo-fuzz if missing, builds the `mesh_yaml` target, and runs it
# for SECONDS. Exits 0 when the time runs out with no finding, non-zero on a
# crash (panic or failed invariant), a timeout, or running out of memory;
# libFuzzer then leaves the input in fuzz/artifacts/mesh_yaml/. Keep it as a
# seed so `cargo test` (tests/fuzz_corpus.rs) replays it from then on:
#   cp fuzz/artifacts/mesh_yaml/crash-<hash> fuzz/corpus/mesh_yaml/seed-crash-<what>.yaml
#
# Stable Rust is enough: with `--sanitizer none` cargo-fuzz passes only
# stable `-C` flags (checked with cargo-fuzz 0.13.2 on rustc 1.95), so no
# nightly and no RUSTC_BOOTSTRAP. AddressSanitizer would need nightly
# (`-Zsanitizer`); the loader is `#![forbid(unsafe_code)]`, so what fuzzing
# can find here is panics, failed invariants, hangs and memory blow-ups, all
# of which this build catches.
set -euo pipefail

secs=${1:-60}
if ! [[ $secs =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [SECONDS]   (a whole number of seconds, default 60)" >&2
  exit 2
fi

fuzz_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$fuzz_dir/.."

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --version '^0.13' --locked
fi

flags=(--release --sanitizer none --fuzz-dir "$fuzz_dir")
echo "fuzz: building mesh_yaml"
cargo fuzz build "${flags[@]}" mesh_yaml

# New interesting inputs go to fuzz/corpus/mesh_yaml/ beside the seeds (git
# ignores all but seed-*), so local runs pick up where the last one stopped.
# -timeout: no input of at most 64 KiB should take the loader seconds.
echo "fuzz: running mesh_yaml for ${secs}s"
status=0
cargo fuzz run "${flags[@]}" mesh_yaml -- \
  -max_total_time="$secs" \
  -max_len=65536 \
  -rss_limit_mb=2048 \
  -timeout=20 \
  -dict="$fuzz_dir/mesh_yaml.dict" \
  -print_final_stats=1 || status=$?
if [ "$status" -ne 0 ]; then
  echo "fuzz: mesh_yaml FAILED (exit $status); the input is in fuzz/artifacts/mesh_yaml/:" >&2
  ls -td "$fuzz_dir"/artifacts/mesh_yaml/* >&2 || true
  echo "fuzz: keep it as fuzz/corpus/mesh_yaml/seed-crash-<what>.yaml, then fix the loader" >&2
  exit "$status"
fi
echo "fuzz: mesh_yaml ran ${secs}s without a finding"
