"""``remember``: propose a memory note (scanned, stamped, maybe queued for review)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from agent.errors import ToolError
from agent.tools.base import ArgsModel, ToolContext, ToolOutput, ToolSpec


class Args(ArgsModel):
    """Arguments of ``remember``."""

    topic: str = Field(description="Short topic name the note is filed under, e.g. 'build-steps'.")
    content: str = Field(description="The note itself, in markdown.")
    level: Literal["project", "session", "user"] = Field(
        default="project", description="Where it belongs: this project, this session, or the user."
    )

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if not value.strip() or len(value) > 80:
            raise ValueError("topic must be 1 to 80 characters")
        return value.strip()


def run(args: Args, ctx: ToolContext) -> ToolOutput:
    """Hand the note to the memory service; it refuses secrets and canaries.

    Raises:
        ToolError: Memory is off, or the memory service refused the note.
    """
    if ctx.memory is None:
        raise ToolError("memory is not available in this session")
    try:
        change = ctx.memory.remember(
            args.topic, args.content, level=args.level, source=ctx.memory_source()
        )
    except Exception as e:
        # The memory package's own errors (secret found, store failed) become a
        # message for the model; anything else is a bug and propagates.
        if type(e).__module__.startswith("memory"):
            raise ToolError(f"memory refused the note: {e}") from e
        raise
    return ToolOutput(content=f"remembered under {args.topic!r}: {change}", untrusted=False)


TOOL = ToolSpec(
    name="remember",
    description="Save a note to long-term memory for later errands.",
    args_model=Args,
    effect="memory_write",
    run=run,
    main_argument="topic",
)
