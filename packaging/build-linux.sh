#!/usr/bin/env bash
# Build the Linux artifact: a one-dir PyInstaller bundle packed as
# dist/keyless-<version>-linux-<arch>.tar.gz with a .desktop file, an icon and
# an install script, then smoke-test the frozen app with --self-test.
#
#   bash packaging/build-linux.sh            (make package)
#   KEYLESS_BUNDLE_MODEL=0 bash packaging/build-linux.sh   (variant without the model)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

"$PY" -m pip install --quiet 'pyinstaller>=6.6,<7'
version=$("$PY" -c 'import importlib.metadata as m; print(m.version("keyless"))')
arch=$(uname -m)

rm -rf build/pyinstaller dist/keyless
"$PY" -m PyInstaller --noconfirm --log-level WARN \
    --distpath dist --workpath build/pyinstaller packaging/keyless.spec

cp packaging/linux/keyless.desktop packaging/linux/install.sh packaging/keyless.svg dist/keyless/
suffix=""
[ "${KEYLESS_BUNDLE_MODEL:-1}" = "0" ] && suffix="-nomodel"
artifact="dist/keyless-${version}-linux-${arch}${suffix}.tar.gz"
tar -C dist -czf "$artifact" keyless

echo "built $artifact ($(du -h "$artifact" | cut -f1) packed, $(du -sh dist/keyless | cut -f1) unpacked)"

if [ "${KEYLESS_SKIP_SMOKE:-0}" != "1" ]; then
    bash packaging/smoke.sh dist/keyless
fi
