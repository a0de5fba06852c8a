"""``read_file``: the text of a file inside the workspace."""

from __future__ import annotations

from pydantic import Field

from agent.host.tools.base import ArgsModel, ToolContext, ToolOutput, ToolSpec, truncate_text


class Args(ArgsModel):
    """Arguments of ``read_file``."""

    path: str = Field(description="File to read, relative to the workspace root.")
    start_line: int = Field(
        default=1, ge=1, description="First line to return (1 is the first line of the file)."
    )
    max_lines: int | None = Field(
        default=None, ge=1, description="How many lines to return at most; null for all that fit."
    )


def run(args: Args, ctx: ToolContext) -> ToolOutput:
    """Return the file's text (lines ``start_line`` onwards), cut at the read limit.

    Binary files (a NUL byte in the first block) are described, not dumped.
    """
    ws = ctx.files()
    where = ws.resolve(args.path)
    data, size = ws.read_bytes(where, ctx.read_bytes)
    if b"\x00" in data[:8192]:
        return ToolOutput(content=f"{where} is a binary file ({size} bytes); not shown")
    text = data.decode("utf-8", errors="replace")
    cut_at_read = size > len(data)
    if args.start_line > 1 or args.max_lines is not None:
        lines = text.splitlines(keepends=True)
        end = None if args.max_lines is None else args.start_line - 1 + args.max_lines
        text = "".join(lines[args.start_line - 1 : end])
    content, cut = truncate_text(text, ctx.output_bytes, what="file")
    if cut_at_read and not cut:
        content += f"\n[truncated file: {size - len(data)} more bytes not read]"
    return ToolOutput(content=content, truncated=cut or cut_at_read)


TOOL = ToolSpec(
    name="read_file",
    description="Read a text file in the workspace.",
    args_model=Args,
    effect="read",
    run=run,
    main_argument="path",
    pattern="path",
    reads_content=True,
)
