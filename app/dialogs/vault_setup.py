"""First-run vault setup: protect the vault with the OS keyring, a passphrase, or both.

When no keyring exists (a headless Linux box, a desktop without a Secret
Service) the dialog says so plainly and asks for a passphrase: Keyless never
falls back to storing secrets in plaintext.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.dialogs.form import accept_buttons, labelled_row, masked_field, problem_label
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

        self.passphrase = masked_field("Passphrase")
        self.confirm = masked_field("Repeat passphrase")

        form = QtWidgets.QFormLayout()
        labelled_row(form, "&New passphrase:", self.passphrase)
        labelled_row(form, "&Repeat:", self.confirm)

        self.problem = problem_label()
        self.buttons = accept_buttons(self, text="Create vault")

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
