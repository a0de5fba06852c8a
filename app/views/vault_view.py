"""The vault screen: setup, unlock and lock, secrets (masked) and capability grants.

Values are never listed. A value is shown only when the user asks to reveal
one, for :attr:`VaultView.reveal_ms` milliseconds; then the field is cleared and
the buffer that held it is zeroed. Dialogs open window-modal with ``open()``
(not ``exec()``), so the event loop keeps running and tests can drive them.

:meth:`VaultView.import_secret` moves a value found elsewhere (a credential
withheld from the agent) into the vault: it sets the vault up or unlocks it
first when needed, opens the secret editor pre-filled (masked), and once the
secret is stored offers the grant editor for it. The value is zeroed as soon
as it is in the editor's masked field, or when the user backs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from app.controllers.vault_controller import GrantRow, VaultController, zero
from app.dialogs.grant_editor import GrantEditorDialog
from app.dialogs.secret_editor import SecretEditorDialog
from app.dialogs.unlock import UnlockDialog
from app.dialogs.vault_setup import VaultSetupDialog
from app.qt import QtGui, QTimer, QtWidgets

REVEAL_MS = 5000
GRANT_COLUMNS = ("Handle", "Secret", "Methods", "Host", "Path", "Expires", "Uses left", "Status")

STATE_TEXT = {
    "missing": "No vault yet. Set one up to store API keys the agent can use without seeing.",
    "locked": "The vault is locked.",
    "unlocked": "The vault is unlocked.",
}


def _format_expiry(row: GrantRow, now: datetime) -> str:
    if row.expires_at is None:
        return "never"
    when = row.expires_at.astimezone()
    return when.strftime("%Y-%m-%d %H:%M") + (" (expired)" if row.expired(now) else "")


def grant_status(row: GrantRow, now: datetime) -> str:
    """One word for the grant's state: revoked, expired, used up or active."""
    if row.revoked:
        return "revoked"
    if row.expired(now):
        return "expired"
    if row.uses_left is not None and row.uses_left <= 0:
        return "used up"
    return "active"


@dataclass
class _Import:
    """A value waiting for the vault to be ready (set up or unlocked)."""

    name: str
    value: bytearray
    note: str


class VaultView(QtWidgets.QWidget):
    """The vault page; all work goes through its :class:`VaultController`."""

    def __init__(
        self, controller: VaultController, parent: QtWidgets.QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.controller = controller
        # Qt ownership: the controller (its worker thread, its timers) is
        # destroyed with the page, on the GUI thread, never by Python's
        # garbage collector running on some other thread.
        controller.setParent(self)
        self.reveal_ms = REVEAL_MS
        self.active_dialog: QtWidgets.QDialog | None = None
        self._names: list[str] = []
        self._revealed: bytearray | None = None
        self._import: _Import | None = None
        self._grant_next: str | None = None
        self._state_known = False
        self._state = "missing"
        self.setAccessibleName("Vault")

        # State row.
        self.state_label = QtWidgets.QLabel(STATE_TEXT["missing"])
        self.state_label.setObjectName("vaultState")
        self.state_label.setAccessibleName("Vault state")
        self.state_label.setWordWrap(True)
        self.setup_button = QtWidgets.QPushButton("&Set up vault…")
        self.unlock_button = QtWidgets.QPushButton("&Unlock…")
        self.lock_button = QtWidgets.QPushButton("&Lock")
        state_row = QtWidgets.QHBoxLayout()
        state_row.addWidget(self.state_label, 1)
        for button in (self.setup_button, self.unlock_button, self.lock_button):
            state_row.addWidget(button)

        # Secrets.
        self.secret_list = QtWidgets.QListWidget()
        self.secret_list.setAccessibleName("Secrets")
        self.secret_list.setToolTip("Secret names only; values are never listed.")
        self.add_button = QtWidgets.QPushButton("&Add…")
        self.edit_button = QtWidgets.QPushButton("&Replace value…")
        self.delete_button = QtWidgets.QPushButton("&Delete")
        self.reveal_button = QtWidgets.QPushButton("Re&veal for a few seconds")
        self.reveal_field = QtWidgets.QLineEdit()
        self.reveal_field.setReadOnly(True)
        self.reveal_field.setEchoMode(QtWidgets.QLineEdit.EchoMode.Password)
        self.reveal_field.setPlaceholderText("value hidden")
        self.reveal_field.setAccessibleName("Revealed value")
        self.reveal_field.setFocusPolicy(self.reveal_field.focusPolicy())
        self._reveal_timer = QTimer(self)
        self._reveal_timer.setSingleShot(True)
        self._reveal_timer.timeout.connect(self.hide_value)

        secret_buttons = QtWidgets.QVBoxLayout()
        for button in (self.add_button, self.edit_button, self.delete_button, self.reveal_button):
            secret_buttons.addWidget(button)
        secret_buttons.addWidget(self.reveal_field)
        secret_buttons.addStretch(1)
        secrets_box = QtWidgets.QGroupBox("Secrets")
        secrets_layout = QtWidgets.QHBoxLayout(secrets_box)
        secrets_layout.addWidget(self.secret_list, 1)
        secrets_layout.addLayout(secret_buttons)

        # Grants.
        self.grant_table = QtWidgets.QTableWidget(0, len(GRANT_COLUMNS))
        self.grant_table.setHorizontalHeaderLabels(list(GRANT_COLUMNS))
        self.grant_table.setAccessibleName("Capability grants")
        self.grant_table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.grant_table.setSelectionBehavior(
            QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows
        )
        self.grant_table.setSelectionMode(
            QtWidgets.QAbstractItemView.SelectionMode.SingleSelection
        )
        self.grant_table.verticalHeader().setVisible(False)
        self.grant_table.horizontalHeader().setStretchLastSection(True)
        self.grant_table.setTabKeyNavigation(False)
        self.grant_table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 8)
        self.grant_button = QtWidgets.QPushButton("&Grant…")
        self.revoke_button = QtWidgets.QPushButton("Re&voke")
        self.revoke_button.setText("Rev&oke")
        grant_buttons = QtWidgets.QVBoxLayout()
        grant_buttons.addWidget(self.grant_button)
        grant_buttons.addWidget(self.revoke_button)
        grant_buttons.addStretch(1)
        grants_box = QtWidgets.QGroupBox("Capability grants (what the agent may do with a secret)")
        grants_layout = QtWidgets.QHBoxLayout(grants_box)
        grants_layout.addWidget(self.grant_table, 1)
        grants_layout.addLayout(grant_buttons)

        self.message = QtWidgets.QLabel()
        self.message.setObjectName("message")
        self.message.setAccessibleName("Message")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(
            self.message.textInteractionFlags()
            | QtGui.Qt.TextInteractionFlag.TextSelectableByMouse
        )

        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(state_row)
        layout.addWidget(secrets_box, 1)
        layout.addWidget(grants_box, 2)
        layout.addWidget(self.message)

        self.setTabOrder(self.setup_button, self.unlock_button)
        self.setTabOrder(self.unlock_button, self.lock_button)
        self.setTabOrder(self.lock_button, self.secret_list)
        self.setTabOrder(self.secret_list, self.add_button)
        self.setTabOrder(self.add_button, self.edit_button)
        self.setTabOrder(self.edit_button, self.delete_button)
        self.setTabOrder(self.delete_button, self.reveal_button)
        self.setTabOrder(self.reveal_button, self.reveal_field)
        self.setTabOrder(self.reveal_field, self.grant_table)
        self.setTabOrder(self.grant_table, self.grant_button)
        self.setTabOrder(self.grant_button, self.revoke_button)

        self.setup_button.clicked.connect(self.open_setup)
        self.unlock_button.clicked.connect(lambda: self.open_unlock())
        self.lock_button.clicked.connect(controller.lock)
        self.add_button.clicked.connect(self.open_add)
        self.edit_button.clicked.connect(self.open_edit)
        self.delete_button.clicked.connect(self.confirm_delete)
        self.reveal_button.clicked.connect(self.request_reveal)
        self.grant_button.clicked.connect(lambda: self.open_grant())
        self.revoke_button.clicked.connect(self.revoke_selected)
        self.secret_list.itemSelectionChanged.connect(self._sync_buttons)
        self.grant_table.itemSelectionChanged.connect(self._sync_buttons)

        controller.state_changed.connect(self._on_state_reported)
        controller.names_changed.connect(self._on_names)
        controller.grants_changed.connect(self._on_grants)
        controller.secret_revealed.connect(self._on_revealed)
        controller.grant_created.connect(self._on_grant_created)
        controller.error.connect(self.show_error)
        controller.busy_changed.connect(self._on_busy)
        self._on_state(controller.state)
        controller.refresh()

    # -- state ----------------------------------------------------------------------

    def _on_state_reported(self, state: str) -> None:
        self._state_known = True
        self._on_state(state)

    def _on_state(self, state: str) -> None:
        self._state = state
        text = STATE_TEXT.get(state, state)
        if state == "unlocked":
            text += (
                f" It locks itself after {self.controller.auto_lock_minutes:g} min without use."
                " New grants belong to session " + self.controller.session_id + "."
            )
        self.state_label.setText(text)
        self.state_label.setToolTip(str(self.controller.vault_path))
        if state != "unlocked":
            self.hide_value()
            self._continue_import()
        self._sync_buttons()

    def _on_busy(self, busy: bool) -> None:
        self.setCursor(
            QtGui.Qt.CursorShape.BusyCursor if busy else QtGui.Qt.CursorShape.ArrowCursor
        )

    def _sync_buttons(self) -> None:
        unlocked = self._state == "unlocked"
        selected = self.selected_secret() is not None
        self.setup_button.setVisible(self._state == "missing")
        self.unlock_button.setVisible(self._state == "locked")
        self.lock_button.setVisible(unlocked)
        self.secret_list.setEnabled(unlocked)
        self.add_button.setEnabled(unlocked)
        self.edit_button.setEnabled(unlocked and selected)
        self.delete_button.setEnabled(unlocked and selected)
        self.reveal_button.setEnabled(unlocked and selected)
        self.grant_table.setEnabled(unlocked)
        self.grant_button.setEnabled(unlocked and bool(self._names))
        self.revoke_button.setEnabled(unlocked and self.selected_grant() is not None)

    def show_error(self, text: str) -> None:
        """Show a problem in the message line (and in an open dialog, if any)."""
        self.message.setStyleSheet("color: #b00020;")
        self.message.setText(text)
        self._grant_next = None
        if self.active_dialog is None and self._state == "locked" and "passphrase" in text:
            # A wrong passphrase: ask again, saying why.
            self.open_unlock(problem=text)
        if self.active_dialog is None and self._state != "unlocked":
            self._drop_import()  # the vault did not open; the value is not kept waiting

    def show_info(self, text: str) -> None:
        """Show a neutral message in the message line."""
        self.message.setStyleSheet("")
        self.message.setText(text)

    # -- setup and unlock -----------------------------------------------------------------

    def _track(self, dialog: QtWidgets.QDialog) -> None:
        self.active_dialog = dialog
        dialog.finished.connect(lambda _result: self._dialog_closed(dialog))
        dialog.open()

    def _dialog_closed(self, dialog: QtWidgets.QDialog) -> None:
        if self.active_dialog is dialog:
            self.active_dialog = None
        dialog.deleteLater()

    def open_setup(self) -> None:
        """Ask how to protect the new vault, then create it."""
        dialog = VaultSetupDialog(self.controller.keyring_available, self)
        dialog.rejected.connect(self._drop_import)

        def accepted() -> None:
            choice = dialog.choice()
            if choice is not None:
                self.show_info("Creating the vault…")
                self.controller.create(
                    use_keyring=choice.use_keyring, passphrase=choice.passphrase
                )

        dialog.accepted.connect(accepted)
        self._track(dialog)

    def open_unlock(self, problem: str = "") -> None:
        """Ask for the passphrase (or the keyring) and unlock."""
        methods = self.controller.unlock_methods or ("keyring", "passphrase")
        dialog = UnlockDialog(
            keyring_available=self.controller.keyring_available and "keyring" in methods,
            passphrase_enabled="passphrase" in methods,
            problem=problem,
            parent=self,
        )
        dialog.rejected.connect(self._drop_import)

        def accepted() -> None:
            self.show_info("Unlocking…")
            self.controller.unlock(None if dialog.use_keyring() else dialog.take_passphrase())

        dialog.accepted.connect(accepted)
        self._track(dialog)

    # -- secrets --------------------------------------------------------------------------

    def _on_names(self, names: list[str]) -> None:
        current = self.selected_secret()
        self._names = list(names)
        self.secret_list.clear()
        self.secret_list.addItems(self._names)
        if current in self._names:
            self.secret_list.setCurrentRow(self._names.index(current))
        if self._state == "unlocked" and self.message.text().endswith("…"):
            self.show_info("")
        self._sync_buttons()
        if self._state == "unlocked":
            name, self._grant_next = self._grant_next, None
            if name is not None and name in self._names and self.active_dialog is None:
                self.open_grant(name)
            self._continue_import()

    def selected_secret(self) -> str | None:
        """The secret selected in the list, if any."""
        # selectedItems(), not currentItem(): no None crosses the binding
        # (PySide6 6.12.0 drops a reference to None on every such return).
        items = self.secret_list.selectedItems()
        return items[0].text() if items else None

    def open_add(self) -> None:
        """Ask for a new secret's name and value."""
        dialog = SecretEditorDialog(existing=tuple(self._names), parent=self)

        def accepted() -> None:
            value = dialog.take_value()
            if value is not None:
                self.controller.add_secret(dialog.secret_name(), value)

        dialog.accepted.connect(accepted)
        self._track(dialog)

    def open_edit(self) -> None:
        """Ask for a new value of the selected secret."""
        name = self.selected_secret()
        if name is None:
            return
        dialog = SecretEditorDialog(name, parent=self)

        def accepted() -> None:
            value = dialog.take_value()
            if value is not None:
                self.controller.update_secret(name, value)

        dialog.accepted.connect(accepted)
        self._track(dialog)

    def import_secret(self, name: str, value: bytearray, *, note: str = "") -> None:
        """Offer to store ``value`` as ``name``, then to grant it to this session.

        Sets the vault up or unlocks it first when needed. The view owns
        ``value`` from now on: it is zeroed once it is in the secret editor's
        masked field, or when the user backs out of setup or unlock.

        Args:
            name: The suggested secret name (the user may change it).
            value: The secret.
            note: Where the value was found, shown in the editor.
        """
        self._drop_import()
        self._import = _Import(name, value, note)
        self._continue_import()

    @property
    def importing(self) -> bool:
        """Whether a value waits for the vault to be ready."""
        return self._import is not None

    def _continue_import(self) -> None:
        """Take the waiting value one step on: setup, unlock, or the secret editor."""
        if self._import is None or self.active_dialog is not None or not self._state_known:
            return
        if self._state == "missing":
            self.show_info("Set up the vault to move the credential into it.")
            self.open_setup()
        elif self._state == "locked":
            self.show_info("Unlock the vault to move the credential into it.")
            self.open_unlock()
        else:
            pending, self._import = self._import, None
            self._open_import_editor(pending)

    def _open_import_editor(self, pending: _Import) -> None:
        dialog = SecretEditorDialog(
            existing=tuple(self._names),
            suggested_name=pending.name,
            value=pending.value,
            note=pending.note,
            parent=self,
        )
        zero(pending.value)  # the editor zeroed it too; never rely on one place alone

        def accepted() -> None:
            value = dialog.take_value()
            if value is not None:
                self._grant_next = dialog.secret_name()
                self.controller.add_secret(dialog.secret_name(), value)

        dialog.accepted.connect(accepted)
        self._track(dialog)

    def _drop_import(self) -> None:
        pending, self._import = self._import, None
        if pending is not None:
            zero(pending.value)

    def confirm_delete(self) -> None:
        """Ask before deleting the selected secret."""
        name = self.selected_secret()
        if name is None:
            return
        box = QtWidgets.QMessageBox(
            QtWidgets.QMessageBox.Icon.Warning,
            "Delete secret",
            f"Delete the secret {name}? Grants that use it stop working.",
            QtWidgets.QMessageBox.StandardButton.Yes | QtWidgets.QMessageBox.StandardButton.No,
            self,
        )
        box.setDefaultButton(QtWidgets.QMessageBox.StandardButton.No)
        box.accepted.connect(lambda: self.controller.delete_secret(name))
        self._track(box)

    def request_reveal(self) -> None:
        """Ask the controller for the selected value (explicit request only)."""
        name = self.selected_secret()
        if name is not None:
            self.controller.reveal(name)

    def _on_revealed(self, name: str, value: bytearray) -> None:
        self.hide_value()
        self._revealed = value
        # The str Qt needs is an immutable copy Python cannot zero; it lives
        # only as long as the field shows it.
        self.reveal_field.setText(bytes(value).decode(errors="replace"))
        self.reveal_field.setEchoMode(QtWidgets.QLineEdit.EchoMode.Normal)
        self.reveal_field.setAccessibleDescription(f"Value of {name}, hidden again shortly")
        self.show_info(f"Showing {name} for {self.reveal_ms // 1000 or 1} s.")
        self._reveal_timer.start(self.reveal_ms)

    def hide_value(self) -> None:
        """Re-mask the revealed value and zero its buffer."""
        self._reveal_timer.stop()
        self.reveal_field.clear()
        self.reveal_field.setEchoMode(QtWidgets.QLineEdit.EchoMode.Password)
        self.reveal_field.setAccessibleDescription("")
        if self._revealed is not None:
            zero(self._revealed)
            self._revealed = None
            self.show_info("")

    @property
    def revealing(self) -> bool:
        """Whether a value is shown right now."""
        return self._revealed is not None

    # -- grants ---------------------------------------------------------------------------

    def _on_grants(self, rows: list[GrantRow]) -> None:
        now = datetime.now(UTC)
        self._grants = list(rows)
        self.grant_table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            uses = "unlimited" if row.uses_left is None else str(row.uses_left)
            if row.max_uses is not None and row.uses_left is not None:
                uses = f"{row.uses_left} of {row.max_uses}"
            cells = (
                row.handle,
                row.secret_name,
                ", ".join(row.methods),
                row.host,
                row.path_pattern,
                _format_expiry(row, now),
                uses,
                grant_status(row, now),
            )
            live = cells[7] == "active"
            for c, text in enumerate(cells):
                item = QtWidgets.QTableWidgetItem(text)
                item.setToolTip(f"{row.description}\nsession: {row.session_id}")
                if not live:
                    item.setForeground(QtGui.QBrush(QtGui.QColor("#888")))
                self.grant_table.setItem(r, c, item)
        self.grant_table.resizeColumnsToContents()
        self._sync_buttons()

    def selected_grant(self) -> GrantRow | None:
        """The grant selected in the table, if any."""
        rows = self.grant_table.selectionModel().selectedRows()
        grants = getattr(self, "_grants", [])
        if not rows or rows[0].row() >= len(grants):
            return None
        grant: GrantRow = grants[rows[0].row()]
        return grant

    def open_grant(self, secret: str | None = None) -> None:
        """Ask for the scopes of a new grant (of ``secret``, else the selected one)."""
        dialog = GrantEditorDialog(list(self._names), parent=self)
        selected = secret or self.selected_secret()
        if selected is not None:
            dialog.secret.setCurrentText(selected)

        def accepted() -> None:
            request = dialog.request()
            if request is not None:
                self.controller.create_grant(request)

        dialog.accepted.connect(accepted)
        self._track(dialog)

    def _on_grant_created(self, handle: str) -> None:
        self.show_info(f"Granted {handle}.")

    def revoke_selected(self) -> None:
        """Revoke the selected grant."""
        grant = self.selected_grant()
        if grant is not None and not grant.revoked:
            self.controller.revoke_grant(grant.handle)
