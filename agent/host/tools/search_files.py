"""``search_files``: literal text search through the workspace's files.

Literal text only, no regular expressions: a pattern chosen by the model must
not be able to stall the host (catastrophic backtracking). The walk uses
``os.fwalk`` without following symlinks and skips ``.git`` and the protected
paths.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import PurePosixPath

from pydantic import Field, field_validator

from agent.errors import ToolError
from agent.host.protected import GIT_DIR_NAMES, normalise_name
from agent.host.tools.base import ArgsModel, ToolContext, ToolOutput, ToolSpec, truncate_text
from agent.host.tools.paths import Workspace, protected_reason

MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_SCANNED_BYTES = 64 * 1024 * 1024
MAX_FILES = 20_000
MAX_LINE_CHARS = 300


class Args(ArgsModel):
    """Arguments of ``search_files``."""

    query: str = Field(description="Text to look for (literal, not a regular expression).")
    path: str = Field(default=".", description="Directory to search, relative to the workspace.")
    glob: str | None = Field(
        default=None, description="Only search files whose name matches this glob, e.g. '*.py'."
    )
    case_sensitive: bool = Field(default=False, description="Match letter case exactly.")
    max_results: int = Field(default=50, ge=1, description="Stop after this many matching lines.")

    @field_validator("query")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query must not be empty")
        if len(value) > 1000:
            raise ValueError("query is longer than 1000 characters")
        return value


def run(args: Args, ctx: ToolContext) -> ToolOutput:
    """Return ``file:line: text`` for each matching line, up to ``max_results``."""
    ws = ctx.files()
    where = ws.resolve(args.path)
    needle = args.query if args.case_sensitive else args.query.casefold()
    hits: list[str] = []
    scanned = 0
    files = 0
    stopped = ""
    with ws.open_dir(where) as top:
        for dirpath, dirnames, filenames, dirfd in os.fwalk(".", dir_fd=top):
            base = where.relative / dirpath
            dirnames[:] = sorted(
                d
                for d in dirnames
                if normalise_name(d) not in GIT_DIR_NAMES
                and not protected_reason(base / d)
                and not ws.refused_reason(base / d)
            )
            for name in sorted(filenames):
                rel = PurePosixPath(os.path.normpath(base / name))
                if args.glob and not fnmatch.fnmatch(name, args.glob):
                    continue
                if protected_reason(rel) or ws.refused_reason(rel):
                    continue
                if ctx.may_read is not None and not ctx.may_read(rel.as_posix()):
                    continue  # a deny rule covers it
                try:
                    fd = Workspace.open_file_at(dirfd, name, str(rel))
                except ToolError:
                    continue  # symlinks and special files are skipped, not followed
                with os.fdopen(fd, "rb") as fh:
                    data = fh.read(MAX_FILE_BYTES + 1)
                if len(data) > MAX_FILE_BYTES or b"\x00" in data[:8192]:
                    continue
                scanned += len(data)
                files += 1
                for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
                    hay = line if args.case_sensitive else line.casefold()
                    if needle in hay:
                        shown = line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS] + "…"
                        hits.append(f"{rel}:{number}: {shown}")
                        if len(hits) >= args.max_results:
                            stopped = f"[truncated results: stopped at {args.max_results} matches]"
                            break
                if stopped:
                    break
                if scanned > MAX_SCANNED_BYTES or files >= MAX_FILES:
                    stopped = (
                        f"[truncated search: stopped after {files} files, {scanned} bytes; "
                        "narrow it with path or glob]"
                    )
                    break
            if stopped:
                break
    body = "\n".join(hits) if hits else f"no match for {args.query!r}"
    if stopped:
        body += "\n" + stopped
    content, cut = truncate_text(body, ctx.output_bytes)
    return ToolOutput(content=content, truncated=cut or bool(stopped))


TOOL = ToolSpec(
    name="search_files",
    description="Search the workspace's text files for a literal string.",
    args_model=Args,
    effect="read",
    run=run,
    main_argument="path",
    pattern="path",
)
