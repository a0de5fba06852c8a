"""``recall``: search memory."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from agent.errors import ToolError
from agent.host.tools.base import ArgsModel, ToolContext, ToolOutput, ToolSpec, truncate_text


class Args(ArgsModel):
    """Arguments of ``recall``."""

    query: str = Field(description="Words to look for in memory.")
    limit: int = Field(default=5, ge=1, description="How many notes to return at most.")


def _describe(hit: Any) -> str:
    title = getattr(hit, "title", None)
    if title is None:
        return str(hit)
    archived = " (archived)" if getattr(hit, "archived", False) else ""
    return (
        f"[{getattr(hit, 'level', '?')}] {getattr(hit, 'name', '?')}: {title}{archived}\n"
        f"{getattr(hit, 'snippet', '')}"
    )


def run(args: Args, ctx: ToolContext) -> ToolOutput:
    """Return the matching notes, one a paragraph.

    Raises:
        ToolError: Memory is off.
    """
    if ctx.memory is None:
        raise ToolError("memory is not available in this session")
    hits = ctx.memory.recall(args.query, limit=min(args.limit, 20))
    if not hits:
        return ToolOutput(content=f"nothing in memory matches {args.query!r}")
    content, cut = truncate_text("\n\n".join(_describe(h) for h in hits), ctx.output_bytes)
    # Memory may hold notes derived from untrusted content.
    return ToolOutput(content=content, truncated=cut, untrusted=True)


TOOL = ToolSpec(
    name="recall",
    description="Search long-term memory for notes about something.",
    args_model=Args,
    effect="memory_read",
    run=run,
    main_argument="query",
)
