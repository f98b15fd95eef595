#!/usr/bin/env bash
# Runs every test: installs the rig (Envoy and Python tools into .rig/venv) if needed,
# checks formatting and lints (benchmarks included), then runs the whole test suite,
# real-Envoy tests included, and a bounded fuzzing run.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/rig.sh)"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test "$@"
# Fuzzing, bounded: every target for 30 s (scripts/fuzz.sh alone runs 10 minutes each).
bash scripts/fuzz.sh 30
