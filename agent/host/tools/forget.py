"""``forget``: archive a memory topic (never a silent delete)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.errors import ToolError
from agent.host.tools.base import ArgsModel, ToolContext, ToolOutput, ToolSpec
from agent.host.tools.remember import describe_change


class Args(ArgsModel):
    """Arguments of ``forget``."""

    topic: str = Field(description="The topic name to forget.")
    level: Literal["project", "session", "user"] = Field(
        default="project", description="The memory level the topic is in."
    )
    reason: str = Field(description="Why it should be forgotten (kept in the history).")


def run(args: Args, ctx: ToolContext) -> ToolOutput:
    """Archive the topic through the memory service (undoable).

    Raises:
        ToolError: Memory is off, or the topic does not exist.
    """
    if ctx.memory is None:
        raise ToolError("memory is not available in this session")
    try:
        change = ctx.memory.forget(args.level, args.topic, reason=args.reason)
    except Exception as e:
        if type(e).__module__.startswith("memory"):
            raise ToolError(f"memory refused: {e}") from e
        raise
    return ToolOutput(content=f"archived: {describe_change(change)}", untrusted=False)


TOOL = ToolSpec(
    name="forget",
    description="Archive a memory topic that is wrong or no longer useful.",
    args_model=Args,
    effect="memory_write",
    run=run,
    main_argument="topic",
)
