#!/bin/sh
# Install an unpacked Keyless tarball for the current user:
#   tar xzf keyless-*-linux-x86_64.tar.gz && ./keyless/install.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
prefix=${PREFIX:-$HOME/.local}
mkdir -p "$prefix/lib" "$prefix/bin" "$prefix/share/applications" "$prefix/share/icons/hicolor/scalable/apps"
rm -rf "$prefix/lib/keyless"
cp -a "$here" "$prefix/lib/keyless"
ln -sf "$prefix/lib/keyless/keyless" "$prefix/bin/keyless"
sed "s|^Exec=keyless|Exec=$prefix/bin/keyless|" "$here/keyless.desktop" > "$prefix/share/applications/keyless.desktop"
cp "$here/keyless.svg" "$prefix/share/icons/hicolor/scalable/apps/keyless.svg"
echo "Keyless installed in $prefix/lib/keyless; run 'keyless' or find it in your applications menu."
