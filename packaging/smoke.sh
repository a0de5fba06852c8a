#!/usr/bin/env bash
# Smoke-test a built bundle: unpack-free, run the frozen app's --self-test in
# a clean environment (no venv on PATH, private data dirs, offscreen Qt).
set -euo pipefail
bundle=${1:?usage: smoke.sh DIST_DIR}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
env -i PATH=/usr/bin:/bin HOME="$tmp/home" LANG=C.UTF-8 QT_QPA_PLATFORM=offscreen \
    KEYLESS_DATA_DIR="$tmp/data" KEYLESS_CONFIG_DIR="$tmp/config" \
    "$bundle/keyless" --self-test
echo "self-test of $bundle passed"
