"""Unlock the vault: with the OS keyring, or by typing the passphrase."""

from __future__ import annotations

from app.dialogs.form import accept_buttons, masked_field, problem_label
from app.qt import QtWidgets


class UnlockDialog(QtWidgets.QDialog):
    """Asks for the passphrase; :meth:`take_passphrase` hands it over once.

    With ``keyring_available`` a second button unlocks through the keyring
    instead (then :meth:`use_keyring` is True and no passphrase is taken);
    without ``passphrase_enabled`` (a keyring-only vault) it is the only way.
    """

    def __init__(
        self,
        *,
        keyring_available: bool,
        passphrase_enabled: bool = True,
        problem: str = "",
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Unlock the vault")
        self.setAccessibleName("Unlock the vault")
        self._use_keyring = False
        self._passphrase: bytearray | None = None

        self.passphrase = masked_field("Passphrase")
        label = QtWidgets.QLabel("&Passphrase:")
        label.setBuddy(self.passphrase)

        self.problem = problem_label(problem)
        self.buttons = accept_buttons(self, text="&Unlock")
        ok = self.buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Ok)
        self.keyring_button = self.buttons.addButton(
            "Use &keyring", QtWidgets.QDialogButtonBox.ButtonRole.ActionRole
        )
        self.keyring_button.setVisible(keyring_available)
        self.keyring_button.setAccessibleName("Unlock with the OS keyring")
        self.keyring_button.clicked.connect(self._accept_keyring)

        row = QtWidgets.QHBoxLayout()
        row.addWidget(label)
        row.addWidget(self.passphrase, 1)
        if not passphrase_enabled:
            # A keyring-only vault: nothing to type.
            label.setVisible(False)
            self.passphrase.setVisible(False)
            ok.setVisible(False)
            self.keyring_button.setDefault(True)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.problem)
        layout.addWidget(self.buttons)
        self.passphrase.setFocus()

    def _accept_keyring(self) -> None:
        self._use_keyring = True
        self.passphrase.clear()
        super().accept()

    def accept(self) -> None:
        """Take the typed passphrase (refusing an empty one) and close."""
        if not self.passphrase.text():
            self.problem.setText("Type the passphrase.")
            return
        self._passphrase = bytearray(self.passphrase.text().encode())
        self.passphrase.clear()
        super().accept()

    def use_keyring(self) -> bool:
        """Whether the user chose to unlock with the keyring."""
        return self._use_keyring

    def take_passphrase(self) -> bytearray | None:
        """Hand over the passphrase buffer (the caller zeroes it); None after the first call."""
        passphrase, self._passphrase = self._passphrase, None
        return passphrase
