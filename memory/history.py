"""History of memory changes: every write recorded with its diff, undoable.

A :class:`Change` groups the file edits of one operation (a topic file and
its index line, or a whole distillation). Each edit stores the exact bytes
before and after, so undo restores the files byte for byte; it refuses when a
file has changed since (someone edited it by hand), naming the file.
"""

from __future__ import annotations

import difflib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils
from pydantic import BaseModel, ConfigDict, Field

from memory.errors import InvalidMemoryError, MemoryStoreError, UndoConflictError
from memory.frontmatter import Provenance
from memory.store import atomic_write, decode, read_bytes, remove_file


@dataclass(frozen=True)
class FileEdit:
    """One file's bytes before and after a change (None: did not exist)."""

    path: Path
    before: bytes | None
    after: bytes | None

    def diff(self) -> str:
        """A unified diff of the edit."""
        before = decode(self.before).splitlines(keepends=True) if self.before is not None else []
        after = decode(self.after).splitlines(keepends=True) if self.after is not None else []
        name = str(self.path)
        return "".join(
            difflib.unified_diff(
                before,
                after,
                fromfile="/dev/null" if self.before is None else f"a{name}",
                tofile="/dev/null" if self.after is None else f"b{name}",
            )
        )


class Change(BaseModel):
    """One recorded change to memory."""

    model_config = ConfigDict(frozen=True)

    id: int | None = Field(description="History id; None when nothing was written yet.")
    at: datetime
    op: str = Field(description="remember, forget, restore, distill, approve or undo.")
    level: str
    name: str = Field(description="Topic name, or '' for a whole-level operation.")
    summary: str
    session_id: str | None = None
    source: Provenance | None = None
    paths: list[str] = Field(default_factory=list)
    diff: str = ""
    undo_of: int | None = None
    undone_by: int | None = None
    review_id: int | None = Field(
        default=None, description="Set when the write waits in the review queue instead."
    )

    @property
    def pending_review(self) -> bool:
        """Whether the change was queued for review rather than applied."""
        return self.review_id is not None and self.id is None


class History:
    """The ``memory_changes`` tables."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self._db = db

    def record(
        self,
        *,
        op: str,
        level: str,
        name: str,
        summary: str,
        session_id: str | None,
        source: Provenance | None,
        edits: Sequence[FileEdit],
        undo_of: int | None = None,
    ) -> Change:
        """Store a change and return it with its id.

        Raises:
            MemoryStoreError: The database refused the write.
        """
        at = datetime.now(UTC)
        edits = [e for e in edits if e.before != e.after]
        conn = self._db.conn
        try:
            with conn:
                cur = conn.execute(
                    "INSERT INTO memory_changes (at, op, level, name, summary, session_id,"
                    " source, undo_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        at.isoformat(),
                        op,
                        level,
                        name,
                        summary,
                        session_id,
                        source.model_dump_json() if source else None,
                        undo_of,
                    ),
                )
                change_id = cur.lastrowid
                conn.executemany(
                    "INSERT INTO memory_change_files (change_id, seq, path, before, after, diff)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (change_id, i, str(e.path), e.before, e.after, e.diff())
                        for i, e in enumerate(edits)
                    ],
                )
                if undo_of is not None:
                    conn.execute(
                        "UPDATE memory_changes SET undone_by = ? WHERE id = ?",
                        (change_id, undo_of),
                    )
        except sqlite3.Error as e:
            raise MemoryStoreError(f"cannot record the memory change: {e}") from e
        assert change_id is not None
        return self.get(change_id)

    def get(self, change_id: int) -> Change:
        """Return one change with its diff.

        Raises:
            InvalidMemoryError: No change has that id.
        """
        row = self._db.conn.execute(
            "SELECT id, at, op, level, name, summary, session_id, source, undo_of, undone_by"
            " FROM memory_changes WHERE id = ?",
            (change_id,),
        ).fetchone()
        if row is None:
            raise InvalidMemoryError(f"no memory change with id {change_id}")
        return self._change(row)

    def recent(self, limit: int = 50) -> list[Change]:
        """The latest changes, newest first."""
        rows = self._db.conn.execute(
            "SELECT id, at, op, level, name, summary, session_id, source, undo_of, undone_by"
            " FROM memory_changes ORDER BY id DESC LIMIT ?",
            (max(0, limit),),
        ).fetchall()
        return [self._change(row) for row in rows]

    def edits(self, change_id: int) -> list[FileEdit]:
        """The file edits of a change, in the order they were made."""
        rows = self._db.conn.execute(
            "SELECT path, before, after FROM memory_change_files WHERE change_id = ? ORDER BY seq",
            (change_id,),
        ).fetchall()
        return [FileEdit(Path(p), _blob(b), _blob(a)) for p, b, a in rows]

    def _change(self, row: tuple[object, ...]) -> Change:
        change_id, at, op, level, name, summary, session_id, source, undo_of, undone_by = row
        files = self._db.conn.execute(
            "SELECT path, diff FROM memory_change_files WHERE change_id = ? ORDER BY seq",
            (change_id,),
        ).fetchall()
        return Change(
            id=int(str(change_id)),
            at=datetime.fromisoformat(str(at)),
            op=str(op),
            level=str(level),
            name=str(name),
            summary=str(summary),
            session_id=None if session_id is None else str(session_id),
            source=None if source is None else Provenance.model_validate_json(str(source)),
            paths=[str(p) for p, _ in files],
            diff="".join(str(d) for _, d in files),
            undo_of=None if undo_of is None else int(str(undo_of)),
            undone_by=None if undone_by is None else int(str(undone_by)),
        )

    def undo_edits(self, change_id: int) -> list[FileEdit]:
        """Put back the bytes a change replaced and return the edits made.

        Every file is checked before any is touched, so a conflict changes nothing.

        Raises:
            InvalidMemoryError: No such change, or it was already undone.
            UndoConflictError: A file differs from what the change left (edited since).
            MemoryStoreError: A file could not be written.
        """
        change = self.get(change_id)
        if change.undone_by is not None:
            raise InvalidMemoryError(
                f"memory change {change_id} was already undone by change {change.undone_by}"
            )
        edits = self.edits(change_id)
        for edit in edits:
            if read_bytes(edit.path) != edit.after:
                raise UndoConflictError(
                    f"cannot undo change {change_id}: {edit.path} has changed since; "
                    "undo the later changes first or edit the file by hand"
                )
        done: list[FileEdit] = []
        for edit in reversed(edits):
            if edit.before is None:
                remove_file(edit.path)
            else:
                atomic_write(edit.path, edit.before)
            done.append(FileEdit(edit.path, edit.after, edit.before))
        return done


def _blob(value: object) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    return str(value).encode()
