"""``list_dir``: the entries of a directory inside the workspace."""

from __future__ import annotations

import os
import stat

from pydantic import Field

from agent.host.tools.base import ArgsModel, ToolContext, ToolOutput, ToolSpec, truncate_text
from agent.host.tools.paths import protected_reason

MAX_ENTRIES = 500


class Args(ArgsModel):
    """Arguments of ``list_dir``."""

    path: str = Field(
        default=".", description="Directory to list, relative to the workspace root ('.' for it)."
    )


def run(args: Args, ctx: ToolContext) -> ToolOutput:
    """List the directory: one entry a line, directories with a trailing '/'.

    Symlinks are shown with their target only when it stays inside the
    workspace; entries of protected paths are marked, not hidden.
    """
    ws = ctx.files()
    where = ws.resolve(args.path)
    lines: list[str] = []
    with ws.open_dir(where) as dfd, os.scandir(dfd) as it:
        entries = sorted(it, key=lambda e: e.name)
        for entry in entries[:MAX_ENTRIES]:
            st = entry.stat(follow_symlinks=False)
            rel = where.relative / entry.name
            suffix = " (protected)" if protected_reason(rel) else ""
            if ws.refused_reason(rel):
                suffix = " (refused: Keyless's own files)"
            if stat.S_ISDIR(st.st_mode):
                lines.append(f"{entry.name}/{suffix}")
            elif stat.S_ISLNK(st.st_mode):
                lines.append(f"{entry.name} -> (symlink){suffix}")
            elif stat.S_ISREG(st.st_mode):
                lines.append(f"{entry.name}  {st.st_size} bytes{suffix}")
            else:
                lines.append(f"{entry.name}  (special file){suffix}")
    if len(entries) > MAX_ENTRIES:
        lines.append(f"[truncated listing: {len(entries) - MAX_ENTRIES} more entries not shown]")
    header = f"{where}: {len(entries)} entries"
    content, cut = truncate_text("\n".join([header, *lines]), ctx.output_bytes)
    return ToolOutput(content=content, truncated=cut or len(entries) > MAX_ENTRIES)


TOOL = ToolSpec(
    name="list_dir",
    description="List the files and directories in a workspace directory.",
    args_model=Args,
    effect="read",
    run=run,
    main_argument="path",
    pattern="path",
)
