"""The audit log: append-only, hash-chained, never holding a secret value."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vault._crypto import Argon2Params
from vault.audit import GENESIS_HASH, AuditLog
from vault.errors import VaultError
from vault.keystore import NoKeyring
from vault.redact import secret_forms
from vault.store import Vault

NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
SECRET = b"xoxb-1234567890-abcdefghijklmnop"


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "keyless.db")


def fill(log: AuditLog, n: int = 5) -> None:
    for i in range(n):
        log.record(
            "decision",
            session_id="s1",
            tool="shell",
            decision="allow" if i % 2 else "deny",
            reason=f"rule {i}",
            details={"i": i, "args": ["ls", "-l"], "nested": {"ok": True, "x": None}},
            now=NOW + timedelta(seconds=i),
        )


def raw(path: Path) -> sqlite3.Connection:
    """A connection as an attacker with the file has it: triggers dropped."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("DROP TRIGGER audit_log_no_delete")
    return conn


def test_record_and_entries(log: AuditLog) -> None:
    entry = log.record("grant", session_id="s1", details={"handle": "cap_x"}, now=NOW)
    assert entry.id == 1 and entry.prev_hash == GENESIS_HASH and len(entry.hash) == 64
    fill(log)
    entries = log.entries()
    assert [e.id for e in entries] == [6, 5, 4, 3, 2, 1]  # newest first
    assert entries[-1] == entry
    assert [e.id for e in log.entries("grant")] == [1]
    assert len(log.entries(limit=2)) == 2
    assert entries[0].details == {"i": 4, "args": ["ls", "-l"], "nested": {"ok": True, "x": None}}
    assert entries[0].ts == NOW + timedelta(seconds=4)
    for newer, older in zip(entries, entries[1:], strict=False):
        assert newer.prev_hash == older.hash
    check = log.verify()
    assert check.ok and check.n_entries == 6 and check.first_bad_id is None
    assert check.head == entries[0].hash


def test_empty_log_verifies(log: AuditLog) -> None:
    check = log.verify()
    assert check.ok and check.n_entries == 0 and check.head == GENESIS_HASH


def test_app_cannot_update_or_delete(log: AuditLog, tmp_path: Path) -> None:
    fill(log, 2)
    conn = sqlite3.connect(tmp_path / "keyless.db")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit_log SET reason = 'x' WHERE id = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit_log")
    conn.close()
    assert log.verify().ok


def test_edited_row_is_detected(log: AuditLog, tmp_path: Path) -> None:
    fill(log)
    conn = raw(tmp_path / "keyless.db")
    assert conn.execute("SELECT decision FROM audit_log WHERE id = 3").fetchone() == ("deny",)
    conn.execute("UPDATE audit_log SET decision = 'allow' WHERE id = 3")
    check = log.verify()
    assert not check.ok and check.first_bad_id == 3 and check.problem == "row was edited"


def test_edited_details_are_detected(log: AuditLog, tmp_path: Path) -> None:
    fill(log)
    conn = raw(tmp_path / "keyless.db")
    conn.execute("UPDATE audit_log SET details = '{\"i\": 2}' WHERE id = 3")
    assert log.verify().first_bad_id == 3


def test_rehashed_row_breaks_the_next_link(log: AuditLog, tmp_path: Path) -> None:
    """Recomputing an edited row's own hash is not enough: the next row points at the old one."""
    fill(log)
    conn = raw(tmp_path / "keyless.db")
    row = conn.execute("SELECT * FROM audit_log WHERE id = 2").fetchone()
    assert row[5] == "allow"
    payload = {
        "id": 2, "ts": row[1], "kind": row[2], "session_id": row[3], "tool": row[4],
        "decision": "deny", "reason": row[6], "details": json.loads(row[7]),
    }
    forged = hashlib.sha256(
        (row[8] + json.dumps(payload, sort_keys=True, separators=(",", ":"))).encode()
    ).hexdigest()
    conn.execute("UPDATE audit_log SET decision = 'deny', hash = ? WHERE id = 2", (forged,))
    check = log.verify()
    assert not check.ok and check.first_bad_id == 3


def test_deleted_row_is_detected(log: AuditLog, tmp_path: Path) -> None:
    fill(log)
    raw(tmp_path / "keyless.db").execute("DELETE FROM audit_log WHERE id = 2")
    check = log.verify()
    assert not check.ok and check.first_bad_id == 3 and check.n_entries == 4


def test_deleted_tail_is_detected(log: AuditLog, tmp_path: Path) -> None:
    fill(log)
    raw(tmp_path / "keyless.db").execute("DELETE FROM audit_log WHERE id >= 4")
    check = log.verify()
    assert not check.ok and check.first_bad_id == 4
    # Appending after the cut does not hide it.
    log.record("later", now=NOW)
    assert not log.verify().ok


def test_reordered_rows_are_detected(log: AuditLog, tmp_path: Path) -> None:
    fill(log)
    conn = raw(tmp_path / "keyless.db")
    rows = {r[0]: r for r in conn.execute("SELECT * FROM audit_log WHERE id IN (2, 3)")}
    conn.execute("DELETE FROM audit_log WHERE id IN (2, 3)")
    # Swap: row 2's content under id 3 and the other way round.
    conn.execute("INSERT INTO audit_log VALUES (2,?,?,?,?,?,?,?,?,?)", rows[3][1:])
    conn.execute("INSERT INTO audit_log VALUES (3,?,?,?,?,?,?,?,?,?)", rows[2][1:])
    check = log.verify()
    assert not check.ok and check.first_bad_id == 2


def test_inserted_row_is_detected(log: AuditLog, tmp_path: Path) -> None:
    fill(log, 3)
    conn = raw(tmp_path / "keyless.db")
    row = conn.execute("SELECT * FROM audit_log WHERE id = 3").fetchone()
    conn.execute("INSERT INTO audit_log VALUES (10,?,?,?,?,?,?,?,?,?)", row[1:])
    check = log.verify()
    assert not check.ok and check.first_bad_id == 10


def test_secret_values_never_stored(log: AuditLog, tmp_path: Path) -> None:
    text = SECRET.decode()
    entry = log.record(
        "redeem",
        session_id="s1",
        reason=f"echo {text}",
        details={
            "url": f"https://x.com/?key={text}",
            "b64": base64.b64encode(b"user:" + SECRET).decode(),
            "hex": [SECRET.hex()],
            text: "as a key",
        },
        secret_values=[bytearray(SECRET)],
        now=NOW,
    )
    tag = log.fingerprint(SECRET)
    assert tag.startswith("hmac-sha256:") and len(tag) == len("hmac-sha256:") + 32
    assert entry.reason == f"echo [REDACTED:{tag}]"
    assert entry.details[f"[REDACTED:{tag}]"] == "as a key"
    stored = log.entries()[0]
    assert stored == entry
    dump = stored.model_dump_json()
    for form in secret_forms(SECRET):
        assert form not in dump
    data = b"".join(p.read_bytes() for p in tmp_path.glob("keyless.db*"))
    for form in secret_forms(SECRET):
        assert form.encode() not in data
    # A known value can still be checked against the log.
    assert tag in dump
    assert log.fingerprint(b"some other value") not in dump
    assert log.verify().ok


def test_fingerprint_key_persists_and_can_come_from_the_vault(tmp_path: Path) -> None:
    db = tmp_path / "keyless.db"
    a = AuditLog(db).fingerprint(SECRET)
    assert AuditLog(db).fingerprint(SECRET) == a
    assert AuditLog(tmp_path / "other.db").fingerprint(SECRET) != a
    vault = Vault.create(
        tmp_path / "vault.kls", passphrase="pw", use_keyring=False, keystore=NoKeyring(),
        kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64), idle_timeout=None,
    )
    key = vault.derive_key("audit-hmac")
    keyed = AuditLog(db, hmac_key=bytes(key))
    assert keyed.fingerprint(SECRET) != a
    assert AuditLog(db, hmac_key=bytes(key)).fingerprint(SECRET) == keyed.fingerprint(SECRET)
    with pytest.raises(ValueError, match="16 bytes"):
        AuditLog(db, hmac_key=b"short")


def test_bad_input_is_refused_and_nothing_written(log: AuditLog) -> None:
    with pytest.raises(TypeError, match=r"details.when: datetime is not JSON"):
        log.record("x", details={"when": NOW})
    with pytest.raises(TypeError, match="keys must be strings"):
        log.record("x", details={1: "a"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="needs a kind"):
        log.record("")
    with pytest.raises(ValueError, match="timezone-aware"):
        log.record("x", now=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="limit"):
        log.entries(limit=-1)
    assert log.verify().n_entries == 0


def test_concurrent_appends_keep_one_chain(tmp_path: Path) -> None:
    db = tmp_path / "keyless.db"
    logs = [AuditLog(db) for _ in range(4)]
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        for j in range(25):
            logs[i % 4].record("decision", details={"worker": i, "j": j})

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check = logs[0].verify()
    assert check.ok and check.n_entries == 200


def test_unopenable_database(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(VaultError, match="cannot open the audit log"):
        AuditLog(tmp_path / "dir.db")


@settings(max_examples=60, deadline=None)
@given(
    row=st.integers(min_value=1, max_value=5),
    column=st.sampled_from(
        ["ts", "kind", "session_id", "tool", "decision", "reason", "details", "prev_hash", "hash"]
    ),
    value=st.one_of(st.text(max_size=40), st.none()),
)
def test_property_any_single_edit_is_caught_at_its_row(
    row: int, column: str, value: str | None
) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "keyless.db"
        log = AuditLog(path)
        fill(log)
        conn = raw(path)
        (old,) = conn.execute(f"SELECT {column} FROM audit_log WHERE id = ?", (row,)).fetchone()
        assume(old != value)
        try:
            conn.execute(f"UPDATE audit_log SET {column} = ? WHERE id = ?", (value, row))
        except sqlite3.IntegrityError:
            assume(False)  # NOT NULL column: the edit cannot even be made
        conn.close()
        check = log.verify()
        assert not check.ok
        assert check.first_bad_id == row
        log.close()
