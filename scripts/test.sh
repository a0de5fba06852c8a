#!/usr/bin/env bash
# The whole check: lint, strict type checks, then the test suite.
#
# When D-Bus and gnome-keyring are installed, the suite runs inside a private
# D-Bus session with an unlocked, throwaway Secret Service so the keyring tests
# exercise a real OS keyring; the user's own keyring is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv

echo "== ruff"
"$venv/bin/ruff" check app agent vault memory models tests bench
echo "== mypy --strict"
"$venv/bin/mypy"

export QT_QPA_PLATFORM=offscreen
pytest_cmd=("$venv/bin/python" -m pytest "$@")

set +e
if command -v dbus-run-session >/dev/null && command -v gnome-keyring-daemon >/dev/null; then
    echo "== pytest (private Secret Service)"
    export KEYLESS_TEST_HOME
    KEYLESS_TEST_HOME=$(mktemp -d)
    # gnome-keyring keeps its keyrings under $HOME/.local/share/keyrings.
    HOME="$KEYLESS_TEST_HOME" dbus-run-session -- sh -c '
        echo -n keyless-test | gnome-keyring-daemon --unlock --components=secrets >/dev/null
        export KEYLESS_SECRET_SERVICE=1
        exec "$@"' sh "${pytest_cmd[@]}"
    rc=$?
    rm -rf "$KEYLESS_TEST_HOME"
else
    echo "== pytest (no Secret Service available: keyring tests will skip)"
    "${pytest_cmd[@]}"
    rc=$?
fi
set -e
# pytest exits 5 when it collected no tests; that is not a failure of the code.
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests"
    rc=0
fi
if [ "$rc" -ne 0 ]; then
    exit "$rc"
fi

# The installer's smoke test: build the PyInstaller bundle and run its
# --self-test from a clean environment (KEYLESS_SKIP_PACKAGE=1 skips it).
if [ "${KEYLESS_SKIP_PACKAGE:-0}" != "1" ]; then
    echo "== package + self-test of the frozen app"
    PY="$venv/bin/python" bash packaging/build-linux.sh
fi
