"""First-run vault setup: protect the vault with the OS keyring, a passphrase, or both.

When no keyring exists (a headless Linux box, a desktop without a Secret
Service) the dialog says so plainly and asks for a passphrase: Keyless never
falls back to storing secrets in plaintext.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.qt import QtWidgets

MIN_PASSPHRASE = 8

NO_KEYRING_TEXT = (
    "No OS keyring was found on this system (no Secret Service, Keychain or "
    "Credential Manager is reachable). Keyless will protect the vault with a "
    "passphrase only; you will type it each time you unlock. Secrets are never "
    "stored in plaintext."
)
KEYRING_TEXT = (
    "Your OS keyring can hold the vault key, so the vault unlocks without typing. "
    "You can also set a passphrase, to unlock on a machine without that keyring."
)


@dataclass
class VaultSetupChoice:
    """What the user chose; the caller zeroes ``passphrase`` after use."""

    use_keyring: bool
    passphrase: bytearray | None


class VaultSetupDialog(QtWidgets.QDialog):
    """Asks how the new vault is protected; :meth:`choice` holds the answer."""

    def __init__(self, keyring_available: bool, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Set up the vault")
        self.setAccessibleName("Set up the vault")
        self._keyring_available = keyring_available

        intro = QtWidgets.QLabel(
            "The vault keeps your API keys encrypted. The agent never sees them: it gets "
            "vouchers (capability handles) you grant, redeemed by Keyless itself."
        )
        intro.setWordWrap(True)
        self.statement = QtWidgets.QLabel(KEYRING_TEXT if keyring_available else NO_KEYRING_TEXT)
        self.statement.setWordWrap(True)
        self.statement.setObjectName("keyringStatement")
        self.statement.setAccessibleName("Keyring status")
        if not keyring_available:
            self.statement.setStyleSheet("font-weight: bold;")

        self.keyring_box = QtWidgets.QCheckBox("Keep the vault key in the OS &keyring")
        self.keyring_box.setChecked(keyring_available)
        self.keyring_box.setEnabled(keyring_available)
        self.passphrase_box = QtWidgets.QCheckBox("Protect with a &passphrase")
        self.passphrase_box.setChecked(not keyring_available)
        # Without a keyring the passphrase is the only method: not optional.
        self.passphrase_box.setEnabled(keyring_available)

        self.passphrase = QtWidgets.QLineEdit()
        self.passphrase.setEchoMode(QtWidgets.QLineEdit.EchoMode.Password)
        self.passphrase.setAccessibleName("Passphrase")
        self.confirm = QtWidgets.QLineEdit()
        self.confirm.setEchoMode(QtWidgets.QLineEdit.EchoMode.Password)
        self.confirm.setAccessibleName("Repeat passphrase")

        form = QtWidgets.QFormLayout()
        pass_label = QtWidgets.QLabel("&New passphrase:")
        pass_label.setBuddy(self.passphrase)
        confirm_label = QtWidgets.QLabel("&Repeat:")
        confirm_label.setBuddy(self.confirm)
        form.addRow(pass_label, self.passphrase)
        form.addRow(confirm_label, self.confirm)

        self.problem = QtWidgets.QLabel()
        self.problem.setObjectName("problem")
        self.problem.setAccessibleName("Problem")
        self.problem.setStyleSheet("color: #b00020;")
        self.problem.setWordWrap(True)

        self.buttons = QtWidgets.QDialogButtonBox(
            QtWidgets.QDialogButtonBox.StandardButton.Ok
            | QtWidgets.QDialogButtonBox.StandardButton.Cancel
        )
        ok = self.buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Ok)
        ok.setText("Create vault")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.statement)
        layout.addWidget(self.keyring_box)
        layout.addWidget(self.passphrase_box)
        layout.addLayout(form)
        layout.addWidget(self.problem)
        layout.addWidget(self.buttons)

        self.passphrase_box.toggled.connect(self._sync)
        self.keyring_box.toggled.connect(self._sync)
        self._sync()
        self._choice: VaultSetupChoice | None = None

    def _sync(self) -> None:
        wants = self.passphrase_box.isChecked()
        self.passphrase.setEnabled(wants)
        self.confirm.setEnabled(wants)

    def validate(self) -> str | None:
        """Return what is wrong with the form, or None."""
        use_keyring = self.keyring_box.isChecked() and self._keyring_available
        if self.passphrase_box.isChecked():
            text = self.passphrase.text()
            if len(text) < MIN_PASSPHRASE:
                return f"The passphrase needs at least {MIN_PASSPHRASE} characters."
            if text != self.confirm.text():
                return "The two passphrases differ."
        elif not use_keyring:
            return "Choose the keyring, a passphrase, or both."
        return None

    def accept(self) -> None:
        """Check the form; on success remember the choice and clear the fields."""
        problem = self.validate()
        if problem:
            self.problem.setText(problem)
            return
        passphrase = (
            bytearray(self.passphrase.text().encode()) if self.passphrase_box.isChecked() else None
        )
        self._choice = VaultSetupChoice(
            use_keyring=self.keyring_box.isChecked() and self._keyring_available,
            passphrase=passphrase,
        )
        self.passphrase.clear()
        self.confirm.clear()
        super().accept()

    def choice(self) -> VaultSetupChoice | None:
        """The accepted choice, or None if the dialog was cancelled."""
        return self._choice
