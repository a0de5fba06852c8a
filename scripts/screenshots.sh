#!/usr/bin/env bash
# Take a screenshot of every screen under a private Xvfb display.
#
#   bash scripts/screenshots.sh [OUT_DIR]      (default: docs/screenshots)
#
# The app runs against throwaway user dirs; errands use the real agent host and
# agent process with the scripted fake model, so the pictures are reproducible.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/screenshots}
python=${PYTHON:-.venv/bin/python}

display=""
for n in $(seq 90 120); do
    if [ ! -e "/tmp/.X11-unix/X$n" ] && [ ! -e "/tmp/.X$n-lock" ]; then display=":$n"; break; fi
done
[ -n "$display" ] || { echo "no free X display number" >&2; exit 1; }

Xvfb "$display" -screen 0 1400x900x24 -nolisten tcp >/dev/null 2>&1 &
xvfb_pid=$!
trap 'kill "$xvfb_pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -e "/tmp/.X11-unix/X${display#:}" ] && break; sleep 0.1; done

unset QT_QPA_PLATFORM
DISPLAY="$display" "$python" scripts/screenshots.py "$out"
# The vault, memory, audit and settings screens, with demo data.
if [ -f scripts/screens_demo.py ]; then
    DISPLAY="$display" "$python" scripts/screens_demo.py "$out"
fi
