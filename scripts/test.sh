#!/usr/bin/env bash
# Runs every test: installs the rig (Envoy and Python tools into .rig/venv) if needed,
# checks formatting and lints (benchmarks included), then runs the whole test suite,
# real-Envoy tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/rig.sh)"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test "$@"
