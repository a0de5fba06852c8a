"""The review queue: memory derived from untrusted content waits for the user.

A remember whose source is ``untrusted`` (web pages, tool output) is stored
here, not on disk, so it cannot reach a prompt until the user approves it.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import sqlite_utils
from pydantic import BaseModel, ConfigDict

from memory.errors import MemoryStoreError, ReviewItemNotFoundError
from memory.frontmatter import Provenance
from memory.store import Level, check_level


class ReviewItem(BaseModel):
    """A memory write waiting for the user's decision."""

    model_config = ConfigDict(frozen=True)

    id: int
    created: datetime
    session_id: str | None
    level: Level
    topic: str
    content: str
    source: Provenance


class ReviewQueue:
    """The ``memory_review`` table, limited to one user's and workspace's scopes."""

    def __init__(self, db: sqlite_utils.Database, scopes: dict[Level, str]) -> None:
        self._db = db
        self._scopes = scopes

    def add(
        self, *, level: Level, topic: str, content: str, source: Provenance, session_id: str | None
    ) -> int:
        """Queue a write and return its id.

        Raises:
            MemoryStoreError: The database refused it.
        """
        try:
            with self._db.conn:
                cur = self._db.conn.execute(
                    "INSERT INTO memory_review (created, session_id, level, scope, topic,"
                    " content, source) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        datetime.now(UTC).isoformat(),
                        session_id,
                        level,
                        self._scopes[level],
                        topic,
                        content,
                        source.model_dump_json(),
                    ),
                )
        except sqlite3.Error as e:
            raise MemoryStoreError(f"cannot queue the memory for review: {e}") from e
        assert cur.lastrowid is not None
        return cur.lastrowid

    def pending(self) -> list[ReviewItem]:
        """Items waiting for a decision, oldest first."""
        rows = self._db.conn.execute(
            "SELECT id, created, session_id, level, topic, content, source FROM memory_review"
            f" WHERE status = 'pending' AND scope IN ({', '.join('?' * len(self._scopes))})"
            " ORDER BY id",
            tuple(self._scopes.values()),
        ).fetchall()
        return [self._item(row) for row in rows]

    def get_pending(self, item_id: int) -> ReviewItem:
        """Return a pending item.

        Raises:
            ReviewItemNotFoundError: None pending with that id in these scopes.
        """
        for item in self.pending():
            if item.id == item_id:
                return item
        raise ReviewItemNotFoundError(f"no memory waiting for review with id {item_id}")

    def decide(self, item_id: int, status: str, change_id: int | None = None) -> None:
        """Mark an item approved or rejected (it stays in the table).

        Raises:
            MemoryStoreError: The database refused the update.
        """
        try:
            with self._db.conn:
                self._db.conn.execute(
                    "UPDATE memory_review SET status = ?, decided_at = ?, change_id = ?"
                    " WHERE id = ?",
                    (status, datetime.now(UTC).isoformat(), change_id, item_id),
                )
        except sqlite3.Error as e:
            raise MemoryStoreError(f"cannot record the review decision: {e}") from e

    @staticmethod
    def _item(row: tuple[object, ...]) -> ReviewItem:
        item_id, created, session_id, level, topic, content, source = row
        return ReviewItem(
            id=int(str(item_id)),
            created=datetime.fromisoformat(str(created)),
            session_id=None if session_id is None else str(session_id),
            level=check_level(str(level)),
            topic=str(topic),
            content=str(content),
            source=Provenance.model_validate_json(str(source)),
        )
