"""The audit log: append-only, hash-chained, never holding a secret value."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vault._crypto import Argon2Params
from vault.audit import GENESIS_HASH, AuditLog
from vault.errors import AuditLogError, VaultError
from vault.keystore import KeyStore, NoKeyring, OSKeyring
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
    conn.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
    conn.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
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
        "decision": "deny", "reason": row[6], "details": json.loads(row[7]), "chain": row[10],
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
    conn.execute("INSERT INTO audit_log VALUES (2,?,?,?,?,?,?,?,?,?,?,?)", rows[3][1:])
    conn.execute("INSERT INTO audit_log VALUES (3,?,?,?,?,?,?,?,?,?,?,?)", rows[2][1:])
    check = log.verify()
    assert not check.ok and check.first_bad_id == 2


def test_inserted_row_is_detected(log: AuditLog, tmp_path: Path) -> None:
    fill(log, 3)
    conn = raw(tmp_path / "keyless.db")
    row = conn.execute("SELECT * FROM audit_log WHERE id = 3").fetchone()
    conn.execute("INSERT INTO audit_log VALUES (10,?,?,?,?,?,?,?,?,?,?,?)", row[1:])
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


# ------------------------------------------------------------ the keyed chain

SECRET_SERVICE = os.environ.get("KEYLESS_SECRET_SERVICE") == "1"
FAST = Argon2Params(iterations=1, lanes=1, memory_kib=64)


class MemoryKeyStore:
    """An in-process keyring (tests/vault/test_keystore.py proves the same contract)."""

    def __init__(self) -> None:
        self.items: dict[tuple[bytes, str], bytes] = {}

    def available(self) -> bool:
        return True

    def get(self, vault_id: bytes, item: str) -> bytearray | None:
        value = self.items.get((vault_id, item))
        return None if value is None else bytearray(value)

    def set(self, vault_id: bytes, item: str, value: bytes | bytearray) -> None:
        self.items[(vault_id, item)] = bytes(value)

    def delete(self, vault_id: bytes, item: str) -> None:
        self.items.pop((vault_id, item), None)


@pytest.fixture(
    params=[
        "memory",
        pytest.param(
            "os",
            marks=[
                pytest.mark.keyring,
                pytest.mark.skipif(
                    not SECRET_SERVICE, reason="needs a real Secret Service"
                ),
            ],
        ),
    ]
)
def keystore(request: pytest.FixtureRequest) -> Iterator[KeyStore]:
    if request.param == "memory":
        yield MemoryKeyStore()
    else:
        # A service of its own so the test never meets real Keyless items.
        yield OSKeyring(service=f"keyless-test-{uuid.uuid4().hex}")


def make_vault(tmp_path: Path) -> Vault:
    return Vault.create(
        tmp_path / "vault.kls", passphrase="pw", use_keyring=False, keystore=NoKeyring(),
        kdf=FAST, idle_timeout=None,
    )


def rewrite_from(path: Path, first_id: int, **changes: object) -> None:
    """The attacker with the file: edit row ``first_id``, then recompute every hash after it."""
    conn = raw(path)
    rows = conn.execute(
        "SELECT id, ts, kind, session_id, tool, decision, reason, details, prev_hash, chain "
        "FROM audit_log WHERE id >= ? ORDER BY id",
        (first_id,),
    ).fetchall()
    prev = rows[0][8]
    for id_, ts, kind, session_id, tool, decision, reason, details, _, chain in rows:
        payload = {
            "id": id_, "ts": ts, "kind": kind, "session_id": session_id, "tool": tool,
            "decision": decision, "reason": reason, "details": json.loads(details),
        }
        if id_ == first_id:
            payload.update(changes)
        if chain != "legacy":
            payload["chain"] = chain
        digest = hashlib.sha256(
            (prev + json.dumps(payload, sort_keys=True, separators=(",", ":"))).encode()
        ).hexdigest()
        conn.execute(
            "UPDATE audit_log SET kind = ?, decision = ?, reason = ?, details = ?, "
            "prev_hash = ?, hash = ? WHERE id = ?",
            (payload["kind"], payload["decision"], payload["reason"],
             json.dumps(payload["details"], sort_keys=True, separators=(",", ":")),
             prev, digest, id_),
        )
        prev = digest
    conn.close()


def test_unkeyed_log_says_so_and_a_rewrite_is_not_caught_there(
    log: AuditLog, tmp_path: Path
) -> None:
    """The honest baseline: without a key, someone who recomputes the hashes is not caught."""
    fill(log)
    assert log.mode == "unkeyed" and log.verify().status == "unkeyed"
    rewrite_from(tmp_path / "keyless.db", 2, decision="deny")
    check = log.verify()
    assert check.ok and check.status == "unkeyed"


def test_rewriting_the_db_is_caught_by_the_vault_keyed_chain(tmp_path: Path) -> None:
    vault = make_vault(tmp_path)
    log = AuditLog(tmp_path / "keyless.db", vault=vault)
    assert log.mode == "vault"
    fill(log)
    entry = log.entries(limit=1)[0]
    assert entry.chain.startswith("vault:") and entry.mac is not None
    good = log.verify()
    assert good.ok and good.status == "keyed" and good.keyed_through == 5
    rewrite_from(tmp_path / "keyless.db", 2, decision="deny")
    check = log.verify()
    assert not check.ok and check.status == "tampered" and check.first_bad_id == 2
    assert "MAC" in (check.problem or "")


def test_relabelling_keyed_rows_as_legacy_is_caught(tmp_path: Path) -> None:
    vault = make_vault(tmp_path)
    log = AuditLog(tmp_path / "keyless.db", vault=vault)
    fill(log, 3)
    conn = raw(tmp_path / "keyless.db")
    conn.execute("UPDATE audit_log SET chain = 'legacy', mac = NULL WHERE id = 3")
    conn.close()
    rewrite_from(tmp_path / "keyless.db", 3)
    check = log.verify()
    assert not check.ok and check.first_bad_id == 3
    assert "legacy row after the keyed chain" in (check.problem or "")


def test_verifying_a_keyed_log_needs_an_unlock(tmp_path: Path) -> None:
    vault = make_vault(tmp_path)
    db = tmp_path / "keyless.db"
    AuditLog(db, vault=vault).record("vault.add", now=NOW)
    vault.lock()
    check = AuditLog(db, vault=vault).verify()
    assert check.ok and check.status == "unverified" and check.keyed_through == 0


def test_entries_written_while_locked_are_sealed_on_unlock(tmp_path: Path) -> None:
    vault = make_vault(tmp_path)
    log = AuditLog(tmp_path / "keyless.db", vault=vault)
    log.record("vault.add", now=NOW)
    vault.lock()
    assert log.mode == "locked"
    fill(log, 3)
    locked = log.verify()
    # This process still holds the per-boot key, so its own locked rows verify.
    assert locked.ok and locked.status == "unsealed" and locked.unsealed == 3
    vault.unlock("pw")
    assert log.seal() == 3
    sealed = log.entries(kind="audit.sealed")[0]
    assert sealed.details["verified"] == 3 and sealed.details["mac_failed"] == []
    assert sealed.chain.startswith("vault:")
    check = log.verify()
    assert check.ok and check.status == "keyed" and check.n_entries == 5
    assert log.seal() == 0  # nothing waits any more


def test_a_locked_row_changed_before_the_unlock_is_named_by_the_seal(tmp_path: Path) -> None:
    vault = make_vault(tmp_path)
    log = AuditLog(tmp_path / "keyless.db", vault=vault)
    vault.lock()
    fill(log, 3)
    rewrite_from(tmp_path / "keyless.db", 2, decision="deny")
    assert log.verify().first_bad_id == 2  # the boot key catches it while this process lives
    vault.unlock("pw")
    log.record("vault.unlock", now=NOW)  # the first write after the unlock seals
    sealed = log.entries(kind="audit.sealed")[0]
    assert sealed.details["mac_failed"] == [2, 3]
    assert "changed while the vault was locked" in (sealed.reason or "")


def test_locked_entries_survive_a_crash_before_unlock(tmp_path: Path) -> None:
    """A new process cannot check the lost per-boot key, and says the rows are unsealed."""
    vault = make_vault(tmp_path)
    db = tmp_path / "keyless.db"
    vault.lock()
    fill(AuditLog(db, vault=vault), 2)  # then the process dies
    after_crash = AuditLog(db, vault=vault)
    check = after_crash.verify()
    assert check.ok and check.status == "unsealed" and check.unsealed == 2
    vault.unlock("pw")
    after_crash.record("vault.unlock", now=NOW)
    sealed = after_crash.entries(kind="audit.sealed")[0]
    assert sealed.details["unverifiable"] == 2
    assert after_crash.verify().status == "keyed"


def test_rotating_the_data_key_keeps_old_entries_covered(tmp_path: Path) -> None:
    vault = make_vault(tmp_path)
    log = AuditLog(tmp_path / "keyless.db", vault=vault)
    fill(log, 3)
    vault.rotate_data_key(passphrase="pw")
    log.record("vault.rotate", now=NOW)
    check = log.verify()
    assert check.ok and check.status == "keyed" and check.keyed_through == 4
    rewrite_from(tmp_path / "keyless.db", 1, kind="forged")
    assert log.verify().first_bad_id == 4  # the first row whose key is at hand


def test_old_plain_chain_is_migrated_as_legacy_and_nothing_is_lost(tmp_path: Path) -> None:
    db = tmp_path / "keyless.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript(
        """
        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, kind TEXT NOT NULL,
            session_id TEXT, tool TEXT, decision TEXT, reason TEXT, details TEXT NOT NULL,
            prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
        """
    )
    prev = GENESIS_HASH
    for i in range(1, 4):
        ts = (NOW + timedelta(seconds=i)).isoformat(timespec="microseconds")
        payload = {"id": i, "ts": ts, "kind": "decision", "session_id": None, "tool": None,
                   "decision": "allow", "reason": None, "details": {"i": i}}
        digest = hashlib.sha256(
            (prev + json.dumps(payload, sort_keys=True, separators=(",", ":"))).encode()
        ).hexdigest()
        conn.execute(
            "INSERT INTO audit_log VALUES (?,?,?,?,?,?,?,?,?,?)",
            (i, ts, "decision", None, None, "allow", None, f'{{"i":{i}}}', prev, digest),
        )
        prev = digest
    conn.close()
    vault = make_vault(tmp_path)
    log = AuditLog(db, vault=vault)
    legacy = log.verify()
    assert legacy.ok and legacy.status == "legacy" and legacy.legacy_through == 3
    log.record("vault.add", now=NOW)
    check = log.verify()
    assert check.ok and check.status == "keyed"
    assert (check.legacy_through, check.keyed_through, check.n_entries) == (3, 4, 4)
    assert [e.chain for e in reversed(log.entries())][:3] == ["legacy"] * 3
    # The keyed row covers the legacy rows before it.
    rewrite_from(db, 2, decision="deny")
    assert log.verify().first_bad_id == 4


def test_install_key_in_the_keyring_keys_the_log_before_a_vault_exists(tmp_path: Path) -> None:
    store = MemoryKeyStore()
    log = AuditLog(tmp_path / "keyless.db", keystore=store)
    assert log.mode == "install"
    fill(log, 3)
    assert log.verify().status == "keyed"
    rewrite_from(tmp_path / "keyless.db", 2, decision="deny")
    assert log.verify().first_bad_id == 2


def test_truncation_is_detected(tmp_path: Path) -> None:
    """A cut tail: caught by SQLite's counter, and by the keyring's head once that is reset."""
    store = MemoryKeyStore()
    vault = make_vault(tmp_path)
    db = tmp_path / "keyless.db"
    log = AuditLog(db, vault=vault, keystore=store)
    fill(log)
    conn = raw(db)
    conn.execute("DELETE FROM audit_log WHERE id >= 4")
    naive = log.verify()
    assert not naive.ok and naive.first_bad_id == 4
    conn.execute("UPDATE sqlite_sequence SET seq = 3 WHERE name = 'audit_log'")
    conn.close()
    careful = log.verify()
    assert not careful.ok and careful.status == "rollback" and careful.first_bad_id == 4
    assert "keyring's head is entry 5" in (careful.problem or "")


def test_head_rollback_is_detected_with_a_keyring(tmp_path: Path, keystore: KeyStore) -> None:
    """An older, self-consistent copy of the database is caught by the head in the keyring."""
    vault = make_vault(tmp_path)
    db = tmp_path / "keyless.db"
    log = AuditLog(db, vault=vault, keystore=keystore)
    fill(log, 3)
    log.close()
    old = tmp_path / "old.db"
    shutil.copy(db, old)
    log = AuditLog(db, vault=vault, keystore=keystore)
    log.record("tool_decision", decision="allow", now=NOW)
    log.record("tool_result", now=NOW)
    assert log.verify().anchored
    log.close()
    shutil.copy(old, db)
    restored = AuditLog(db, vault=vault, keystore=keystore)
    check = restored.verify()
    assert not check.ok and check.status == "rollback" and check.first_bad_id == 4
    keystore.delete(bytes.fromhex(vault.vault_id), "audit-head")


def test_a_rewrite_of_unsealed_rows_differs_from_the_keyring_head(tmp_path: Path) -> None:
    """Rows written while locked, then a crash: their key is gone, the keyring head is not."""
    store = MemoryKeyStore()
    vault = make_vault(tmp_path)
    db = tmp_path / "keyless.db"
    vault.lock()
    fill(AuditLog(db, vault=vault, keystore=store), 3)
    rewrite_from(db, 2, kind="forged")
    check = AuditLog(db, vault=vault, keystore=store).verify()
    assert not check.ok and check.first_bad_id == 3
    assert "head kept in the keyring" in (check.problem or "")


def test_a_write_that_cannot_happen_raises_and_writes_nothing(tmp_path: Path) -> None:
    """Another writer holds the database's lock: the entry fails loudly, not silently."""
    db = tmp_path / "keyless.db"
    log = AuditLog(db, busy_timeout=0.05)
    log.record("before", now=NOW)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(AuditLogError, match="cannot be written"):
            log.record("during", now=NOW)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert [e.kind for e in log.entries()] == ["before"]
    assert log.verify().ok


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory on a 256 KiB tmpfs (needs the right to mount, as root in CI has).

    Mounted with the mount(2) and umount2(2) system calls, not the programs.
    """
    mount = tmp_path / "small"
    mount.mkdir()
    libc = ctypes.CDLL(None, use_errno=True)
    target = os.fsencode(mount)
    if libc.mount(b"tmpfs", target, b"tmpfs", 0, b"size=256k") != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {os.strerror(ctypes.get_errno())}")
    try:
        yield mount
    finally:
        libc.umount2(target, 2)  # MNT_DETACH, as umount -l


def test_a_full_disk_makes_the_write_fail(full_disk: Path) -> None:
    log = AuditLog(full_disk / "keyless.db")
    log.record("before", now=NOW)
    with contextlib.suppress(OSError), open(full_disk / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    with pytest.raises(AuditLogError, match="cannot be written"):
        for i in range(200):  # the WAL may hold a page or two before it needs more room
            log.record("during", details={"i": i, "pad": "x" * 2000}, now=NOW)
    log.close()
