"""The memory tables in the shared ``keyless.db``.

The database is shared with the vault's audit log and the agent's rules, so
every table here is prefixed ``memory_``. One connection per service, usable
from any thread: the service serialises calls with its own lock.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

from memory.errors import MemoryStoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS memory_changes (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    op TEXT NOT NULL,
    level TEXT NOT NULL,
    name TEXT NOT NULL,
    summary TEXT NOT NULL,
    session_id TEXT,
    source TEXT,
    undo_of INTEGER,
    undone_by INTEGER
);
CREATE TABLE IF NOT EXISTS memory_change_files (
    change_id INTEGER NOT NULL REFERENCES memory_changes(id),
    seq INTEGER NOT NULL,
    path TEXT NOT NULL,
    before BLOB,
    after BLOB,
    diff TEXT NOT NULL,
    PRIMARY KEY (change_id, seq)
);
CREATE TABLE IF NOT EXISTS memory_review (
    id INTEGER PRIMARY KEY,
    created TEXT NOT NULL,
    session_id TEXT,
    level TEXT NOT NULL,
    scope TEXT NOT NULL,
    topic TEXT NOT NULL,
    content TEXT NOT NULL,
    source TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    decided_at TEXT,
    change_id INTEGER
);
CREATE TABLE IF NOT EXISTS memory_usage (
    path TEXT PRIMARY KEY,
    uses INTEGER NOT NULL DEFAULT 0,
    last_used TEXT
);
"""


def open_database(db_path: Path) -> sqlite_utils.Database:
    """Open (creating if needed) the database and the memory tables.

    Raises:
        MemoryStoreError: The file cannot be opened or is not a SQLite database.
    """
    try:
        Path(db_path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(str(db_path), check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA busy_timeout = 10000")
        # Same journal settings as the vault's tables in this file: WAL keeps
        # readers and writers of the shared database from blocking each other,
        # and NORMAL sync in WAL mode never corrupts, it may only lose the last
        # commits on power loss (history rows; the memory files are fsynced).
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(_SCHEMA)
        conn.commit()
    except (sqlite3.Error, OSError) as e:
        raise MemoryStoreError(f"cannot open the memory database {db_path}: {e}") from e
    return sqlite_utils.Database(conn)
