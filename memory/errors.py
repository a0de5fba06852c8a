"""Errors raised by the memory package.

Every failure that leaves ``memory/`` derives from :class:`MemoryErrorBase`.
The team contract also names the base ``memory.errors.MemoryError``; that name
is provided as an alias, but importing it unqualified shadows Python's builtin
``MemoryError`` (out of memory), so code in this repository should catch
``MemoryErrorBase`` or use ``errors.MemoryError`` through the module.
Foreign exceptions (OS, SQLite, YAML) are converted at the boundary with
``raise ... from e``.
"""

from __future__ import annotations

from collections.abc import Sequence


class MemoryErrorBase(Exception):
    """Base class of every error raised by the memory package."""


MemoryError = MemoryErrorBase  # noqa: A001 - the contract's name; see the module docstring


class MemoryStoreError(MemoryErrorBase):
    """A memory file or the memory database could not be read or written.

    When raised from a write, the files on disk are the ones from before it.
    """


class InvalidMemoryError(MemoryErrorBase):
    """The caller passed something the store refuses: a bad level, topic name or content."""


class TopicNotFoundError(InvalidMemoryError):
    """No topic of that name exists at that level."""


class SecretInMemoryError(MemoryErrorBase):
    """A write was refused because its text contains vault secrets or canaries.

    Attributes:
        names: The *names* of the secrets found (never their values).
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names: tuple[str, ...] = tuple(sorted(set(names)))
        super().__init__(
            "memory write refused: the text contains the vault secret(s) "
            + ", ".join(self.names)
        )


class SecretScanError(MemoryErrorBase):
    """The secret scan could not run (e.g. the vault is locked), so nothing was written."""


class UndoConflictError(MemoryErrorBase):
    """A change cannot be undone because a file it touched has changed since."""


class ReviewItemNotFoundError(InvalidMemoryError):
    """No pending review item has that id."""
