"""``edit_file``: replace an exact piece of text in a workspace file."""

from __future__ import annotations

from pydantic import Field, model_validator

from agent.errors import ToolError
from agent.host.tools.base import ArgsModel, ToolContext, ToolOutput, ToolSpec
from agent.host.tools.write_file import MAX_WRITE_BYTES


class Args(ArgsModel):
    """Arguments of ``edit_file``."""

    path: str = Field(description="File to edit, relative to the workspace root.")
    old_text: str = Field(description="The exact text to replace, including whitespace.")
    new_text: str = Field(description="The text to put in its place.")
    replace_all: bool = Field(
        default=False, description="Replace every occurrence instead of requiring exactly one."
    )

    @model_validator(mode="after")
    def _distinct(self) -> Args:
        if not self.old_text:
            raise ValueError("old_text must not be empty")
        if self.old_text == self.new_text:
            raise ValueError("old_text and new_text are the same; nothing to change")
        return self


def run(args: Args, ctx: ToolContext) -> ToolOutput:
    """Replace ``old_text`` by ``new_text``: exactly once, or everywhere with ``replace_all``.

    Raises:
        ToolError: ``old_text`` does not occur, occurs more than once without
            ``replace_all``, the file is not UTF-8 text, or the result is too large.
    """
    ws = ctx.files()
    where = ws.resolve(args.path)
    data, size = ws.read_bytes(where, MAX_WRITE_BYTES + 1)
    if size > MAX_WRITE_BYTES:
        raise ToolError(f"{where} is {size} bytes; edit_file handles at most {MAX_WRITE_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ToolError(f"{where} is not UTF-8 text; not edited") from e
    count = text.count(args.old_text)
    if count == 0:
        raise ToolError(f"old_text not found in {where}; nothing changed")
    if count > 1 and not args.replace_all:
        raise ToolError(
            f"old_text occurs {count} times in {where}; include more context to make it "
            "unique, or set replace_all"
        )
    new = text.replace(args.old_text, args.new_text)
    encoded = new.encode("utf-8")
    if len(encoded) > MAX_WRITE_BYTES:
        raise ToolError(f"the edited {where} would be {len(encoded)} bytes; not written")
    ws.write_atomic(where, encoded, create_dirs=False)
    noun = "occurrence" if count == 1 else "occurrences"
    return ToolOutput(content=f"edited {where}: replaced {count} {noun}", untrusted=False)


TOOL = ToolSpec(
    name="edit_file",
    description="Replace an exact piece of text in a workspace file with new text.",
    args_model=Args,
    effect="write",
    run=run,
    main_argument="path",
    pattern="path",
)
