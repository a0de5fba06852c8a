"""All tools, the grammar schema the model is decoded against, and the host's entry point."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from agent.errors import ToolError, ToolValidationError, UnknownToolError
from agent.host.tools import (
    edit_file,
    finish,
    forget,
    http_request,
    list_dir,
    read_file,
    recall,
    remember,
    search_files,
    shell,
    write_file,
)
from agent.host.tools.base import ToolContext, ToolOutput, ToolSpec, truncate_text

ALL_TOOLS: dict[str, ToolSpec] = {
    module.TOOL.name: module.TOOL
    for module in (
        list_dir,
        read_file,
        search_files,
        write_file,
        edit_file,
        shell,
        http_request,
        remember,
        recall,
        forget,
        finish,
    )
}


def _inline_defs(schema: dict[str, Any], prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """Move ``$defs`` of one tool's schema to the shared table, renaming their refs."""
    local = schema.pop("$defs", {})
    renames = {name: f"{prefix}__{name}" for name in local}

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                    out[key] = "#/$defs/" + renames[value.removeprefix("#/$defs/")]
                else:
                    out[key] = fix(value)
            return out
        if isinstance(node, list):
            return [fix(item) for item in node]
        return node

    for name, definition in local.items():
        defs[renames[name]] = fix(definition)
    fixed: dict[str, Any] = fix(schema)
    return fixed


def tool_call_schema(names: Iterable[str]) -> dict[str, Any]:
    """The JSON schema of one model step: a call of one of ``names``, or a final answer.

    ``anyOf`` over ``{"tool": <const name>, "arguments": <the tool's Args schema>}``
    for each tool, and ``{"final": <string>}``. The executor passes it as
    ``json_schema`` so the grammar makes every step parse.

    Args:
        names: The tools offered in this errand (order kept, duplicates dropped).

    Returns:
        The schema (a fresh dict; callers may modify it).

    Raises:
        UnknownToolError: A name is not a tool.
    """
    options: list[dict[str, Any]] = []
    defs: dict[str, Any] = {}
    seen: set[str] = set()
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        spec = ALL_TOOLS.get(name)
        if spec is None:
            raise UnknownToolError(f"unknown tool {name!r}; known: {', '.join(ALL_TOOLS)}")
        arguments = _inline_defs(copy.deepcopy(spec.schema()), name, defs)
        options.append(
            {
                "type": "object",
                "properties": {"tool": {"const": name}, "arguments": arguments},
                "required": ["tool", "arguments"],
                "additionalProperties": False,
            }
        )
    options.append(
        {
            "type": "object",
            "properties": {"final": {"type": "string"}},
            "required": ["final"],
            "additionalProperties": False,
        }
    )
    schema: dict[str, Any] = {"anyOf": options}
    if defs:
        schema["$defs"] = defs
    return schema


def _validation_message(name: str, error: ValidationError) -> str:
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in item["loc"]) or "arguments"
        problems.append(f"{where}: {item['msg']}")
    return f"invalid arguments for {name}: " + "; ".join(problems)


def run_tool(name: str, raw_args: Mapping[str, Any], ctx: ToolContext) -> ToolOutput:
    """Validate ``raw_args`` against the tool's ``Args`` and run it.

    The policy decision is the host's job and happens before this call.

    Args:
        name: The tool the model asked for.
        raw_args: The arguments as decoded from the model's output.
        ctx: What the tool may touch.

    Returns:
        The tool's output, cut to ``ctx.output_bytes``.

    Raises:
        UnknownToolError: No tool of that name.
        ToolValidationError: The arguments do not validate (message names the fields).
        ToolError: The tool refused or failed (PathRefusedError, ToolDeniedError, ...).
    """
    spec = ALL_TOOLS.get(name)
    if spec is None:
        raise UnknownToolError(f"unknown tool {name!r}; known: {', '.join(ALL_TOOLS)}")
    if not isinstance(raw_args, Mapping):
        raise ToolValidationError(f"invalid arguments for {name}: expected an object")
    try:
        args = spec.args_model.model_validate(dict(raw_args))
    except ValidationError as e:
        raise ToolValidationError(_validation_message(name, e)) from e
    try:
        output = spec.run(args, ctx)
    except ToolError:
        raise
    except OSError as e:
        raise ToolError(f"{name} failed: {e.strerror or e}") from e
    content, cut = truncate_text(output.content, ctx.output_bytes)
    if cut:
        output = output.model_copy(update={"content": content, "truncated": True})
    return output
