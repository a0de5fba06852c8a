"""The scripted fake: the shared contract plus its own scripting rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.errors import GenerationError, ModelFileError
from models.fake import ScriptedModel, check_json, fake_tokens
from models.interface import ChatModel, Finished, Message, Token
from tests.models.contract import ANSWER_SCHEMA, HELLO, ChatModelContract


class TestScriptedModelContract(ChatModelContract):
    @pytest.fixture
    def model(self) -> Iterator[ChatModel]:
        model = ScriptedModel()
        yield model
        model.close()

    def fresh_model(self) -> ChatModel:
        return ScriptedModel(["unused"])

    def script(self, model: ChatModel, text: str) -> None:
        assert isinstance(model, ScriptedModel)
        model.enqueue(text)


def test_streams_the_script_word_by_word_and_records_calls() -> None:
    model = ScriptedModel(["Hello there, world.", "Second."])
    events = list(model.stream_chat(HELLO, max_tokens=100))
    assert [e.text for e in events if isinstance(e, Token)] == ["Hello", " there,", " world."]
    final = events[-1]
    assert isinstance(final, Finished)
    assert final.text == "Hello there, world."
    assert final.stats.stop_reason == "eos"
    assert model.calls == [HELLO]
    assert model.remaining == 1


def test_runs_out_of_script_with_a_clear_error() -> None:
    model = ScriptedModel()
    with pytest.raises(GenerationError, match="no response left"):
        model.stream_chat(HELLO, max_tokens=5)


def test_json_schema_rejects_a_script_the_grammar_could_not_produce() -> None:
    model = ScriptedModel(['{"answer": "x", "confidence": "sure"}', "not json"])
    with pytest.raises(GenerationError, match="confidence"):
        model.stream_chat(HELLO, max_tokens=50, json_schema=ANSWER_SCHEMA)
    with pytest.raises(GenerationError, match="not JSON"):
        model.stream_chat(HELLO, max_tokens=50, json_schema=ANSWER_SCHEMA)


def test_check_json_follows_refs_like_pydantic_schemas() -> None:
    schema = {
        "$defs": {"Args": {"type": "object", "properties": {"path": {"type": "string"}},
                           "required": ["path"]}},
        "type": "object",
        "properties": {"tool": {"const": "read_file"}, "arguments": {"$ref": "#/$defs/Args"}},
        "required": ["tool", "arguments"],
    }  # fmt: skip
    assert check_json('{"tool": "read_file", "arguments": {"path": "a"}}', schema)
    with pytest.raises(GenerationError, match="path"):
        check_json('{"tool": "read_file", "arguments": {}}', schema)


def test_from_file_loads_a_list_of_strings(tmp_path: Path) -> None:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(["one", "two"]), encoding="utf-8")
    model = ScriptedModel.from_file(path)
    assert model.remaining == 2


@pytest.mark.parametrize(
    ("content", "problem"),
    [("[1, 2]", "list of strings"), ("{oops", "not valid JSON"), (None, "cannot read")],
)
def test_from_file_names_the_problem(tmp_path: Path, content: str | None, problem: str) -> None:
    path = tmp_path / "script.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ModelFileError, match=problem):
        ScriptedModel.from_file(path)


def test_context_state_simulates_eviction_past_n_ctx() -> None:
    model = ScriptedModel(["word " * 100], n_ctx=64)
    list(model.stream_chat([Message(role="user", content="go")], max_tokens=100))
    state = model.context_state()
    assert state.n_sink + state.n_window <= 64
    assert state.n_evicted > 0 and state.n_shifts > 0


def test_fake_tokens_round_trip() -> None:
    text = "  a  b\nc "
    assert "".join(fake_tokens(text)) == text
