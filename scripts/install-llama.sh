#!/usr/bin/env bash
# Install llama-cpp-python built from source with portable CPU flags.
#
# pip's wheel cache does not key on CMAKE_ARGS, so a wheel built with
# -march=native (which crashed in ggml's AMX kernels, llama.cpp #20824) could be
# silently reused. We never let pip cache it; instead we keep our own wheel
# cache keyed by the version *and* a hash of the exact CMake flags.
#
# Usage: scripts/install-llama.sh PYTHON VERSION "CMAKE ARGS"
set -euo pipefail

python=$1
version=$2
cmake_args=$3

key=$(printf '%s|%s|%s' "$version" "$cmake_args" "$(uname -m)" | sha256sum | cut -c1-16)
cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/keyless-build
wheel_dir="$cache_root/llama-cpp-python-$version-$key"

if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "Building llama-cpp-python $version from source (a few minutes)" >&2
    echo "  CMAKE_ARGS=$cmake_args" >&2
    mkdir -p "$cache_root"
    tmp_dir=$(mktemp -d "$cache_root/tmp.XXXXXX")
    CMAKE_ARGS="$cmake_args" FORCE_CMAKE=1 "$python" -m pip wheel \
        --no-cache-dir --no-binary llama-cpp-python --no-deps \
        --wheel-dir "$tmp_dir" "llama-cpp-python==$version"
    rm -rf "$wheel_dir"
    mv "$tmp_dir" "$wheel_dir"
    printf '%s\n' "$cmake_args" > "$wheel_dir/CMAKE_ARGS"
fi

# --no-index + --find-links: only the wheel built with these exact flags can
# satisfy the requirement. Its pure-Python dependencies (numpy, jinja2, ...)
# come from PyPI when the project itself is installed.
"$python" -m pip install --no-cache-dir --force-reinstall --no-deps \
    --no-index --find-links "$wheel_dir" "llama-cpp-python==$version"
