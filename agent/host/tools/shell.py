"""``shell``: one command in its own bubblewrap sandbox.

Without bubblewrap the command is refused, unless the user gave the separate,
clearly labelled "run unsandboxed" approval for this one call
(``ctx.unsandboxed_approved``, set by the host after its own prompt and audit).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from agent.errors import ToolDeniedError, ToolError
from agent.host.sandbox import run_unsandboxed
from agent.host.tools.base import (
    MARKER_RESERVE,
    ArgsModel,
    ToolContext,
    ToolOutput,
    ToolSpec,
    truncate_text,
)


class Args(ArgsModel):
    """Arguments of ``shell``."""

    command: str = Field(
        description="The command line, run by /bin/sh in the workspace directory without network."
    )
    timeout_s: int | None = Field(
        default=None,
        ge=1,
        description="Seconds before the command is killed; null for the default.",
    )

    @field_validator("command")
    @classmethod
    def _sane(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("command must not be empty")
        if "\x00" in value:
            raise ValueError("command contains a NUL byte")
        if len(value) > 8000:
            raise ValueError("command is longer than 8000 characters")
        return value


def run(args: Args, ctx: ToolContext) -> ToolOutput:
    """Run the command and return its status line and (capped) output.

    Raises:
        ToolDeniedError: No sandbox and no unsandboxed approval.
        ToolError: No shell configured.
    """
    limits = ctx.limits
    if args.timeout_s is not None:
        limits = limits.model_copy(
            update={"wall_seconds": min(float(args.timeout_s), limits.wall_seconds)}
        )
    # Keep the captured output within the tool's own output limit, leaving room
    # for the status line and the marker, so it is cut once, with one marker.
    room = max(ctx.output_bytes - MARKER_RESERVE - 100, 256)
    if limits.output_bytes > room:
        limits = limits.model_copy(update={"output_bytes": room})
    sandbox = ctx.sandbox
    if sandbox is None:
        raise ToolError("no shell is configured for this errand")
    if sandbox.available:
        result = sandbox.run_shell(
            args.command, ctx.workspace, limits, hide=ctx.hidden_paths, egress=ctx.egress
        )
    elif ctx.unsandboxed_approved:
        result = run_unsandboxed(args.command, ctx.workspace, limits)
    else:
        raise ToolDeniedError(
            "shell refused: bubblewrap is not available, so the command would run without "
            "OS isolation; it needs the user's separate 'run unsandboxed' approval"
        )
    text = result.describe()
    if not result.sandboxed:
        text = "[ran WITHOUT sandbox, approved by the user]\n" + text
    content, cut = truncate_text(text, ctx.output_bytes)
    return ToolOutput(content=content, truncated=cut or result.truncated)


TOOL = ToolSpec(
    name="shell",
    description=(
        "Run a shell command in the workspace, in a sandbox without network access. "
        "Output is capped and long commands are killed."
    ),
    args_model=Args,
    effect="execute",
    run=run,
    main_argument="command",
    pattern="command",
)
