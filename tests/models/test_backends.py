"""The backend registry: built-ins and a test-tree backend through one path; specs as data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.protocol import Hello
from models.backends import (
    BackendError,
    BackendSettings,
    BackendSpec,
    backend_for,
    backend_names,
    register,
    runs_in_host,
    source_for,
    unregister,
)
from models.builtin_backends import FakeSettings, LlamaSettings, OpenAISettings
from models.factory import ModelSpec, open_model
from models.interface import ChatModel, complete_chat
from models.process import ProcessModel
from models.tokenizer import approximate_tokens, counter_for_spec
from tests.models.contract import HELLO, ChatModelContract
from tests.models.echo_backend import EchoModel, EchoSettings


class TestEchoBackendContract(ChatModelContract):
    """A backend from outside the package passes the shared contract, opened by name."""

    @pytest.fixture
    def model(self) -> Iterator[ChatModel]:
        model = open_model(ModelSpec.of("echo"))
        yield model
        model.close()

    def fresh_model(self) -> ChatModel:
        return open_model(ModelSpec.of("echo", replies=["unused"]))

    def script(self, model: ChatModel, text: str) -> None:
        assert isinstance(model, EchoModel)
        model.enqueue(text)


def test_the_built_ins_say_where_they_run_and_what_they_need() -> None:
    assert backend_names()[:3] == ["llama.cpp", "openai", "fake"]
    llama, remote, fake = (backend_for(n) for n in ("llama.cpp", "openai", "fake"))
    assert (llama.runs_in, llama.needs_key, llama.counts_tokens_locally) == ("agent", False, True)
    assert (remote.runs_in, remote.needs_key, remote.counts_tokens_locally) == ("host", True, False)
    assert (fake.runs_in, fake.needs_key, fake.counts_tokens_locally) == ("agent", False, False)
    assert runs_in_host(ModelSpec.of("openai")) and not runs_in_host(ModelSpec.of("echo"))
    assert not runs_in_host(None)


def test_an_unknown_backend_is_refused_by_name() -> None:
    with pytest.raises(BackendError, match=r"unknown model backend 'nope' \(known: llama.cpp"):
        backend_for("nope")
    with pytest.raises(ValidationError, match="unknown model backend 'nope'"):
        ModelSpec.model_validate_json('{"backend": "nope", "settings": {}}')


def test_a_second_backend_with_a_taken_name_is_refused() -> None:
    other = BackendSpec(
        name="fake", settings_model=BackendSettings, open=lambda s, k: EchoModel(EchoSettings())
    )
    with pytest.raises(BackendError, match="'fake' is already registered"):
        register(other)
    assert backend_for("fake").settings_model is FakeSettings


def test_a_backend_registered_at_run_time_is_named_for_the_child_by_its_file() -> None:
    assert source_for("llama.cpp") is None and source_for("fake") is None
    source = source_for("echo")
    assert source is not None and source.module == "tests.models.echo_backend"
    assert source.file == Path(__file__).with_name("echo_backend.py").resolve()


def test_settings_are_the_backends_own_and_strict() -> None:
    assert isinstance(ModelSpec.of("echo", prefix="> ").settings, EchoSettings)
    assert isinstance(ModelSpec.of("openai", base_url="https://x.test/v1").settings, OpenAISettings)
    with pytest.raises(ValidationError, match="base_url"):
        ModelSpec.of("llama.cpp", base_url="https://x.test/v1")
    with pytest.raises(ValidationError, match="n_ctx"):
        ModelSpec.of("fake", n_ctx=0)


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec.of("llama.cpp", path=Path("/m/q.gguf"), n_ctx=2048, rope_scaling="yarn"),
        ModelSpec.of("openai", base_url="https://x.test/v1", model_name="m", allow_local=True),
        ModelSpec.of("fake", scripted_file=Path("/s.json"), n_ctx=512),
        ModelSpec.of("echo", replies=["a", "b"], prefix="> "),
    ],
    ids=lambda s: s.backend,
)
def test_a_spec_round_trips_through_the_hello_message(spec: ModelSpec) -> None:
    again = Hello.model_validate_json(Hello(model_spec=spec).model_dump_json()).model_spec
    assert again == spec and type(again.settings) is type(spec.settings)


def test_the_flat_fields_of_older_specs_move_into_the_backends_settings() -> None:
    # What ModelSpec.model_dump_json() wrote when one flat set of fields served every backend.
    old = {
        "backend": "llama.cpp", "path": "/m/q.gguf", "n_ctx": 2048, "n_gpu_layers": 10,
        "n_threads": None, "n_sink": 8, "rope_scaling": "linear", "rope_factor": 2.0,
        "eviction": "h2o", "base_url": None, "model_name": None, "allow_local": False,
        "scripted_file": None, "verified_cache": "/d/verified-models.json",
    }  # fmt: skip
    spec = ModelSpec.model_validate_json(json.dumps(old))
    assert spec.settings == LlamaSettings(
        path=Path("/m/q.gguf"), n_ctx=2048, n_gpu_layers=10, n_sink=8, rope_scaling="linear",
        rope_factor=2.0, eviction="h2o", verified_cache=Path("/d/verified-models.json"),
    )  # fmt: skip
    remote = ModelSpec.model_validate(
        {**old, "backend": "openai", "base_url": "https://x.test/v1", "model_name": "m"}
    )
    expected = OpenAISettings(base_url="https://x.test/v1", model_name="m", n_ctx=2048)
    assert remote.settings == expected
    assert ModelSpec.model_validate({}).settings == LlamaSettings()
    with pytest.raises(ValidationError, match="n_sink"):
        ModelSpec.model_validate({**old, "n_sink": -1})


def test_token_counting_asks_the_backend(tmp_path: Path) -> None:
    assert counter_for_spec(ModelSpec.of("echo")) is approximate_tokens
    assert counter_for_spec(ModelSpec.of("openai")) is approximate_tokens
    # llama.cpp counts with the file's vocabulary; an unreadable file falls back.
    assert counter_for_spec(ModelSpec.of("llama.cpp", path=tmp_path / "none.gguf")) is (
        approximate_tokens
    )


def test_the_model_process_loads_a_backend_registered_at_run_time() -> None:
    model = ProcessModel(ModelSpec.of("echo", prefix="child: "))
    try:
        assert model.info.backend == "echo"
        assert complete_chat(model, HELLO, max_tokens=50).text.startswith("child: Write three")
    finally:
        model.close()


def test_unregistering_removes_a_backend() -> None:
    register(
        BackendSpec(
            name="gone", settings_model=BackendSettings, open=lambda s, k: EchoModel(EchoSettings())
        )
    )
    assert "gone" in backend_names()
    unregister("gone")
    assert "gone" not in backend_names()
