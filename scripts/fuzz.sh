#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer): manifest files, Kubernetes objects, SotW and
# Delta request sequences through the protocol state machines, the request decoders
# against prost's, and the nginx agent's rendering of what the control plane sends.
#   scripts/fuzz.sh              every target for 10 minutes (the long run)
#   scripts/fuzz.sh SECONDS      every target for SECONDS (scripts/test.sh runs 30)
# A crash stops the run with its input in fuzz/artifacts/TARGET/; turn it into a
# regression test, fix it, and keep the input in fuzz/seeds/TARGET/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"
seconds="${1:-600}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --quiet
fi
# libFuzzer's instrumentation needs nightly flags: the nightly toolchain when there is
# one, else the stable compiler allowed them.
if rustup run nightly rustc --version >/dev/null 2>&1; then
  toolchain=(+nightly)
else
  toolchain=()
  export RUSTC_BOOTSTRAP=1
fi
mkdir -p logs
for target in manifests kube_objects sotw_requests request_decode delta_requests nginx_render; do
  mkdir -p "corpus/$target"
  echo "fuzz: $target for ${seconds}s" >&2
  status=0
  cargo "${toolchain[@]}" fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
    -print_final_stats=1 >"logs/$target.log" 2>&1 || status=$?
  grep -E "^stat::(number_of_executed_units|peak_rss_mb|new_units_added)|^SUMMARY|panicked|ERROR:" \
    "logs/$target.log" | sed "s/^/fuzz: $target: /" >&2 || true
  if [ "$status" -ne 0 ]; then
    tail -40 "logs/$target.log" >&2
    echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
