"""open_model: one spec, every backend."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.catalog import EMBEDDED_SHA256
from models.errors import ModelError, ModelFileError
from models.factory import ModelSpec, open_model
from models.fake import ScriptedModel
from models.interface import complete_chat
from tests.models.contract import HELLO


def test_fake_backend_reads_the_scripted_file(tmp_path: Path) -> None:
    script = tmp_path / "s.json"
    script.write_text(json.dumps(["scripted answer"]), encoding="utf-8")
    model = open_model(ModelSpec(backend="fake", scripted_file=script, n_ctx=512))
    assert isinstance(model, ScriptedModel)
    assert model.info.n_ctx == 512
    assert complete_chat(model, HELLO, max_tokens=10).text == "scripted answer"


def test_fake_backend_without_a_script_starts_empty() -> None:
    model = open_model(ModelSpec(backend="fake"))
    assert isinstance(model, ScriptedModel) and model.remaining == 0


def test_openai_backend_needs_a_url_and_a_name() -> None:
    with pytest.raises(ModelError, match="base URL"):
        open_model(ModelSpec(backend="openai", model_name="m"))


@pytest.mark.skipif(importlib.util.find_spec("models.remote") is None, reason="no remote backend")
def test_openai_backend_builds_the_remote_model() -> None:
    spec = ModelSpec(backend="openai", base_url="http://127.0.0.1:9/v1", model_name="m")
    with pytest.raises(ModelError, match="local"):
        open_model(spec)
    settings = {**spec.settings.model_dump(), "allow_local": True}
    model = open_model(ModelSpec.of("openai", **settings))
    assert model.info.backend == "openai"
    model.close()


def test_llama_cpp_backend_validates_the_file(tmp_path: Path) -> None:
    bogus = tmp_path / "m.gguf"
    bogus.write_bytes(b"GGML" + b"\x00" * 64)
    with pytest.raises(ModelFileError, match="not a GGUF"):
        open_model(ModelSpec(path=bogus))


def test_spec_round_trips_as_json(tmp_path: Path) -> None:
    spec = ModelSpec(path=tmp_path / "m.gguf", n_ctx=2048, rope_scaling="linear", rope_factor=2)
    assert ModelSpec.model_validate_json(spec.model_dump_json()) == spec


@pytest.mark.model
def test_default_spec_opens_the_verified_embedded_model(tmp_path: Path) -> None:
    cache = tmp_path / "verified.json"
    model = open_model(ModelSpec(n_ctx=128, n_threads=1, verified_cache=cache))
    try:
        assert model.info.backend == "llama.cpp"
        assert model.info.n_ctx == 128
        assert EMBEDDED_SHA256 in cache.read_text(encoding="utf-8")
    finally:
        model.close()


def test_importing_models_loads_neither_llama_cpp_nor_qt() -> None:
    code = (
        "import sys, models, models.factory, models.fake, models.catalog; "
        "print(sorted(m for m in ('llama_cpp', 'PySide6') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
