#!/usr/bin/env bash
# Copies the Envoy file descriptor set that ships inside the envoy-types crate (the one in
# Cargo.lock) to proto/envoy-descriptors.bin, which `render` and the admin views use to
# print resources as Envoy's canonical proto3 JSON. Run after upgrading envoy-types.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(cargo metadata --format-version 1 --locked | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="envoy-types"))')
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/envoy-types-"$version" | head -n1)
cp "$src/src/generated/types.bin" proto/envoy-descriptors.bin
echo "proto/envoy-descriptors.bin from envoy-types $version"
