"""Settings of the memory package: capacities and budgets per level."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from memory.store import Level


class LevelTokens(BaseModel):
    """A number of tokens for each memory level."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user: int = Field(ge=32, description="Tokens for the user level.")
    project: int = Field(ge=32, description="Tokens for the project level.")
    session: int = Field(ge=32, description="Tokens for the session level.")

    def of(self, level: Level) -> int:
        """Return the figure for ``level``."""
        value: int = getattr(self, level)
        return value


class MemorySettings(BaseModel):
    """How much memory each level may hold and load.

    ``capacities`` bound the *active topics* of a level (what distillation
    keeps); ``index_budgets`` bound the text of the index files that
    :meth:`memory.service.MemoryService.load_context` puts in the prompt.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    capacities: LevelTokens = Field(
        default=LevelTokens(user=1500, project=1500, session=1000),
        description="Token capacity of the active topics of each level.",
    )
    index_budgets: LevelTokens = Field(
        default=LevelTokens(user=400, project=800, session=600),
        description="Token budget of each level's index text in the prompt.",
    )
    max_import_depth: int = Field(default=3, ge=0, le=3, description="@path import depth.")
    max_file_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Larger memory files are read only this far."
    )
    max_content_chars: int = Field(
        default=20_000, ge=100, description="Largest body a single remember may write."
    )
    distill_max_tokens: int = Field(
        default=1024, ge=64, description="Tokens the model may generate for one distillation."
    )
    distill_entry_chars: int = Field(
        default=600, ge=50, description="Characters of each topic shown to the distilling model."
    )

    @classmethod
    def from_capacities(cls, *, user: int, project: int, session: int) -> MemorySettings:
        """Settings with these capacities and the default budgets (what the app stores)."""
        return cls(capacities=LevelTokens(user=user, project=project, session=session))
