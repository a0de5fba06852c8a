#!/usr/bin/env bash
# Build Keyless.app and a .dmg on macOS (not buildable on the Linux CI).
# Needs Xcode command line tools, Python 3.11+ and CMake.
#   bash packaging/macos/build-macos.sh
# Metal offload is built in (-DGGML_METAL=on); Apple Silicon only.
# macOS has no bubblewrap: the agent runs as a separate process with a scrubbed
# environment and the app says OS isolation is off.
set -euo pipefail
cd "$(dirname "$0")/../.."
make setup LLAMA_CMAKE_ARGS="-DGGML_METAL=on -DGGML_NATIVE=OFF"
.venv/bin/pip install 'pyinstaller>=6.6,<7'
# Icon: render the SVG to an .icns with the system's tools.
mkdir -p build/keyless.iconset
for size in 16 32 64 128 256 512; do
    sips -s format png -z $size $size packaging/keyless.svg --out build/keyless.iconset/icon_${size}x${size}.png >/dev/null
done
iconutil -c icns build/keyless.iconset -o packaging/macos/keyless.icns
.venv/bin/pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/keyless.spec
# Sign ad hoc (a release signs with a Developer ID and notarizes).
codesign --force --deep --sign - dist/Keyless.app
version=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("keyless"))')
hdiutil create -volname Keyless -srcfolder dist/Keyless.app -ov -format UDZO "dist/keyless-${version}-macos-arm64.dmg"
dist/Keyless.app/Contents/MacOS/keyless --self-test
