"""Generated tool schemas, pinned by snapshots, and the step grammar built from them.

Regenerate the snapshots after a deliberate change with
``KEYLESS_UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/agent/test_tools_schema.py``.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent.errors import UnknownToolError
from agent.host.tools.registry import ALL_TOOLS, tool_call_schema

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("KEYLESS_UPDATE_SNAPSHOTS") == "1"


def _check_snapshot(name: str, value: Any) -> None:
    path = SNAPSHOTS / f"{name}.json"
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    if UPDATE:
        path.write_text(text)
        return
    assert path.exists(), f"no snapshot {path.name}; run with KEYLESS_UPDATE_SNAPSHOTS=1"
    expected = path.read_text()
    if text != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=f"snapshot/{path.name}",
                tofile="generated",
            )
        )
        pytest.fail(
            f"schema of {name} changed; if deliberate, regenerate with "
            f"KEYLESS_UPDATE_SNAPSHOTS=1\n{diff}"
        )


def test_tool_set_is_the_contract() -> None:
    assert list(ALL_TOOLS) == [
        "list_dir", "read_file", "search_files", "write_file", "edit_file", "shell",
        "http_request", "remember", "recall", "forget", "finish",
    ]  # fmt: skip


@pytest.mark.parametrize("name", list(ALL_TOOLS))
def test_tool_schema_snapshot(name: str) -> None:
    spec = ALL_TOOLS[name]
    _check_snapshot(
        f"tool_{name}",
        {"name": spec.name, "description": spec.description, "effect": spec.effect,
         "arguments": spec.schema()},
    )  # fmt: skip


@pytest.mark.parametrize("name", list(ALL_TOOLS))
def test_every_argument_is_described_and_extra_fields_refused(name: str) -> None:
    schema = ALL_TOOLS[name].schema()
    assert schema["additionalProperties"] is False
    assert schema["properties"], name
    for field, prop in schema["properties"].items():
        assert prop.get("description"), f"{name}.{field} has no description"


def test_step_schema_snapshot() -> None:
    _check_snapshot("tool_call_schema_all", tool_call_schema(ALL_TOOLS))


def test_step_schema_shape() -> None:
    schema = tool_call_schema(["read_file", "finish", "read_file"])
    options = schema["anyOf"]
    assert [o["properties"].get("tool", {}).get("const") for o in options] == [
        "read_file", "finish", None,
    ]  # fmt: skip
    assert options[0]["properties"]["arguments"] == ALL_TOOLS["read_file"].schema()
    assert options[-1] == {
        "type": "object",
        "properties": {"final": {"type": "string"}},
        "required": ["final"],
        "additionalProperties": False,
    }
    with pytest.raises(UnknownToolError, match="unknown tool 'rm_rf'"):
        tool_call_schema(["rm_rf"])


def test_step_schema_converts_to_a_llama_grammar() -> None:
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")
    for names in (list(ALL_TOOLS), ["read_file"], []):
        text = json.dumps(tool_call_schema(names))
        grammar = llama_grammar.LlamaGrammar.from_json_schema(text, verbose=False)
        assert grammar is not None
    gbnf = llama_grammar.json_schema_to_gbnf(json.dumps(tool_call_schema(["read_file"])))
    assert '"\\"read_file\\""' in gbnf
    assert "final" in gbnf


def test_valid_steps_validate_against_the_args_models() -> None:
    # Each option's "arguments" is the Args model's own schema, so what the
    # grammar lets through is exactly what run_tool's validation accepts.
    for name, spec in ALL_TOOLS.items():
        required = spec.schema().get("required", [])
        assert set(required) <= set(spec.args_model.model_fields), name
