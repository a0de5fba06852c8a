"""``remember``: propose a memory note (scanned, stamped, maybe queued for review)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from agent.errors import ToolError
from agent.host.tools.base import ArgsModel, ToolContext, ToolOutput, ToolSpec
from memory.frontmatter import Provenance


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


def provenance(ctx: ToolContext, tool: str) -> Any:
    """The provenance stamped on what the agent writes: the model's, or untrusted if tainted."""
    if ctx.memory_source is not None:
        return ctx.memory_source()
    trust = "untrusted" if ctx.tainted else "model"
    return Provenance(session=ctx.session_id, tool=tool, trust=trust)


def describe_change(change: Any) -> str:
    """A memory change in one line (structural: any object with op, level, name, summary)."""
    op = getattr(change, "op", None)
    if op is None:
        return str(change)
    return f"{op} {getattr(change, 'level', '?')}/{getattr(change, 'name', '?')}: " + str(
        getattr(change, "summary", "")
    )


def run(args: Args, ctx: ToolContext) -> ToolOutput:
    """Hand the note to the memory service; it refuses secrets and canaries.

    Raises:
        ToolError: Memory is off, or the memory service refused the note.
    """
    if ctx.memory is None:
        raise ToolError("memory is not available in this session")
    try:
        change = ctx.memory.remember(
            args.topic, args.content, level=args.level, source=provenance(ctx, "remember")
        )
    except Exception as e:
        # The memory package's own errors (secret found, store failed) become a
        # message for the model; anything else is a bug and propagates.
        if type(e).__module__.startswith("memory"):
            raise ToolError(f"memory refused the note: {e}") from e
        raise
    return ToolOutput(content=f"remembered: {describe_change(change)}", untrusted=False)


TOOL = ToolSpec(
    name="remember",
    description="Save a note to long-term memory for later errands.",
    args_model=Args,
    effect="memory_write",
    run=run,
    main_argument="topic",
)
