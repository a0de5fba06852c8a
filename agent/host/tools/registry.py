"""The one list of tools, what the agent process is offered of them, and the host's entry point.

Adding a tool is one module under ``agent/host/tools/`` (its ``Args`` model
and ``TOOL = ToolSpec(...)``, with the policy's data: effect, main argument,
pattern kind, capability argument) plus one line in :data:`ALL_TOOLS` below.
The grammar, the prompt, the policy, the permission prompt, the host's
defaults and the settings screen all read the tool from here; a tool from
elsewhere (a test) joins through :func:`register`.

:data:`RULE_KINDS` holds what rules name but the model never calls: ``net``,
the egress proxy's requests (:mod:`agent.host.tools.net`), and ``mcp``, the
calls of MCP servers' tools (:mod:`agent.host.tools.mcp`). The policy reads
them through :func:`rule_spec` like any tool.
"""

from __future__ import annotations

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
    mcp,
    net,
    read_file,
    recall,
    remember,
    search_files,
    shell,
    write_file,
)
from agent.host.tools.base import ToolContext, ToolOutput, ToolSpec, truncate_text
from agent.protocol import FINISH_TOOL, ToolOffer, step_schema

READ_ONLY_EFFECTS = frozenset({"read", "memory_read"})
"""Effects whose calls leave the workspace and memory as they were."""

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


RULE_KINDS: dict[str, ToolSpec] = {spec.name: spec for spec in (net.TOOL, mcp.TOOL)}
"""Specs the policy decides by but the host never offers nor runs as a tool."""


def rule_spec(name: str) -> ToolSpec | None:
    """The spec rules for ``name`` are read from: a tool or a :data:`RULE_KINDS` entry."""
    return ALL_TOOLS.get(name) or RULE_KINDS.get(name)


def rule_names() -> tuple[str, ...]:
    """What a rule may name (the settings screen lists it): the default tools, the rule kinds."""
    return (*default_tools(), *RULE_KINDS)


def register(spec: ToolSpec) -> ToolSpec:
    """Add ``spec`` to :data:`ALL_TOOLS` (the path a tool from outside this package takes).

    Returns:
        ``spec``, so a module may write ``TOOL = register(ToolSpec(...))``.

    Raises:
        ValueError: A tool of that name is already registered.
    """
    if spec.name in ALL_TOOLS or spec.name in RULE_KINDS:
        raise ValueError(f"a tool named {spec.name!r} is already registered")
    ALL_TOOLS[spec.name] = spec
    return spec


def default_tools() -> tuple[str, ...]:
    """The tools offered when the caller does not choose, and the ones a rule names.

    Every registered tool but ``finish``, which is always offered and needs no rule.
    """
    return tuple(name for name, spec in ALL_TOOLS.items() if spec.effect != "final")


def offer(name: str) -> ToolOffer:
    """The :class:`agent.protocol.ToolOffer` the agent process gets for the tool ``name``.

    Raises:
        UnknownToolError: ``name`` is not a tool.
    """
    spec = ALL_TOOLS.get(name)
    if spec is None:
        raise UnknownToolError(f"unknown tool {name!r}; known: {', '.join(ALL_TOOLS)}")
    return ToolOffer(
        name=spec.name,
        description=spec.description,
        parameters=spec.schema(),
        read_only=spec.effect in READ_ONLY_EFFECTS,
    )


def offers(names: Iterable[str]) -> list[ToolOffer]:
    """The offers of ``names`` (order kept, duplicates dropped) and of ``finish``, always offered.

    Raises:
        UnknownToolError: A name is not a tool.
    """
    return [offer(name) for name in dict.fromkeys([*names, FINISH_TOOL])]


def tool_call_schema(names: Iterable[str]) -> dict[str, Any]:
    """The grammar of a step offering exactly ``names``: :func:`agent.protocol.step_schema`.

    Raises:
        UnknownToolError: A name is not a tool.
    """
    return step_schema(offer(name) for name in dict.fromkeys(names))


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
