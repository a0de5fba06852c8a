"""The one way vault/ opens ``keyless.db`` (grants and audit log share it)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils


def open_shared_database(path: Path) -> tuple[sqlite3.Connection, sqlite_utils.Database]:
    """Open (creating its directory) a SQLite file several threads and processes share.

    Autocommit (``isolation_level=None``: callers open their own transactions),
    usable from any thread (callers hold their own lock), WAL with
    ``synchronous=NORMAL``: each commit is atomic and survives an app crash; only
    a power cut can lose the last commits (SQLite's recommended pairing).

    Raises:
        sqlite3.Error: The database cannot be opened.
        OSError: Its directory cannot be created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn, sqlite_utils.Database(conn)
