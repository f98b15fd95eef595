#!/usr/bin/env bash
# The benchmark command: every figure against its target, on this machine.
#   scripts/bench.sh            full run (several minutes)
#   scripts/bench.sh --quick    fewer streams, shorter churn
# Prints tables and writes target/bench/figures.json (named figures, plus the machine).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
eval "$(scripts/rig.sh)"
quick=false
[ "${1:-}" = "--quick" ] && quick=true
mkdir -p target/bench
rm -f target/bench/*.json
if $quick; then
  cargo bench --bench xds -- --streams 200 --clusters 1000
  churn=5
else
  # Storm, memory per client and fan-out: 1,000 streams on the full configuration, then
  # 5,000 on a smaller one.
  cargo bench --bench xds -- --streams 1000 --clusters 10000
  cargo bench --bench xds -- --streams 5000 --clusters 1000
  churn=30
fi
cargo bench --bench translate
cargo bench --bench sources
cargo bench --bench bytes_per_change
cargo bench --bench churn -- --churn-secs "$churn"
cargo bench --bench convergence
cargo bench --bench nginx
python3 - <<'PY'
import glob, json, os, platform, subprocess
figures = {}
for path in sorted(glob.glob("target/bench/*.json")):
    name = os.path.basename(path)[:-5]
    if name == "figures":
        continue
    for key, value in json.load(open(path)).items():
        figures[f"{name}.{key}"] = value
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
machine = {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
           "rustc": subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()}
json.dump({"machine": machine, "figures": figures}, open("target/bench/figures.json", "w"), indent=2)
print(f"{len(figures)} figures written to target/bench/figures.json")
PY
