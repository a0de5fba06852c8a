"""``write_file``: create or replace a file inside the workspace, atomically."""

from __future__ import annotations

from pydantic import Field, field_validator

from agent.host.tools.base import ArgsModel, ToolContext, ToolOutput, ToolSpec

MAX_WRITE_BYTES = 1024 * 1024


class Args(ArgsModel):
    """Arguments of ``write_file``."""

    path: str = Field(description="File to write, relative to the workspace root.")
    content: str = Field(description="The complete new content of the file.")
    create_dirs: bool = Field(default=True, description="Create missing parent directories.")

    @field_validator("content")
    @classmethod
    def _size(cls, value: str) -> str:
        size = len(value.encode("utf-8"))
        if size > MAX_WRITE_BYTES:
            raise ValueError(f"content is {size} bytes; the limit is {MAX_WRITE_BYTES}")
        return value


def run(args: Args, ctx: ToolContext) -> ToolOutput:
    """Write the file (temporary file, fsync, rename); the old file survives a failure."""
    ws = ctx.files()
    where = ws.resolve(args.path, must_exist=False)
    data = args.content.encode("utf-8")
    existed = ws.write_atomic(where, data, create_dirs=args.create_dirs)
    verb = "replaced" if existed else "created"
    return ToolOutput(content=f"{verb} {where} ({len(data)} bytes)", untrusted=False)


TOOL = ToolSpec(
    name="write_file",
    description="Create a file in the workspace, or replace its whole content.",
    args_model=Args,
    effect="write",
    run=run,
    main_argument="path",
    pattern="path",
)
