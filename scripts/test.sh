#!/usr/bin/env bash
# Runs every test: installs the rig (Envoy and Python tools into .rig/venv) if needed,
# then the whole cargo test suite, real-Envoy tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/rig.sh)"
cargo test --all-targets "$@"
