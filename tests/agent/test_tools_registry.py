"""run_tool: unknown tools, validation errors that name the field, OS errors converted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.errors import ToolError, ToolValidationError, UnknownToolError
from agent.host.tools.base import ToolContext, truncate_text
from agent.host.tools.registry import run_tool


def test_unknown_tool_lists_the_known_ones(workspace: Path) -> None:
    ctx = ToolContext(workspace=workspace, session_id="s1")
    with pytest.raises(UnknownToolError, match="unknown tool 'delete_everything'; known: list_dir"):
        run_tool("delete_everything", {}, ctx)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({}, "path: Field required"),
        ({"path": "a", "bogus": 1}, "bogus: Extra inputs are not permitted"),
        ({"path": "a", "start_line": 0}, "start_line: Input should be greater than or equal to 1"),
        ({"path": 7}, "path: Input should be a valid string"),
    ],
)
def test_validation_errors_name_the_field(
    workspace: Path, args: dict[str, Any], needle: str
) -> None:
    ctx = ToolContext(workspace=workspace, session_id="s1")
    with pytest.raises(ToolValidationError, match=needle):
        run_tool("read_file", args, ctx)


def test_non_mapping_arguments(workspace: Path) -> None:
    ctx = ToolContext(workspace=workspace, session_id="s1")
    with pytest.raises(ToolValidationError, match="expected an object"):
        run_tool("read_file", ["a"], ctx)  # type: ignore[arg-type]


def test_workspace_that_vanished_is_a_tool_error(tmp_path: Path) -> None:
    ctx = ToolContext(workspace=tmp_path / "gone", session_id="s1")
    with pytest.raises(ToolError, match="is not a directory"):
        run_tool("list_dir", {}, ctx)


def test_truncate_text_marker_and_utf8_boundary() -> None:
    assert truncate_text("short", 100) == ("short", False)
    text, cut = truncate_text("€" * 200, 250)
    assert cut
    kept, marker = text.split("\n")
    assert kept == "€" * 50  # 150 bytes of budget, whole characters only
    assert marker == "[truncated output: 450 more bytes not shown]"
    assert len(text.encode()) <= 250
