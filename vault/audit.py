"""The audit log: an append-only, hash-chained table in ``keyless.db``.

Every grant, redemption, refusal, permission decision and vault operation is
one row. Each row stores ``hash = sha256(prev_hash + canonical_json(row))``,
where the JSON covers the row's id, time and every field, so editing, deleting
or reordering rows breaks the chain and :meth:`AuditLog.verify` names the first
bad row. SQLite triggers refuse ``UPDATE`` and ``DELETE`` so the app itself
cannot rewrite history by mistake; someone with the file can, and the chain
shows it.

Secret values are never stored: :meth:`AuditLog.record` replaces every form of
the values it is given (see :mod:`vault.redact`) by a keyed fingerprint
``hmac-sha256:<32 hex>``, so a known value can still be checked against the
log with :meth:`AuditLog.fingerprint`, as Vault's audit devices do.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from vault._sqlite import open_shared_database
from vault.errors import AuditLogError
from vault.redact import Redactor

__all__ = ["GENESIS_HASH", "AuditEntry", "AuditLog", "ChainCheck"]

GENESIS_HASH = "0" * 64
_TABLE = "audit_log"
_META = "audit_meta"
_COLUMNS = "id, ts, kind, session_id, tool, decision, reason, details, prev_hash, hash"


class AuditEntry(BaseModel):
    """One row of the audit log."""

    model_config = ConfigDict(frozen=True)

    id: int
    ts: datetime
    kind: str
    session_id: str | None
    tool: str | None
    decision: str | None
    reason: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


class ChainCheck(BaseModel):
    """Result of :meth:`AuditLog.verify`.

    Attributes:
        ok: The whole chain verifies.
        n_entries: Rows in the table.
        first_bad_id: Id of the first row that does not verify (for a
            deleted last row: the id after the last one left), or None.
        problem: What is wrong with that row, or None.
        head: Hash of the last row (keep it elsewhere to detect a cut tail).
    """

    model_config = ConfigDict(frozen=True)

    ok: bool
    n_entries: int
    first_bad_id: int | None = None
    problem: str | None = None
    head: str = GENESIS_HASH


def _canonical(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _row_hash(prev_hash: str, payload: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + _canonical(payload)).encode("utf-8")).hexdigest()


def _payload(
    id_: int,
    ts: str,
    kind: str,
    session_id: str | None,
    tool: str | None,
    decision: str | None,
    reason: str | None,
    details: Any,
) -> dict[str, Any]:
    return {
        "id": id_,
        "ts": ts,
        "kind": kind,
        "session_id": session_id,
        "tool": tool,
        "decision": decision,
        "reason": reason,
        "details": details,
    }


def _redact_tree(value: Any, redactor: Redactor, path: str = "details") -> Any:
    if isinstance(value, str):
        return redactor.redact(value)[0]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"audit {path}: keys must be strings, got {type(key).__name__}")
            out[redactor.redact(key)[0]] = _redact_tree(item, redactor, f"{path}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_redact_tree(item, redactor, f"{path}[]") for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    raise TypeError(f"audit {path}: {type(value).__name__} is not JSON data")


class AuditLog:
    """Append-only, hash-chained audit log. Safe to share between threads."""

    def __init__(self, db_path: Path | str, *, hmac_key: bytes | None = None) -> None:
        """Open (and create if needed) the audit tables.

        Args:
            db_path: The SQLite file (``keyless.db``).
            hmac_key: Key for fingerprints of secret values. When None, a random
                key is created once and kept in the ``audit_meta`` table; pass a
                key kept elsewhere (e.g. in the vault) so that someone holding
                only the database cannot test guesses.

        Raises:
            AuditLogError: The database cannot be opened.
        """
        self.path = Path(db_path)
        self._lock = threading.Lock()
        try:
            conn, self._db = open_shared_database(self.path)
            conn.executescript(
                f"""
                CREATE TABLE IF NOT EXISTS {_TABLE} (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    ts TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    session_id TEXT,
                    tool TEXT,
                    decision TEXT,
                    reason TEXT,
                    details TEXT NOT NULL,
                    prev_hash TEXT NOT NULL,
                    hash TEXT NOT NULL
                );
                CREATE INDEX IF NOT EXISTS {_TABLE}_kind ON {_TABLE} (kind, id);
                CREATE TRIGGER IF NOT EXISTS {_TABLE}_no_update BEFORE UPDATE ON {_TABLE}
                BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
                CREATE TRIGGER IF NOT EXISTS {_TABLE}_no_delete BEFORE DELETE ON {_TABLE}
                BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
                CREATE TABLE IF NOT EXISTS {_META} (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                """
            )
            if hmac_key is None:
                conn.execute(
                    f"INSERT OR IGNORE INTO {_META} (key, value) VALUES ('hmac_key', ?)",
                    (secrets.token_hex(32),),
                )
                row = conn.execute(f"SELECT value FROM {_META} WHERE key = 'hmac_key'").fetchone()
                hmac_key = bytes.fromhex(row[0])
        except (sqlite3.Error, OSError, ValueError) as e:
            raise AuditLogError(f"cannot open the audit log {self.path}: {e}") from e
        if len(hmac_key) < 16:
            raise ValueError("the audit HMAC key must be at least 16 bytes")
        self._key = bytes(hmac_key)

    @contextmanager
    def _sql(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db.conn
            except sqlite3.Error as e:
                raise AuditLogError(f"audit log database error: {e}") from e

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.conn.close()

    def fingerprint(self, value: bytes | bytearray | str) -> str:
        """The tag that stands for ``value`` in the log (keyed HMAC-SHA256, 128 bits)."""
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        return "hmac-sha256:" + hmac.new(self._key, data, hashlib.sha256).hexdigest()[:32]

    def record(
        self,
        kind: str,
        *,
        session_id: str | None = None,
        tool: str | None = None,
        decision: str | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        secret_values: Iterable[bytes | bytearray | str] = (),
        now: datetime | None = None,
    ) -> AuditEntry:
        """Append one entry.

        Every form of each value in ``secret_values`` (raw, base64, hex,
        URL-encoded) is replaced by ``[REDACTED:<fingerprint>]`` in every text
        field and in ``details``, keys included, before anything is written.

        Args:
            kind: What happened (``grant``, ``redeem``, ``refuse``, ``revoke``,
                ``request``, ``decision``, ``vault.add``, ...).
            session_id: Session concerned.
            tool: Tool concerned.
            decision: Permission decision (``allow``, ``deny``, ...).
            reason: Why (e.g. the failed scope of a refusal).
            details: JSON data (str keys; str, numbers, bools, None, lists, dicts).
            secret_values: Values that must not reach the log.
            now: Entry time (timezone-aware); defaults to the current time.

        Returns:
            The stored entry.

        Raises:
            TypeError: ``details`` is not JSON data.
            ValueError: ``kind`` is empty or ``now`` is naive.
            RedactionError: The values could not be redacted; nothing is written.
            AuditLogError: The database write failed.
        """
        if not kind:
            raise ValueError("an audit entry needs a kind")
        at = now or datetime.now(UTC)
        if at.tzinfo is None:
            raise ValueError("audit timestamps must be timezone-aware")
        ts = at.astimezone(UTC).isoformat(timespec="microseconds")
        values = list(secret_values)
        redactor = Redactor([(self.fingerprint(v), v) for v in values if len(v) > 0])
        kind_c = redactor.redact(kind)[0]
        session_c, tool_c, decision_c, reason_c = (
            None if f is None else redactor.redact(f)[0]
            for f in (session_id, tool, decision, reason)
        )
        clean_details = _redact_tree(dict(details or {}), redactor)
        details_json = _canonical(clean_details)
        with self._sql() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                last = conn.execute(
                    f"SELECT hash FROM {_TABLE} ORDER BY id DESC LIMIT 1"
                ).fetchone()
                seq = conn.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = ?", (_TABLE,)
                ).fetchone()
                new_id = (int(seq[0]) if seq else 0) + 1
                prev = last[0] if last else GENESIS_HASH
                payload = _payload(
                    new_id, ts, kind_c, session_c, tool_c, decision_c, reason_c, clean_details
                )
                digest = _row_hash(prev, payload)
                conn.execute(
                    f"INSERT INTO {_TABLE} ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (new_id, ts, kind_c, session_c, tool_c, decision_c, reason_c,
                     details_json, prev, digest),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return AuditEntry(
            id=new_id,
            ts=datetime.fromisoformat(ts),
            kind=kind_c,
            session_id=session_c,
            tool=tool_c,
            decision=decision_c,
            reason=reason_c,
            details=clean_details,
            prev_hash=prev,
            hash=digest,
        )

    @staticmethod
    def _entry(row: tuple[Any, ...]) -> AuditEntry:
        id_, ts, kind, session_id, tool, decision, reason, details, prev_hash, digest = row
        return AuditEntry(
            id=id_,
            ts=datetime.fromisoformat(ts),
            kind=kind,
            session_id=session_id,
            tool=tool,
            decision=decision,
            reason=reason,
            details=json.loads(details),
            prev_hash=prev_hash,
            hash=digest,
        )

    def entries(self, kind: str | None = None, limit: int = 500) -> list[AuditEntry]:
        """The most recent entries, newest first.

        Args:
            kind: Only entries of this kind.
            limit: At most this many.
        """
        if limit < 0:
            raise ValueError("limit must be >= 0")
        where, params = ("WHERE kind = ?", [kind]) if kind is not None else ("", [])
        with self._sql() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM {_TABLE} {where} ORDER BY id DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [self._entry(r) for r in rows]

    def verify(self) -> ChainCheck:
        """Recompute the chain from the first row.

        Detects an edited row (its hash no longer matches), a deleted row (the
        next row's ``prev_hash`` no longer matches), reordered rows (ids are
        hashed) and a deleted last row (SQLite's AUTOINCREMENT counter is past
        the last id). Someone who rewrites the whole chain and the counter is
        not caught; compare :attr:`ChainCheck.head` with a copy kept elsewhere.
        """
        with self._sql() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM {_TABLE} ORDER BY id").fetchall()
            seq_row = conn.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = ?", (_TABLE,)
            ).fetchone()
        prev = GENESIS_HASH
        last_id = 0
        for row in rows:
            id_, ts, kind, session_id, tool, decision, reason, details, prev_hash, digest = row
            try:
                parsed = json.loads(details)
            except (TypeError, ValueError):
                return ChainCheck(
                    ok=False, n_entries=len(rows), first_bad_id=id_, problem="details not JSON"
                )
            if id_ != last_id + 1:
                return ChainCheck(
                    ok=False,
                    n_entries=len(rows),
                    first_bad_id=id_,
                    problem=f"rows {last_id + 1} to {id_ - 1} are missing",
                )
            if prev_hash != prev:
                return ChainCheck(
                    ok=False,
                    n_entries=len(rows),
                    first_bad_id=id_,
                    problem="chain broken: a row before it was deleted, inserted or edited",
                )
            payload = _payload(id_, ts, kind, session_id, tool, decision, reason, parsed)
            if _row_hash(prev, payload) != digest or _canonical(parsed) != details:
                return ChainCheck(
                    ok=False, n_entries=len(rows), first_bad_id=id_, problem="row was edited"
                )
            prev = digest
            last_id = id_
        if seq_row is not None and int(seq_row[0]) != last_id:
            return ChainCheck(
                ok=False,
                n_entries=len(rows),
                first_bad_id=last_id + 1,
                problem="rows after the last one were deleted",
            )
        return ChainCheck(ok=True, n_entries=len(rows), head=prev)
