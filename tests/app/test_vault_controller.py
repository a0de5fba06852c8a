"""VaultController over the real vault, grant store, broker and audit log (no widgets)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from app.controllers.vault_controller import GrantRequest, VaultController, build_grant
from app.qt import QObject, QTimer
from vault._crypto import Argon2Params
from vault.audit import AuditLog
from vault.keystore import NoKeyring
from vault.store import Vault

FAST_KDF = Argon2Params(iterations=1, lanes=1, memory_kib=64)
PASSPHRASE = "correct horse battery"


def dispose(qtbot: QtBot, controller: QObject) -> None:
    """Let queued results arrive, then delete the controller on the GUI thread."""
    qtbot.waitUntil(lambda: not controller.busy, timeout=30_000)  # type: ignore[attr-defined]
    controller.deleteLater()


@pytest.fixture
def controller(qtbot: QtBot, tmp_path: Path) -> VaultController:
    c = VaultController(
        tmp_path / "vault.kls", tmp_path / "keyless.db", keystore=NoKeyring(), kdf=FAST_KDF
    )
    yield c
    dispose(qtbot, c)


def create(controller: VaultController, qtbot: QtBot) -> None:
    with qtbot.wait_signal(controller.names_changed, timeout=10_000):
        controller.create(use_keyring=False, passphrase=bytearray(PASSPHRASE.encode()))


def request(**kw: object) -> GrantRequest:
    fields: dict[str, object] = {
        "secret_name": "GITHUB_TOKEN",
        "injection_kind": "header",
        "injection_detail": "Authorization: Bearer {}",
        "methods": ("GET",),
        "host": "api.github.com",
        "path_pattern": "/repos/*",
        "expires_at": None,
        "max_uses": 3,
    }
    fields.update(kw)
    return GrantRequest(**fields)  # type: ignore[arg-type]


def test_refresh_reports_missing_vault(controller: VaultController, qtbot: QtBot) -> None:
    with qtbot.wait_signal(controller.state_changed, timeout=10_000) as blocker:
        controller.refresh()
    assert blocker.args == ["missing"]
    assert controller.keyring_available is False


def test_create_needs_a_protection(controller: VaultController, qtbot: QtBot) -> None:
    with qtbot.wait_signal(controller.error, timeout=1_000) as blocker:
        controller.create(use_keyring=False, passphrase=None)
    assert "passphrase or the OS keyring" in blocker.args[0]
    assert not controller.vault_path.exists()


def test_gui_thread_keeps_running_during_a_real_argon2_unlock(
    qtbot: QtBot, tmp_path: Path
) -> None:
    path = tmp_path / "vault.kls"
    Vault.create(path, passphrase=PASSPHRASE, use_keyring=False, keystore=NoKeyring()).lock()
    controller = VaultController(path, tmp_path / "keyless.db", keystore=NoKeyring())
    ticks: list[int] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(threading.get_ident()))
    timer.start(5)
    busy: list[bool] = []
    controller.busy_changed.connect(busy.append)
    with qtbot.wait_signal(controller.state_changed, timeout=30_000) as blocker:
        controller.unlock(bytearray(PASSPHRASE.encode()))
    timer.stop()
    assert blocker.args == ["unlocked"]
    # The default Argon2id takes ~0.5 s; the GUI thread ticked all along.
    assert len(ticks) >= 10
    assert busy[0] is True
    qtbot.waitUntil(lambda: not controller.busy, timeout=10_000)
    assert busy[-1] is False
    dispose(qtbot, controller)


def test_passphrase_buffer_is_zeroed_even_when_wrong(
    controller: VaultController, qtbot: QtBot
) -> None:
    create(controller, qtbot)
    with qtbot.wait_signal(controller.state_changed, timeout=10_000):
        controller.lock()
    wrong = bytearray(b"definitely wrong")
    with qtbot.wait_signal(controller.error, timeout=10_000) as blocker:
        controller.unlock(wrong)
    assert blocker.args == ["Wrong passphrase. Try again."]
    assert wrong == bytearray(len(wrong))
    assert controller.state == "locked"


def test_vault_opened_hands_over_the_shared_vault(
    controller: VaultController, qtbot: QtBot
) -> None:
    opened: list[object] = []
    controller.vault_opened.connect(opened.append)
    create(controller, qtbot)
    assert len(opened) == 1 and isinstance(opened[0], Vault)
    assert not opened[0].is_locked  # type: ignore[attr-defined]


def test_given_vault_is_used_not_reopened(qtbot: QtBot, tmp_path: Path) -> None:
    path = tmp_path / "vault.kls"
    shared = Vault.create(path, passphrase=PASSPHRASE, use_keyring=False, keystore=NoKeyring(),
                          kdf=FAST_KDF)
    shared.add("API_KEY", b"v")
    controller = VaultController(path, tmp_path / "keyless.db", vault=shared)
    with qtbot.wait_signal(controller.state_changed, timeout=10_000) as blocker:
        controller.refresh()
    assert blocker.args == ["unlocked"]  # already unlocked by its owner
    with qtbot.wait_signal(controller.state_changed, timeout=10_000):
        controller.lock()
    assert shared.is_locked
    dispose(qtbot, controller)


def test_operations_run_in_the_order_asked(controller: VaultController, qtbot: QtBot) -> None:
    create(controller, qtbot)
    controller.lock()
    with qtbot.wait_signal(controller.error, timeout=10_000) as blocker:
        controller.add_secret("LATE", bytearray(b"x"))
    assert blocker.args == ["The vault is locked. Unlock it first."]


def test_missing_file_on_unlock_is_reported(controller: VaultController, qtbot: QtBot) -> None:
    with qtbot.wait_signal(controller.error, timeout=10_000) as blocker:
        controller.unlock(bytearray(b"whatever"))
    assert str(controller.vault_path) in blocker.args[0]


def test_grant_for_unknown_secret_is_refused_and_nothing_stored(
    controller: VaultController, qtbot: QtBot, tmp_path: Path
) -> None:
    create(controller, qtbot)
    with qtbot.wait_signal(controller.error, timeout=10_000) as blocker:
        controller.create_grant(request(secret_name="NOPE"))
    assert blocker.args[0].startswith("No such secret")
    with qtbot.wait_signal(controller.grants_changed, timeout=10_000) as grants:
        controller.refresh_grants()
    assert grants.args == [[]]


def test_grant_uses_left_follow_the_broker(
    controller: VaultController, qtbot: QtBot, tmp_path: Path
) -> None:
    create(controller, qtbot)
    with qtbot.wait_signal(controller.names_changed, timeout=10_000):
        controller.add_secret("GITHUB_TOKEN", bytearray(b"ghp_x"))
    with qtbot.wait_signal(controller.grants_changed, timeout=10_000) as blocker:
        controller.create_grant(request())
    (row,) = blocker.args[0]
    assert (row.uses_left, row.max_uses, row.revoked) == (3, 3, False)
    assert row.session_id == controller.session_id
    # The broker spends a use (as a redemption does), the screen shows it.
    from datetime import UTC, datetime

    from vault.grants import GrantStore

    GrantStore(tmp_path / "keyless.db").consume(
        row.handle, session_id=controller.session_id, now=datetime.now(UTC)
    )
    with qtbot.wait_signal(controller.grants_changed, timeout=10_000) as blocker:
        controller.refresh_grants()
    assert blocker.args[0][0].uses_left == 2
    entries = AuditLog(tmp_path / "keyless.db").entries(kind="grant")
    assert entries and entries[0].details["handle"] == row.handle


def test_session_change_moves_new_grants(controller: VaultController, qtbot: QtBot) -> None:
    create(controller, qtbot)
    with qtbot.wait_signal(controller.names_changed, timeout=10_000):
        controller.add_secret("GITHUB_TOKEN", bytearray(b"ghp_x"))
    controller.set_session_id("session-2")
    with qtbot.wait_signal(controller.grants_changed, timeout=10_000):
        controller.create_grant(request())
    with qtbot.wait_signal(controller.grants_changed, timeout=10_000) as blocker:
        controller.refresh_grants()
    assert [r.session_id for r in blocker.args[0]] == ["session-2"]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"host": "10.0.0.1"}, "host"),
        ({"path_pattern": "/a/*/b"}, "path_pattern"),
        ({"injection_kind": "query", "injection_detail": "a=b"}, "param"),
        ({"methods": ("FETCH",)}, "methods"),
        ({"max_uses": 0}, "max_uses"),
    ],
)
def test_build_grant_names_the_bad_scope(change: dict[str, object], problem: str) -> None:
    from datetime import UTC, datetime

    with pytest.raises(ValueError, match=problem):
        build_grant(request(**change), session_id="s", approved_by="gui", now=datetime.now(UTC))
