"""The audit log: an append-only, hash-chained, keyed table in ``keyless.db``.

Every grant, redemption, refusal, permission decision and vault operation is
one row. Each row stores ``hash = sha256(prev_hash + canonical_json(row))``,
where the JSON covers the row's id, time, chain label and every field, so
editing, deleting or reordering rows breaks the chain and :meth:`AuditLog.verify`
names the first bad row. Anyone holding the file can recompute those hashes,
so each row also stores ``mac = HMAC-SHA256(chain key, hash)``: the MAC covers
the running hash, hence the whole history before the row. Rewriting any row
without the key breaks the MAC of every keyed row from there on.

The chain key depends on where the app stands (the row's ``chain`` label):

- ``vault:<data key id>``: the vault is unlocked; the key is HKDF of its data
  key (:meth:`vault.store.Vault.audit_chain_key`), so verifying and appending
  keyed rows needs an unlock.
- ``locked:<boot id>``: a vault exists but is locked; the key is random, made
  when the log is opened and held in memory only. The first write after an
  unlock checks those MACs and appends an ``audit.sealed`` row under the vault
  key, which covers them. After a crash before any unlock they stay in the log,
  hash-chained, reported as "unsealed, written while locked".
- ``install``: no vault yet, but an OS keyring: a per-install key kept there.
- ``unkeyed``: no vault and no keyring: a plain hash chain, which catches
  accidents and careless edits but not someone who recomputes the hashes.
- ``legacy``: rows written before the log was keyed; the first keyed row after
  them covers them.

Where a keyring exists, the last row's ``(id, hash)`` is also kept there after
each append, so a cut tail or an older copy of the database (a rollback) is
reported even when the rows left are self-consistent. SQLite triggers refuse
``UPDATE`` and ``DELETE`` so the app itself cannot rewrite history by mistake.

A write that fails raises :class:`~vault.errors.AuditLogError`: callers must
not go on with the action they meant to record (the agent host stops the
errand).

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
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from vault import _crypto
from vault._sqlite import open_shared_database
from vault.errors import AuditLogError
from vault.keystore import (
    INSTALL_SCOPE,
    KeyStore,
    install_audit_key,
    read_audit_head,
    write_audit_head,
)
from vault.redact import Redactor

__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "AuditLog",
    "ChainCheck",
    "ChainKeySource",
    "ChainStatus",
]

GENESIS_HASH = "0" * 64
LEGACY = "legacy"
UNKEYED = "unkeyed"
INSTALL = "install"
VAULT_PREFIX = "vault:"
LOCKED_PREFIX = "locked:"
SEALED_KIND = "audit.sealed"
_TABLE = "audit_log"
_META = "audit_meta"
_COLUMNS = "id, ts, kind, session_id, tool, decision, reason, details, prev_hash, hash, chain, mac"

ChainStatus = Literal[
    "empty", "keyed", "legacy", "unkeyed", "unsealed", "unverified", "tampered", "rollback"
]


class ChainKeySource(Protocol):
    """What the log needs of the vault (:class:`vault.store.Vault` satisfies it)."""

    @property
    def vault_id(self) -> str:
        """The vault's id in hex (the keyring scope of the log's head)."""
        ...

    def audit_chain_key(self) -> tuple[str, bytearray] | None:
        """``(data key id hex, chain key)``, or None while locked."""
        ...


class AuditEntry(BaseModel):
    """One row of the audit log.

    ``chain`` names the key its ``mac`` was made with (see the module doc);
    ``mac`` is None for ``legacy`` and ``unkeyed`` rows.
    """

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
    chain: str = LEGACY
    mac: str | None = None


class ChainCheck(BaseModel):
    """Result of :meth:`AuditLog.verify`.

    Attributes:
        ok: No tampering, cut tail or rollback was found (the status says how
            much the log can prove).
        n_entries: Rows in the table.
        first_bad_id: Id of the first row that does not verify (for a cut
            tail: the id after the last one left), or None.
        problem: What is wrong with that row, or None.
        head: Hash of the last row.
        status: ``keyed`` (every row is covered by a MAC that verified),
            ``unsealed`` (rows written while the vault was locked, not yet
            covered by a vault-keyed row), ``unverified`` (keyed rows whose key
            is not at hand: unlock the vault), ``unkeyed`` / ``legacy`` (a
            plain hash chain only), ``empty``, ``tampered`` or ``rollback``.
        legacy_through: Last id of the rows written before the log was keyed.
        keyed_through: Last id covered by a MAC that verified (0: none).
        unsealed: Rows written while the vault was locked and not covered yet.
        anchored: The head kept in the keyring was compared.
    """

    model_config = ConfigDict(frozen=True)

    ok: bool
    n_entries: int
    first_bad_id: int | None = None
    problem: str | None = None
    head: str = GENESIS_HASH
    status: ChainStatus = "empty"
    legacy_through: int = 0
    keyed_through: int = 0
    unsealed: int = 0
    anchored: bool = False


def _canonical(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _row_hash(prev_hash: str, payload: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + _canonical(payload)).encode("utf-8")).hexdigest()


def _row_mac(key: bytes | bytearray, digest: str) -> str:
    return _crypto.hmac_sha256(key, digest.encode("ascii")).hex()


def _payload(
    id_: int,
    ts: str,
    kind: str,
    session_id: str | None,
    tool: str | None,
    decision: str | None,
    reason: str | None,
    details: Any,
    chain: str,
) -> dict[str, Any]:
    payload = {
        "id": id_,
        "ts": ts,
        "kind": kind,
        "session_id": session_id,
        "tool": tool,
        "decision": decision,
        "reason": reason,
        "details": details,
    }
    if chain != LEGACY:  # legacy rows were hashed without it
        payload["chain"] = chain
    return payload

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
    """Append-only, hash-chained, keyed audit log. Safe to share between threads."""

    def __init__(
        self,
        db_path: Path | str,
        *,
        hmac_key: bytes | None = None,
        vault: ChainKeySource | None = None,
        keystore: KeyStore | None = None,
        busy_timeout: float = 30.0,
    ) -> None:
        """Open (and create or upgrade if needed) the audit tables.

        Args:
            db_path: The SQLite file (``keyless.db``).
            hmac_key: Key for fingerprints of secret values. When None, a random
                key is created once and kept in the ``audit_meta`` table; pass a
                key kept elsewhere (e.g. in the vault) so that someone holding
                only the database cannot test guesses.
            vault: The vault whose data key keys the chain (see
                :meth:`attach_vault` for one created later).
            keystore: The OS keyring, for the chain head and the per-install
                key; None keeps nothing there.
            busy_timeout: Seconds a write waits for another writer's lock
                before it fails.

        Raises:
            AuditLogError: The database cannot be opened or upgraded.
        """
        self.path = Path(db_path)
        self._lock = threading.Lock()
        self._vault = vault
        self._keystore = keystore
        self._boot_key = bytearray(_crypto.random_bytes(_crypto.KEY_SIZE))
        self._boot_label = LOCKED_PREFIX + secrets.token_hex(8)
        self._install_key: bytearray | None = None
        self._install_tried = False
        try:
            conn, self._db = open_shared_database(self.path)
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
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
                    hash TEXT NOT NULL,
                    chain TEXT NOT NULL DEFAULT '{LEGACY}',
                    mac TEXT
                );
                CREATE INDEX IF NOT EXISTS {_TABLE}_kind ON {_TABLE} (kind, id);
                CREATE TRIGGER IF NOT EXISTS {_TABLE}_no_update BEFORE UPDATE ON {_TABLE}
                BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
                CREATE TRIGGER IF NOT EXISTS {_TABLE}_no_delete BEFORE DELETE ON {_TABLE}
                BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
                CREATE TABLE IF NOT EXISTS {_META} (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                """
            )
            self._upgrade(conn)
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

    @staticmethod
    def _upgrade(conn: sqlite3.Connection) -> None:
        """Add the chain columns to a log from before keying; its rows become ``legacy``."""
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({_TABLE})")}
        if "chain" in columns and "mac" in columns:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if "chain" not in columns:
                conn.execute(
                    f"ALTER TABLE {_TABLE} ADD COLUMN chain TEXT NOT NULL DEFAULT '{LEGACY}'"
                )
            if "mac" not in columns:
                conn.execute(f"ALTER TABLE {_TABLE} ADD COLUMN mac TEXT")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _sql(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db.conn
            except sqlite3.Error as e:
                raise AuditLogError(f"the audit log cannot be written or read: {e}") from e

    def close(self) -> None:
        """Close the connection and forget the in-memory keys."""
        with self._lock:
            self._db.conn.close()
            _crypto.zero(self._boot_key)

    def attach_vault(self, vault: ChainKeySource | None) -> None:
        """Key the chain with this vault from now on (first-run setup created it)."""
        with self._lock:
            self._vault = vault

    @property
    def mode(self) -> str:
        """How the next entry will be keyed: ``vault``, ``locked``, ``install`` or ``unkeyed``."""
        with self._lock:
            label, key = self._writing_chain()
        if key is not None and label.startswith(VAULT_PREFIX):
            _crypto.zero(key)
            return "vault"
        return "locked" if label.startswith(LOCKED_PREFIX) else label

    def fingerprint(self, value: bytes | bytearray | str) -> str:
        """The tag that stands for ``value`` in the log (keyed HMAC-SHA256, 128 bits)."""
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        return "hmac-sha256:" + hmac.new(self._key, data, hashlib.sha256).hexdigest()[:32]

    # ------------------------------------------------------------------ keys

    def _install(self) -> bytearray | None:
        if not self._install_tried and self._keystore is not None:
            self._install_tried = True
            self._install_key = install_audit_key(self._keystore)
        return self._install_key

    def _writing_chain(self) -> tuple[str, bytearray | None]:
        """The label and key for a new row (a vault key is a fresh copy: zero it)."""
        if self._vault is not None:
            found = self._vault.audit_chain_key()
            if found is not None:
                return VAULT_PREFIX + found[0], found[1]
            return self._boot_label, self._boot_key
        install = self._install()
        if install is not None:
            return INSTALL, install
        return UNKEYED, None

    def _head_scope(self) -> bytes:
        return bytes.fromhex(self._vault.vault_id) if self._vault is not None else INSTALL_SCOPE

    # ----------------------------------------------------------------- write

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
        """Append one entry (sealing first the entries written while the vault was locked).

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
            AuditLogError: The database write failed (disk full, database
                locked, read-only or corrupt); nothing is written.
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
        fields = (kind_c, session_c, tool_c, decision_c, reason_c, clean_details)
        with self._sql() as conn:
            label, key = self._writing_chain()
            try:
                entry = self._write(conn, ts, fields, label, key)
            finally:
                if key is not None and label.startswith(VAULT_PREFIX):
                    _crypto.zero(key)
            scope = self._head_scope()
        if self._keystore is not None:
            # After the commit, so the keyring is never ahead of the database;
            # without a keyring the log still works, unanchored.
            write_audit_head(self._keystore, scope, entry.id, entry.hash)
        return entry

    def seal(self) -> int:
        """Cover the entries written while the vault was locked, if it is unlocked now.

        Returns:
            How many entries the new ``audit.sealed`` row covers (0: nothing to do
            or the vault is locked).

        Raises:
            AuditLogError: The database write failed.
        """
        with self._sql() as conn:
            label, key = self._writing_chain()
            try:
                if key is None or not label.startswith(VAULT_PREFIX):
                    return 0
                conn.execute("BEGIN IMMEDIATE")
                try:
                    covered = self._seal_pending(conn, label, key)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            finally:
                if key is not None and label.startswith(VAULT_PREFIX):
                    _crypto.zero(key)
            scope = self._head_scope()
            last = conn.execute(
                f"SELECT id, hash FROM {_TABLE} ORDER BY id DESC LIMIT 1"
            ).fetchone()
        if covered and self._keystore is not None and last is not None:
            write_audit_head(self._keystore, scope, int(last[0]), str(last[1]))
        return covered

    def _write(
        self,
        conn: sqlite3.Connection,
        ts: str,
        fields: tuple[str, str | None, str | None, str | None, str | None, dict[str, Any]],
        label: str,
        key: bytearray | None,
    ) -> AuditEntry:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if label.startswith(VAULT_PREFIX) and key is not None:
                self._seal_pending(conn, label, key)
            entry = self._append(conn, ts, fields, label, key)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return entry

    def _seal_pending(self, conn: sqlite3.Connection, label: str, key: bytearray) -> int:
        """Inside a transaction: append an ``audit.sealed`` row if locked-time rows wait."""
        last = conn.execute(f"SELECT chain FROM {_TABLE} ORDER BY id DESC LIMIT 1").fetchone()
        if last is None or str(last[0]).startswith(VAULT_PREFIX):
            return 0  # every vault-keyed write seals, so nothing waits behind one
        since = conn.execute(
            f"SELECT coalesce(max(id), 0) FROM {_TABLE} WHERE chain LIKE '{VAULT_PREFIX}%'"
        ).fetchone()[0]
        pending = conn.execute(
            f"SELECT id, hash, chain, mac FROM {_TABLE} WHERE id > ? AND chain LIKE ?"
            " ORDER BY id",
            (since, LOCKED_PREFIX + "%"),
        ).fetchall()
        if not pending:
            return 0
        verified, unverifiable, failed = 0, 0, []
        for id_, digest, chain, mac in pending:
            if chain != self._boot_label:
                unverifiable += 1  # written by another process, or before a restart
            elif isinstance(mac, str) and hmac.compare_digest(
                mac, _row_mac(self._boot_key, digest)
            ):
                verified += 1
            else:
                failed.append(id_)
        details = {
            "first_id": pending[0][0],
            "last_id": pending[-1][0],
            "entries": len(pending),
            "verified": verified,
            "unverifiable": unverifiable,
            "mac_failed": failed,
        }
        reason = (
            f"entries {', '.join(map(str, failed))} were changed while the vault was locked"
            if failed
            else "entries written while the vault was locked"
        )
        ts = datetime.now(UTC).isoformat(timespec="microseconds")
        self._append(conn, ts, (SEALED_KIND, None, None, None, reason, details), label, key)
        return len(pending)

    @staticmethod
    def _append(
        conn: sqlite3.Connection,
        ts: str,
        fields: tuple[str, str | None, str | None, str | None, str | None, dict[str, Any]],
        label: str,
        key: bytearray | None,
    ) -> AuditEntry:
        kind, session_id, tool, decision, reason, details = fields
        last = conn.execute(f"SELECT hash FROM {_TABLE} ORDER BY id DESC LIMIT 1").fetchone()
        seq = conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = ?", (_TABLE,)
        ).fetchone()
        new_id = (int(seq[0]) if seq else 0) + 1
        prev = last[0] if last else GENESIS_HASH
        payload = _payload(new_id, ts, kind, session_id, tool, decision, reason, details, label)
        digest = _row_hash(prev, payload)
        mac = _row_mac(key, digest) if key is not None else None
        conn.execute(
            f"INSERT INTO {_TABLE} ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (new_id, ts, kind, session_id, tool, decision, reason, _canonical(details),
             prev, digest, label, mac),
        )
        return AuditEntry(
            id=new_id,
            ts=datetime.fromisoformat(ts),
            kind=kind,
            session_id=session_id,
            tool=tool,
            decision=decision,
            reason=reason,
            details=details,
            prev_hash=prev,
            hash=digest,
            chain=label,
            mac=mac,
        )

    # ------------------------------------------------------------------ read

    @staticmethod
    def _entry(row: tuple[Any, ...]) -> AuditEntry:
        id_, ts, kind, session_id, tool, decision, reason, details, prev_hash, digest = row[:10]
        chain, mac = row[10], row[11]
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
            chain=chain,
            mac=mac,
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
        """Recompute the chain from the first row, check every MAC it can, and the head.

        Detects an edited row (its hash or MAC no longer matches), a deleted,
        inserted or reordered row (the links and ids), a rewritten chain
        (the MAC of the first keyed row at or after the change, when its key is
        at hand), a keyed chain turned back into legacy rows, a deleted last
        row (SQLite's AUTOINCREMENT counter is past the last id) and, with a
        keyring, a cut tail or an older copy of the database (the head kept in
        the keyring is past the log's end or differs from it).

        Raises:
            AuditLogError: The database cannot be read.
        """
        with self._sql() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM {_TABLE} ORDER BY id").fetchall()
            seq_row = conn.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = ?", (_TABLE,)
            ).fetchone()
            keys: dict[str, bytearray] = {self._boot_label: self._boot_key}
            label, key = self._writing_chain()
            vault_locked = self._vault is not None and not label.startswith(VAULT_PREFIX)
            if key is not None and label.startswith(VAULT_PREFIX):
                keys[label] = key
            install = self._install()
            if install is not None:
                keys[INSTALL] = install
            scope = self._head_scope()
        try:
            return self._check(rows, seq_row, keys, vault_locked, scope)
        finally:
            if key is not None and label.startswith(VAULT_PREFIX):
                _crypto.zero(key)

    def _check(
        self,
        rows: list[tuple[Any, ...]],
        seq_row: tuple[Any, ...] | None,
        keys: dict[str, bytearray],
        vault_locked: bool,
        scope: bytes,
    ) -> ChainCheck:
        n = len(rows)

        def bad(id_: int, problem: str, status: ChainStatus = "tampered") -> ChainCheck:
            return ChainCheck(
                ok=False, n_entries=n, first_bad_id=id_, problem=problem, status=status
            )

        prev = GENESIS_HASH
        last_id = keyed_through = legacy_through = 0
        keyed_started = False
        for row in rows:
            id_, ts, kind, session_id, tool, decision, reason, details, prev_hash, digest = row[:10]
            chain, mac = row[10], row[11]
            try:
                parsed = json.loads(details)
            except (TypeError, ValueError):
                return bad(id_, "details not JSON")
            if id_ != last_id + 1:
                return bad(id_, f"rows {last_id + 1} to {id_ - 1} are missing")
            if prev_hash != prev:
                return bad(id_, "chain broken: a row before it was deleted, inserted or edited")
            payload = _payload(id_, ts, kind, session_id, tool, decision, reason, parsed, chain)
            if _row_hash(prev, payload) != digest or _canonical(parsed) != details:
                return bad(id_, "row was edited")
            if chain == LEGACY:
                if keyed_started:
                    return bad(id_, "an unkeyed legacy row after the keyed chain began")
                legacy_through = id_
            else:
                keyed_started = True
                row_key = keys.get(chain)
                if chain != UNKEYED and mac is None:
                    return bad(id_, "a keyed row without its MAC")
                if row_key is not None:
                    if not hmac.compare_digest(str(mac), _row_mac(row_key, digest)):
                        return bad(
                            id_, "MAC does not verify: rewritten by someone without the key"
                        )
                    if not chain.startswith(LOCKED_PREFIX):
                        # A per-boot MAC only shows the row is unchanged since this
                        # process wrote it; the row stays unsealed.
                        keyed_through = id_
            prev = digest
            last_id = id_
        anchored = False
        if self._keystore is not None:
            head = read_audit_head(self._keystore, scope)
            if head is not None:
                anchored = True
                head_id, head_hash = head
                if head_id > last_id:
                    return bad(
                        last_id + 1,
                        f"the keyring's head is entry {head_id} but the log ends at {last_id}: "
                        "entries were removed or an older copy of the database was restored",
                        "rollback",
                    )
                if not hmac.compare_digest(rows[head_id - 1][9], head_hash):
                    return bad(head_id, "the entry differs from the head kept in the keyring")
        if seq_row is not None and int(seq_row[0]) != last_id:
            return bad(last_id + 1, "rows after the last one were deleted")
        tail = [str(r[10]) for r in rows if r[0] > keyed_through]
        unsealed = sum(1 for c in tail if c.startswith(LOCKED_PREFIX))
        status: ChainStatus
        if n == 0:
            status = "empty"
        elif not tail:
            status = "keyed"
        elif unsealed:
            status = "unsealed"
        elif vault_locked and any(c.startswith(VAULT_PREFIX) for c in tail):
            status = "unverified"
        elif all(c == LEGACY for c in tail):
            status = "legacy"
        elif UNKEYED in tail:
            status = "unkeyed"
        else:
            status = "unverified"
        return ChainCheck(
            ok=True,
            n_entries=n,
            head=prev,
            status=status,
            legacy_through=legacy_through,
            keyed_through=keyed_through,
            unsealed=unsealed,
            anchored=anchored,
        )
