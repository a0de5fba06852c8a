"""AuditController over a real, hash-chained AuditLog (no widgets)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from app.controllers.audit_controller import AuditController, AuditRow, ChainResult
from app.qt import QObject
from vault._crypto import Argon2Params
from vault.audit import AuditLog
from vault.keystore import NoKeyring
from vault.store import Vault


def dispose(qtbot: QtBot, controller: QObject) -> None:
    """Let queued results arrive, then delete the controller on the GUI thread."""
    qtbot.waitUntil(lambda: not controller.busy, timeout=30_000)  # type: ignore[attr-defined]
    controller.deleteLater()


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "keyless.db")


def load(controller: AuditController, qtbot: QtBot) -> tuple[list[AuditRow], ChainResult]:
    rows: list[list[AuditRow]] = []
    checks: list[ChainResult] = []
    controller.entries_loaded.connect(rows.append)
    controller.chain_checked.connect(checks.append)
    with qtbot.wait_signals(
        [controller.entries_loaded, controller.chain_checked], timeout=10_000
    ):
        controller.refresh()
    controller.entries_loaded.disconnect(rows.append)
    controller.chain_checked.disconnect(checks.append)
    return rows[-1], checks[-1]


def test_rows_newest_first_with_details_summarised(log: AuditLog, qtbot: QtBot) -> None:
    log.record("vault.add", details={"name": "GITHUB_TOKEN"})
    log.record("decision", tool="shell", decision="deny", reason="rule shell(rm *)",
               session_id="s1")
    controller = AuditController(log)
    rows, chain = load(controller, qtbot)
    assert [r.kind for r in rows] == ["decision", "vault.add"]
    assert rows[0].session_id == "s1" and rows[0].reason == "rule shell(rm *)"
    assert rows[1].details == "name=GITHUB_TOKEN"
    assert rows[1].time is not None and rows[1].time.tzinfo is not None
    assert chain == ChainResult(
        ok=True, n_entries=2, first_bad_id=None, problem=None, status="unkeyed"
    )
    assert "UNKEYED" in chain.describe() and not chain.verified
    dispose(qtbot, controller)


def test_secret_values_never_reach_the_rows(log: AuditLog, qtbot: QtBot) -> None:
    secret = "ghp_supersecretvalue123"
    log.record("redeem", reason=f"sent {secret}", details={"header": f"Bearer {secret}"},
               secret_values=[secret])
    controller = AuditController(log)
    rows, _ = load(controller, qtbot)
    assert secret not in rows[0].reason and secret not in rows[0].details
    assert "REDACTED" in rows[0].reason
    dispose(qtbot, controller)


def test_deleted_row_is_found(log: AuditLog, qtbot: QtBot) -> None:
    for i in range(4):
        log.record("decision", reason=f"#{i}")
    conn = sqlite3.connect(log.path)
    conn.execute("DROP TRIGGER audit_log_no_delete")
    conn.execute("DELETE FROM audit_log WHERE id = 2")
    conn.commit()
    conn.close()
    controller = AuditController(log)
    rows, chain = load(controller, qtbot)
    assert len(rows) == 3
    assert not chain.ok and chain.first_bad_id == 3
    assert chain.describe().startswith("Hash chain BROKEN at entry 3")
    dispose(qtbot, controller)


def test_limit_bounds_the_rows_but_not_the_check(log: AuditLog, qtbot: QtBot) -> None:
    for i in range(7):
        log.record("decision", reason=f"#{i}")
    controller = AuditController(log, limit=5)
    rows, chain = load(controller, qtbot)
    assert [r.reason for r in rows] == ["#6", "#5", "#4", "#3", "#2"]
    assert chain.n_entries == 7 and chain.ok
    dispose(qtbot, controller)


def test_statuses_are_described_honestly(tmp_path: Path, qtbot: QtBot) -> None:
    vault = Vault.create(
        tmp_path / "vault.kls", passphrase="pw", use_keyring=False, keystore=NoKeyring(),
        kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64), idle_timeout=None,
    )
    log = AuditLog(tmp_path / "keyed.db", vault=vault)
    log.record("vault.add")
    controller = AuditController(log)
    _, chain = load(controller, qtbot)
    assert chain.verified and chain.describe().startswith("Verified, keyed: all 1 entries")
    vault.lock()
    log.record("tool_decision")
    _, chain = load(controller, qtbot)
    assert chain.ok and not chain.verified and chain.status == "unsealed"
    assert "1 entries were written while the vault was locked" in chain.describe()
    dispose(qtbot, controller)
    rollback = ChainResult(ok=False, n_entries=3, first_bad_id=4, problem="x", status="rollback")
    assert rollback.describe() == "ROLLBACK detected: x."
