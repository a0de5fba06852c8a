"""The vault screen driven like a user would, over a real vault, grant store and audit log."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from app.controllers.vault_controller import VaultController
from app.dialogs.grant_editor import GrantEditorDialog
from app.dialogs.secret_editor import SecretEditorDialog
from app.dialogs.unlock import UnlockDialog
from app.dialogs.vault_setup import NO_KEYRING_TEXT, VaultSetupDialog
from app.qt import Qt, QtWidgets
from app.views.vault_view import VaultView
from tests.app.keyboard import mnemonics, tab_sequence
from vault._crypto import Argon2Params
from vault.audit import AuditLog
from vault.errors import WrongPassphraseError
from vault.grants import GrantStore
from vault.keystore import NoKeyring, OSKeyring
from vault.store import Vault

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_ignore("propagateSizeHints")]
QWidget = QtWidgets.QWidget

PASSPHRASE = "correct horse battery"
TOKEN = "ghp_s3cretValue0123456789"
# Cheap Argon2id so each unlock takes milliseconds (the cost is not under test here).
FAST_KDF = Argon2Params(iterations=1, lanes=1, memory_kib=64)


@pytest.fixture
def vault_path(tmp_path: Path) -> Path:
    return tmp_path / "vault.kls"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "keyless.db"


def make_view(qtbot: QtBot, vault_path: Path, db_path: Path, **kw: object) -> VaultView:
    kw.setdefault("keystore", NoKeyring())
    controller = VaultController(vault_path, db_path, kdf=FAST_KDF, **kw)  # type: ignore[arg-type]
    with qtbot.wait_signal(controller.state_changed, timeout=10_000):
        view = VaultView(controller)
        qtbot.add_widget(view)
        view.show()
    view.reveal_ms = 300
    return view


@pytest.fixture
def view(qtbot: QtBot, vault_path: Path, db_path: Path) -> Iterator[VaultView]:
    widget = make_view(qtbot, vault_path, db_path)
    yield widget
    widget.hide_value()
    widget.controller.wait()


def click(qtbot: QtBot, button: QtWidgets.QAbstractButton) -> None:
    assert button.isVisible() and button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def ok_button(dialog: QtWidgets.QDialog) -> QtWidgets.QPushButton:
    box = dialog.findChild(QtWidgets.QDialogButtonBox)
    assert box is not None
    for role in (
        QtWidgets.QDialogButtonBox.StandardButton.Ok,
        QtWidgets.QDialogButtonBox.StandardButton.Save,
    ):
        button = box.button(role)
        if button is not None:
            return button
    raise AssertionError("no OK button")


def set_up(view: VaultView, qtbot: QtBot) -> None:
    click(qtbot, view.setup_button)
    dialog = view.active_dialog
    assert isinstance(dialog, VaultSetupDialog)
    qtbot.keyClicks(dialog.passphrase, PASSPHRASE)
    qtbot.keyClicks(dialog.confirm, PASSPHRASE)
    with qtbot.wait_signal(view.controller.names_changed, timeout=10_000):
        click(qtbot, ok_button(dialog))
    assert view.controller.state == "unlocked"


def add_secret(view: VaultView, qtbot: QtBot, name: str, value: str) -> None:
    click(qtbot, view.add_button)
    dialog = view.active_dialog
    assert isinstance(dialog, SecretEditorDialog)
    assert dialog.value.echoMode() == QtWidgets.QLineEdit.EchoMode.Password
    qtbot.keyClicks(dialog.name, name)
    qtbot.keyClicks(dialog.value, value)
    with qtbot.wait_signal(view.controller.names_changed, timeout=10_000):
        click(qtbot, ok_button(dialog))


def names(view: VaultView) -> list[str]:
    return [view.secret_list.item(i).text() for i in range(view.secret_list.count())]


def select(view: VaultView, name: str) -> None:
    view.secret_list.setCurrentRow(names(view).index(name))


# -- first run ---------------------------------------------------------------------------


def test_first_run_without_keyring_says_so_and_creates_a_passphrase_vault(
    view: VaultView, qtbot: QtBot, vault_path: Path
) -> None:
    assert view.controller.state == "missing"
    assert view.setup_button.isVisible() and not view.unlock_button.isVisible()
    assert not view.add_button.isEnabled()
    click(qtbot, view.setup_button)
    dialog = view.active_dialog
    assert isinstance(dialog, VaultSetupDialog)
    assert dialog.statement.text() == NO_KEYRING_TEXT
    assert "never stored in plaintext" in dialog.statement.text()
    assert not dialog.keyring_box.isEnabled() and not dialog.keyring_box.isChecked()
    assert dialog.passphrase_box.isChecked() and not dialog.passphrase_box.isEnabled()
    dialog.reject()
    set_up(view, qtbot)
    assert vault_path.exists()
    assert view.lock_button.isVisible() and view.add_button.isEnabled()
    reopened = Vault.open(vault_path, keystore=NoKeyring())
    assert reopened.unlock_methods == ("passphrase",)
    reopened.unlock(PASSPHRASE)
    assert reopened.names() == []


def test_setup_refuses_short_or_mismatched_passphrases(view: VaultView, qtbot: QtBot) -> None:
    click(qtbot, view.setup_button)
    dialog = view.active_dialog
    assert isinstance(dialog, VaultSetupDialog)
    qtbot.keyClicks(dialog.passphrase, "short")
    qtbot.keyClicks(dialog.confirm, "short")
    click(qtbot, ok_button(dialog))
    assert "at least 8 characters" in dialog.problem.text()
    dialog.passphrase.setText(PASSPHRASE)
    dialog.confirm.setText(PASSPHRASE + "x")
    click(qtbot, ok_button(dialog))
    assert dialog.problem.text() == "The two passphrases differ."
    assert dialog.isVisible() and view.controller.state == "missing"


# -- secrets ---------------------------------------------------------------------------------


def test_added_secret_is_listed_by_name_and_stored_encrypted(
    view: VaultView, qtbot: QtBot, vault_path: Path
) -> None:
    set_up(view, qtbot)
    add_secret(view, qtbot, "GITHUB_TOKEN", TOKEN)
    assert names(view) == ["GITHUB_TOKEN"]
    assert TOKEN.encode() not in vault_path.read_bytes()
    shown = [view.findChildren(QtWidgets.QLineEdit), view.findChildren(QtWidgets.QLabel)]
    assert all(TOKEN not in w.text() for group in shown for w in group)
    check = Vault.open(vault_path, keystore=NoKeyring())
    check.unlock(PASSPHRASE)
    assert bytes(check.get("GITHUB_TOKEN")) == TOKEN.encode()


def test_secret_buffer_is_zeroed_once_stored(view: VaultView, qtbot: QtBot) -> None:
    set_up(view, qtbot)
    value = bytearray(b"value-to-forget")
    with qtbot.wait_signal(view.controller.names_changed, timeout=10_000):
        view.controller.add_secret("API_KEY", value)
    assert value == bytearray(len(value))


def test_reveal_shows_the_value_briefly_then_masks_and_zeroes_it(
    view: VaultView, qtbot: QtBot
) -> None:
    set_up(view, qtbot)
    add_secret(view, qtbot, "GITHUB_TOKEN", TOKEN)
    assert not view.reveal_button.isEnabled()  # nothing selected: nothing to reveal
    select(view, "GITHUB_TOKEN")
    buffers: list[bytearray] = []
    view.controller.secret_revealed.connect(lambda _name, buf: buffers.append(buf))
    with qtbot.wait_signal(view.controller.secret_revealed, timeout=10_000):
        click(qtbot, view.reveal_button)
    assert view.revealing
    assert view.reveal_field.text() == TOKEN
    assert view.reveal_field.echoMode() == QtWidgets.QLineEdit.EchoMode.Normal
    qtbot.waitUntil(lambda: not view.revealing, timeout=5_000)
    assert view.reveal_field.text() == ""
    assert view.reveal_field.echoMode() == QtWidgets.QLineEdit.EchoMode.Password
    assert buffers and buffers[0] == bytearray(len(TOKEN))


def test_replace_and_delete_a_secret(view: VaultView, qtbot: QtBot, vault_path: Path) -> None:
    set_up(view, qtbot)
    add_secret(view, qtbot, "OPENAI_KEY", "sk-old")
    add_secret(view, qtbot, "GITHUB_TOKEN", TOKEN)
    select(view, "OPENAI_KEY")
    click(qtbot, view.edit_button)
    dialog = view.active_dialog
    assert isinstance(dialog, SecretEditorDialog)
    assert dialog.name.isReadOnly() and dialog.name.text() == "OPENAI_KEY"
    qtbot.keyClicks(dialog.value, "sk-new")
    with qtbot.wait_signal(view.controller.names_changed, timeout=10_000):
        click(qtbot, ok_button(dialog))
    check = Vault.open(vault_path, keystore=NoKeyring())
    check.unlock(PASSPHRASE)
    assert bytes(check.get("OPENAI_KEY")) == b"sk-new"

    select(view, "OPENAI_KEY")
    click(qtbot, view.delete_button)
    box = view.active_dialog
    assert isinstance(box, QtWidgets.QMessageBox)
    assert box.defaultButton() is box.button(QtWidgets.QMessageBox.StandardButton.No)
    with qtbot.wait_signal(view.controller.names_changed, timeout=10_000):
        click(qtbot, box.button(QtWidgets.QMessageBox.StandardButton.Yes))
    assert names(view) == ["GITHUB_TOKEN"]


def test_duplicate_and_invalid_names_are_refused_in_the_dialog(
    view: VaultView, qtbot: QtBot
) -> None:
    set_up(view, qtbot)
    add_secret(view, qtbot, "GITHUB_TOKEN", TOKEN)
    click(qtbot, view.add_button)
    dialog = view.active_dialog
    assert isinstance(dialog, SecretEditorDialog)
    qtbot.keyClicks(dialog.name, "GITHUB_TOKEN")
    qtbot.keyClicks(dialog.value, "x")
    click(qtbot, ok_button(dialog))
    assert "already exists" in dialog.problem.text()
    dialog.name.setText("has space")
    click(qtbot, ok_button(dialog))
    assert dialog.problem.text().startswith("Name:")
    assert dialog.isVisible()


# -- lock and unlock ----------------------------------------------------------------------


def test_lock_then_unlock_with_wrong_then_right_passphrase(
    view: VaultView, qtbot: QtBot
) -> None:
    set_up(view, qtbot)
    add_secret(view, qtbot, "GITHUB_TOKEN", TOKEN)
    with qtbot.wait_signal(view.controller.state_changed, timeout=10_000):
        click(qtbot, view.lock_button)
    assert view.controller.state == "locked"
    assert names(view) == [] and not view.secret_list.isEnabled()
    assert view.unlock_button.isVisible()

    click(qtbot, view.unlock_button)
    dialog = view.active_dialog
    assert isinstance(dialog, UnlockDialog)
    assert not dialog.keyring_button.isVisible()  # no keyring here
    qtbot.keyClicks(dialog.passphrase, "not the passphrase")
    with qtbot.wait_signal(view.controller.error, timeout=10_000) as blocker:
        click(qtbot, ok_button(dialog))
    assert blocker.args == ["Wrong passphrase. Try again."]
    # The view asks again, saying why.
    again = view.active_dialog
    assert isinstance(again, UnlockDialog) and again is not dialog
    assert again.problem.text() == "Wrong passphrase. Try again."
    qtbot.keyClicks(again.passphrase, PASSPHRASE)
    with qtbot.wait_signal(view.controller.names_changed, timeout=10_000):
        click(qtbot, ok_button(again))
    assert view.controller.state == "unlocked"
    assert names(view) == ["GITHUB_TOKEN"]


def test_existing_vault_opens_locked(
    qtbot: QtBot, vault_path: Path, db_path: Path
) -> None:
    Vault.create(vault_path, passphrase=PASSPHRASE, use_keyring=False, keystore=NoKeyring(),
                 kdf=FAST_KDF).lock()
    widget = make_view(qtbot, vault_path, db_path)
    assert widget.controller.state == "locked"
    assert widget.unlock_button.isVisible() and not widget.setup_button.isVisible()
    widget.controller.wait()


def test_tampered_vault_gives_one_clear_error(
    qtbot: QtBot, vault_path: Path, db_path: Path
) -> None:
    Vault.create(vault_path, passphrase=PASSPHRASE, use_keyring=False, keystore=NoKeyring(),
                 kdf=FAST_KDF).lock()
    data = bytearray(vault_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    vault_path.write_bytes(bytes(data))
    controller = VaultController(vault_path, db_path, keystore=NoKeyring(), kdf=FAST_KDF)
    with qtbot.wait_signal(controller.error, timeout=10_000) as blocker:
        widget = VaultView(controller)
        qtbot.add_widget(widget)
        widget.show()
    assert blocker.args[0] == (
        "The vault file cannot be decrypted or verified; it was left untouched."
    )
    assert widget.message.text() == blocker.args[0]
    assert vault_path.read_bytes() == bytes(data)
    controller.wait()


def test_idle_vault_locks_itself(qtbot: QtBot, vault_path: Path, db_path: Path) -> None:
    widget = make_view(qtbot, vault_path, db_path, auto_lock_minutes=0.005)  # 300 ms
    set_up(widget, qtbot)
    with qtbot.wait_signal(widget.controller.state_changed, timeout=5_000) as blocker:
        pass
    assert blocker.args == ["locked"]
    assert widget.unlock_button.isVisible()
    widget.controller.wait()


# -- grants ---------------------------------------------------------------------------------


def grant_rows(view: VaultView) -> list[list[str]]:
    table = view.grant_table
    return [
        [table.item(r, c).text() for c in range(table.columnCount())]
        for r in range(table.rowCount())
    ]


def test_grant_created_with_scopes_then_revoked(
    view: VaultView, qtbot: QtBot, db_path: Path
) -> None:
    set_up(view, qtbot)
    assert not view.grant_button.isEnabled()  # no secret yet
    add_secret(view, qtbot, "GITHUB_TOKEN", TOKEN)
    click(qtbot, view.grant_button)
    dialog = view.active_dialog
    assert isinstance(dialog, GrantEditorDialog)
    qtbot.keyClicks(dialog.host, "api.github.com")
    dialog.method_boxes["POST"].setChecked(True)
    dialog.path.setText("/repos/*")
    dialog.ttl.setValue(30)
    dialog.uses.setValue(5)
    assert dialog.summary.text().startswith(
        "Allows: GET,POST https://api.github.com/repos/* with secret GITHUB_TOKEN as "
        "Authorization header (5 uses, until "
    )
    with qtbot.wait_signal(view.controller.grants_changed, timeout=10_000):
        click(qtbot, ok_button(dialog))
    rows = grant_rows(view)
    assert len(rows) == 1
    handle, secret, methods, host, path, expires, uses, status = rows[0]
    assert handle.startswith("cap_")
    assert (secret, methods, host, path, uses, status) == (
        "GITHUB_TOKEN",
        "GET, POST",
        "api.github.com",
        "/repos/*",
        "5 of 5",
        "active",
    )
    assert expires != "never"
    assert TOKEN not in " ".join(rows[0])

    stored = GrantStore(db_path).get(handle)
    assert stored is not None
    assert stored.grant.session_id == view.controller.session_id
    assert stored.grant.max_uses == 5 and stored.grant.methods == ("GET", "POST")
    assert stored.grant.injection.kind == "header"

    view.grant_table.selectRow(0)
    with qtbot.wait_signal(view.controller.grants_changed, timeout=10_000):
        click(qtbot, view.revoke_button)
    assert grant_rows(view)[0][7] == "revoked"
    record = GrantStore(db_path).get(handle)
    assert record is not None and record.revoked_at is not None
    kinds = [e.kind for e in AuditLog(db_path).entries()]
    assert kinds[:2] == ["revoke", "grant"]


def test_grant_editor_reports_the_vaults_own_validation(
    view: VaultView, qtbot: QtBot
) -> None:
    set_up(view, qtbot)
    add_secret(view, qtbot, "GITHUB_TOKEN", TOKEN)
    click(qtbot, view.grant_button)
    dialog = view.active_dialog
    assert isinstance(dialog, GrantEditorDialog)
    qtbot.keyClicks(dialog.host, "https://api.github.com/x")
    assert dialog.summary.text() == "Allows: (complete the scopes)"
    click(qtbot, ok_button(dialog))
    assert dialog.problem.text().startswith("Host:")
    dialog.host.setText("api.github.com")
    dialog.path.setText("/repos/*/issues")
    click(qtbot, ok_button(dialog))
    assert dialog.problem.text().startswith("path_pattern:")
    dialog.path.setText("/*")
    dialog.template.setText("Authorization: Bearer")
    click(qtbot, ok_button(dialog))
    assert "{}" in dialog.problem.text()
    assert dialog.isVisible() and view.grant_table.rowCount() == 0


def test_unlimited_grant_shows_never_and_unlimited(view: VaultView, qtbot: QtBot) -> None:
    set_up(view, qtbot)
    add_secret(view, qtbot, "GITHUB_TOKEN", TOKEN)
    click(qtbot, view.grant_button)
    dialog = view.active_dialog
    assert isinstance(dialog, GrantEditorDialog)
    dialog.host.setText("api.github.com")
    dialog.ttl.setValue(0)
    dialog.uses.setValue(0)
    assert dialog.summary.text().endswith("(unlimited uses, until the session ends)")
    assert dialog.ttl.text() == "never expires" and dialog.uses.text() == "unlimited"
    with qtbot.wait_signal(view.controller.grants_changed, timeout=10_000):
        click(qtbot, ok_button(dialog))
    row = grant_rows(view)[0]
    assert (row[5], row[6], row[7]) == ("never", "unlimited", "active")


# -- accessibility ----------------------------------------------------------------------------


def test_keyboard_reachability_and_labels(view: VaultView, qtbot: QtBot) -> None:
    set_up(view, qtbot)
    add_secret(view, qtbot, "GITHUB_TOKEN", TOKEN)
    select(view, "GITHUB_TOKEN")
    expected = [
        view.lock_button,
        view.secret_list,
        view.add_button,
        view.edit_button,
        view.delete_button,
        view.reveal_button,
        view.reveal_field,
        view.grant_table,
        view.grant_button,
    ]
    assert tab_sequence(view, expected[0], len(expected)) == expected
    keys = mnemonics(view)
    assert keys and len(keys) == len(set(keys)), keys
    for widget in (view.secret_list, view.reveal_field, view.grant_table, view.state_label):
        assert widget.accessibleName()


# -- the real OS keyring ------------------------------------------------------------------------


@pytest.mark.keyring
@pytest.mark.skipif(
    os.environ.get("KEYLESS_SECRET_SERVICE") != "1", reason="needs a private Secret Service"
)
def test_keyring_setup_then_unlock_without_typing(
    qtbot: QtBot, vault_path: Path, db_path: Path
) -> None:
    widget = make_view(qtbot, vault_path, db_path, keystore=OSKeyring())
    click(qtbot, widget.setup_button)
    dialog = widget.active_dialog
    assert isinstance(dialog, VaultSetupDialog)
    assert dialog.keyring_box.isChecked() and dialog.keyring_box.isEnabled()
    assert not dialog.passphrase_box.isChecked()
    with qtbot.wait_signal(widget.controller.names_changed, timeout=20_000):
        click(qtbot, ok_button(dialog))
    assert Vault.open(vault_path, keystore=OSKeyring()).unlock_methods == ("keyring",)
    with qtbot.wait_signal(widget.controller.state_changed, timeout=10_000):
        click(qtbot, widget.lock_button)
    click(qtbot, widget.unlock_button)
    unlock = widget.active_dialog
    assert isinstance(unlock, UnlockDialog)
    assert unlock.keyring_button.isVisible()
    assert not unlock.passphrase.isVisibleTo(unlock)  # keyring-only: nothing to type
    with qtbot.wait_signal(widget.controller.names_changed, timeout=20_000):
        click(qtbot, unlock.keyring_button)
    assert widget.controller.state == "unlocked"
    widget.controller.wait()


def test_wrong_passphrase_error_is_the_vaults(vault_path: Path) -> None:
    # Guards the mapping in describe_error against a renamed vault error.
    Vault.create(vault_path, passphrase=PASSPHRASE, use_keyring=False, keystore=NoKeyring(),
                 kdf=FAST_KDF).lock()
    vault = Vault.open(vault_path, keystore=NoKeyring())
    with pytest.raises(WrongPassphraseError):
        vault.unlock("nope nope nope")


# -- moving a credential found elsewhere into the vault --------------------------------------


def test_import_into_a_locked_vault_unlocks_first_then_stores_and_offers_a_grant(
    qtbot: QtBot, vault_path: Path, db_path: Path
) -> None:
    Vault.create(vault_path, passphrase=PASSPHRASE, use_keyring=False, keystore=NoKeyring(),
                 kdf=FAST_KDF).lock()
    widget = make_view(qtbot, vault_path, db_path)
    value = bytearray(TOKEN.encode())
    widget.import_secret("SECRET_TOKEN", value, note="Found in .env:3 (GitHub token).")
    dialog = widget.active_dialog
    assert isinstance(dialog, UnlockDialog) and widget.importing
    qtbot.keyClicks(dialog.passphrase, PASSPHRASE)
    click(qtbot, ok_button(dialog))
    qtbot.wait_until(lambda: isinstance(widget.active_dialog, SecretEditorDialog), timeout=10_000)
    editor = widget.active_dialog
    assert isinstance(editor, SecretEditorDialog)
    assert not any(value)  # zeroed once it is in the masked field
    assert editor.value.echoMode() == QtWidgets.QLineEdit.EchoMode.Password
    assert (editor.name.text(), editor.value.text()) == ("SECRET_TOKEN", TOKEN)
    assert editor.windowTitle() == "Move a credential into the vault"
    click(qtbot, ok_button(editor))
    qtbot.wait_until(lambda: isinstance(widget.active_dialog, GrantEditorDialog), timeout=10_000)
    grant = widget.active_dialog
    assert isinstance(grant, GrantEditorDialog)
    assert grant.secret.currentText() == "SECRET_TOKEN"
    grant.reject()  # a grant is offered, not forced
    assert names(widget) == ["SECRET_TOKEN"]
    v = Vault.open(vault_path, keystore=NoKeyring())
    v.unlock(PASSPHRASE)
    assert bytes(v.get("SECRET_TOKEN")) == TOKEN.encode()
    widget.controller.wait()


def test_backing_out_of_the_unlock_zeroes_the_waiting_value(
    qtbot: QtBot, vault_path: Path, db_path: Path
) -> None:
    Vault.create(vault_path, passphrase=PASSPHRASE, use_keyring=False, keystore=NoKeyring(),
                 kdf=FAST_KDF).lock()
    widget = make_view(qtbot, vault_path, db_path)
    value = bytearray(TOKEN.encode())
    widget.import_secret("SECRET_TOKEN", value)
    dialog = widget.active_dialog
    assert isinstance(dialog, UnlockDialog)
    dialog.reject()
    assert not widget.importing and not any(value)
    widget.controller.wait()


def test_an_imported_name_already_taken_is_refused_in_the_editor(
    view: VaultView, qtbot: QtBot
) -> None:
    set_up(view, qtbot)
    add_secret(view, qtbot, "SECRET_TOKEN", "old value")
    view.import_secret("SECRET_TOKEN", bytearray(TOKEN.encode()))
    editor = view.active_dialog
    assert isinstance(editor, SecretEditorDialog)
    click(qtbot, ok_button(editor))
    assert "already exists" in editor.problem.text() and editor.isVisible()
    editor.name.setText("SECRET_TOKEN_2")
    with qtbot.wait_signal(view.controller.names_changed, timeout=10_000):
        click(qtbot, ok_button(editor))
    assert names(view) == ["SECRET_TOKEN", "SECRET_TOKEN_2"]
