"""``finish``: end the errand with a final answer."""

from __future__ import annotations

from pydantic import Field

from agent.host.tools.base import ArgsModel, ToolContext, ToolOutput, ToolSpec


class Args(ArgsModel):
    """Arguments of ``finish``."""

    answer: str = Field(description="The final answer for the user.")


def run(args: Args, ctx: ToolContext) -> ToolOutput:
    """Return the answer, flagged final."""
    del ctx
    return ToolOutput(content=args.answer, untrusted=False, final=True)


TOOL = ToolSpec(
    name="finish",
    description="Finish the errand and give the user the final answer.",
    args_model=Args,
    effect="final",
    run=run,
    main_argument=None,
)
