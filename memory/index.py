"""Full-text search over every level's memory files, archived included (SQLite FTS5).

The ``memory_docs`` table mirrors the files (one row per file, keyed by
path) and an FTS5 table kept in step by triggers indexes title and body.
Rows carry a *scope* (the user dir, the workspace, or the workspace plus the
session id) so a database shared by several workspaces only answers for the
current one. The service updates rows for every file it writes; files edited
by hand are picked up by :meth:`SearchIndex.refresh`, which compares each
file's mtime and size with the row's, and which a search runs whenever a
directory's mtime changed (atomic saves, new and deleted files).
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import sqlite_utils
from pydantic import BaseModel, ConfigDict

from memory.errors import MemoryStoreError
from memory.store import (
    LEVELS,
    Level,
    MemoryLayout,
    check_level,
    decode,
    list_topic_names,
    topic_from_text,
    without_index_block,
)

_DOCS = "memory_docs"
_WORD = re.compile(r"\w+", re.UNICODE)


class Hit(BaseModel):
    """One search result."""

    model_config = ConfigDict(frozen=True)

    level: Level
    path: str
    name: str
    title: str
    snippet: str
    archived: bool


class SearchIndex:
    """The FTS5 index of one layout's memory files."""

    def __init__(self, db: sqlite_utils.Database, layout: MemoryLayout, *, max_bytes: int) -> None:
        self._db = db
        self._layout = layout
        self._max_bytes = max_bytes
        self._dir_signature: tuple[tuple[str, int], ...] | None = None
        try:
            table = db.table(_DOCS)
            if not table.exists():
                table.create(
                    {
                        "path": str,
                        "scope": str,
                        "level": str,
                        "name": str,
                        "kind": str,
                        "title": str,
                        "body": str,
                        "status": str,
                        "mtime_ns": int,
                        "size": int,
                    },
                    pk="path",
                )
                table.create_index(["scope"])
                table.enable_fts(["title", "body"], create_triggers=True, tokenize="porter")
        except sqlite3.Error as e:
            raise MemoryStoreError(f"cannot create the memory search index: {e}") from e

    def _scopes(self) -> dict[str, Level]:
        return {self._layout.scope(level): level for level in LEVELS}

    def _files(self) -> dict[Path, tuple[Level, str, str]]:
        """Every file to index: path -> (level, topic name or '', kind)."""
        files: dict[Path, tuple[Level, str, str]] = {}
        for level in LEVELS:
            lay = self._layout.level(level)
            for path in lay.load_files:
                files[path] = (level, "", "index")
            for name in list_topic_names(lay):
                files[lay.topics_dir / f"{name}.md"] = (level, name, "topic")
        return files

    def _signature(self) -> tuple[tuple[str, int], ...]:
        entries = []
        for level in LEVELS:
            lay = self._layout.level(level)
            for path in (lay.topics_dir, *lay.load_files, lay.index_file.parent):
                try:
                    entries.append((str(path), path.stat().st_mtime_ns))
                except OSError:
                    entries.append((str(path), -1))
        return tuple(entries)

    def refresh(self, *, force: bool = False) -> int:
        """Bring the index in line with the files; return how many rows changed.

        Without ``force`` it does nothing when no directory or index file
        changed since the last refresh.

        Raises:
            MemoryStoreError: The database refused an update.
        """
        signature = self._signature()
        if not force and signature == self._dir_signature:
            return 0
        scopes = self._scopes()
        marks = ", ".join("?" * len(scopes))
        known = {
            Path(p): (m, s)
            for p, m, s in self._db.conn.execute(
                f"SELECT path, mtime_ns, size FROM {_DOCS} WHERE scope IN ({marks})",
                tuple(scopes),
            )
        }
        files = self._files()
        stale: list[tuple[Path, Level, str, str]] = []
        for path, (level, name, kind) in files.items():
            try:
                st = path.stat()
            except OSError:
                continue
            if known.get(path) != (st.st_mtime_ns, st.st_size):
                stale.append((path, level, name, kind))
        if stale:
            self.update_files(stale)
        gone = [str(p) for p in known if p not in files or not p.exists()]
        if gone:
            self._delete(gone)
        changed = len(stale) + len(gone)
        self._dir_signature = signature
        return changed

    def update_file(self, path: Path, *, level: Level, name: str, kind: str) -> None:
        """Index (or drop, if it no longer exists) one file.

        Raises:
            MemoryStoreError: The file cannot be read or the database refused the update.
        """
        self.update_files([(path, level, name, kind)])

    def update_files(self, files: list[tuple[Path, Level, str, str]]) -> None:
        """Index (or drop) several files in one transaction: (path, level, name, kind).

        Raises:
            MemoryStoreError: A file cannot be read or the database refused the update.
        """
        rows: list[tuple[object, ...]] = []
        gone: list[str] = []
        for path, level, name, kind in files:
            try:
                st = path.stat()
                data = path.read_bytes()[: self._max_bytes]
            except FileNotFoundError:
                gone.append(str(path))
                continue
            except OSError as e:
                raise MemoryStoreError(f"cannot index memory file {path}: {e.strerror}") from e
            text = decode(data)
            if kind == "topic":
                topic = topic_from_text(level, name, path, text)
                title, body, status = topic.meta.title, topic.body, topic.meta.status
            else:
                # topic lines are indexed with their topics; keep the person's own text
                title, body, status = path.name, without_index_block(text), "active"
            rows.append(
                (str(path), self._layout.scope(level), level, name, kind, title, body, status,
                 st.st_mtime_ns, st.st_size)
            )
        try:
            with self._db.conn:
                self._db.conn.executemany(
                    f"INSERT INTO {_DOCS} (path, scope, level, name, kind, title, body, status,"
                    " mtime_ns, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(path) DO UPDATE SET scope = excluded.scope,"
                    " level = excluded.level, name = excluded.name, kind = excluded.kind,"
                    " title = excluded.title, body = excluded.body, status = excluded.status,"
                    " mtime_ns = excluded.mtime_ns, size = excluded.size",
                    rows,
                )
                self._db.conn.executemany(
                    f"DELETE FROM {_DOCS} WHERE path = ?", [(p,) for p in gone]
                )
        except sqlite3.Error as e:
            raise MemoryStoreError(f"cannot update the memory search index: {e}") from e

    def _delete(self, paths: list[str]) -> None:
        try:
            with self._db.conn:
                self._db.conn.executemany(
                    f"DELETE FROM {_DOCS} WHERE path = ?", [(p,) for p in paths]
                )
        except sqlite3.Error as e:
            raise MemoryStoreError(f"cannot update the memory search index: {e}") from e

    def search(self, query: str, *, limit: int = 5) -> list[Hit]:
        """Search every level, archived topics included (ranked after active ones).

        The query is taken as plain words: entries holding all of them come
        first, then (when those are fewer than ``limit``) entries holding any
        of them. FTS syntax in the query has no effect.

        Raises:
            MemoryStoreError: The database failed.
        """
        words = ['"' + w.replace('"', "") + '"' for w in _WORD.findall(query)[:32]]
        if not words or limit <= 0:
            return []
        # Common words match most entries and ranking every match is what costs;
        # the AND query is narrow and usually enough.
        rows = self._query(" AND ".join(words), limit * 3)
        if len(rows) < limit and len(words) > 1:
            seen = {row[1] for row in rows}
            rows += [r for r in self._query(" OR ".join(words), limit * 3) if r[1] not in seen]
        # among the best matches, active topics come before archived ones (a stable sort)
        rows.sort(key=lambda row: row[4] == "archived")
        return [
            Hit(
                level=check_level(str(level)),
                path=str(path),
                name=str(name),
                title=str(title),
                snippet=str(snippet),
                archived=status == "archived",
            )
            for level, path, name, title, status, snippet in rows[:limit]
        ]

    def _query(self, match: str, limit: int) -> list[tuple[object, ...]]:
        scopes = self._scopes()
        marks = ", ".join("?" * len(scopes))
        try:
            return self._db.conn.execute(
                f"SELECT d.level, d.path, d.name, d.title, d.status,"
                f" snippet({_DOCS}_fts, 1, '[', ']', '…', 16)"
                f" FROM {_DOCS}_fts JOIN {_DOCS} d ON d.rowid = {_DOCS}_fts.rowid"
                f" WHERE {_DOCS}_fts MATCH ? AND d.scope IN ({marks})"
                f" ORDER BY rank LIMIT ?",
                (match, *scopes, limit),
            ).fetchall()
        except sqlite3.Error as e:
            raise MemoryStoreError(f"memory search failed: {e}") from e
