"""Add a secret or replace its value; the value field is always masked.

A value found elsewhere (a credential withheld from the agent) can be
pre-filled: it goes straight into the masked field, and the buffer it came in
is zeroed at once.
"""

from __future__ import annotations

import re

from app.dialogs.form import accept_buttons, labelled_row, masked_field, problem_label
from app.qt import Qt, QtWidgets

# The vault enforces its own rule; this mirrors it for an early, clear message.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class SecretEditorDialog(QtWidgets.QDialog):
    """Asks for a name (new secrets only) and a value (masked).

    Args:
        name: The secret being edited, or None to add a new one.
        existing: Names already taken (a new secret may not reuse one).
        suggested_name: A new secret's name to start with.
        value: A value to start with; zeroed here once it is in the masked field.
        note: A line above the form saying where the value comes from.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        existing: tuple[str, ...] = (),
        suggested_name: str = "",
        value: bytearray | None = None,
        note: str = "",
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._editing = name is not None
        self._existing = existing
        self._value: bytearray | None = None
        title = f"Replace the value of {name}" if name else "Add a secret"
        if value is not None and not name:
            title = "Move a credential into the vault"
        self.setWindowTitle(title)
        self.setAccessibleName(title)

        self.name = QtWidgets.QLineEdit(name or suggested_name)
        self.name.setReadOnly(self._editing)
        self.name.setAccessibleName("Secret name")
        self.name.setPlaceholderText("e.g. GITHUB_TOKEN")
        self.value = masked_field("Secret value")
        self.value.setPlaceholderText("paste the key; it stays masked")
        if value is not None:
            # The str Qt needs is a copy Python cannot zero; it lives only in
            # the masked field, which accept() and reject() clear.
            self.value.setText(bytes(value).decode("utf-8", errors="replace"))
            value[:] = bytes(len(value))

        form = QtWidgets.QFormLayout()
        labelled_row(form, "&Name:", self.name)
        labelled_row(form, "&Value:", self.value)

        self.problem = problem_label()
        self.buttons = accept_buttons(self, accept=QtWidgets.QDialogButtonBox.StandardButton.Save)

        layout = QtWidgets.QVBoxLayout(self)
        if note:
            self.note = QtWidgets.QLabel(note)
            self.note.setObjectName("note")
            self.note.setWordWrap(True)
            self.note.setTextFormat(Qt.TextFormat.PlainText)
            layout.addWidget(self.note)
        layout.addLayout(form)
        layout.addWidget(self.problem)
        layout.addWidget(self.buttons)
        (self.value if self._editing else self.name).setFocus()

    def validate(self) -> str | None:
        """Return what is wrong with the form, or None."""
        name = self.name.text().strip()
        if not self._editing:
            if not NAME_RE.match(name):
                return (
                    "Name: 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit."
                )
            if name in self._existing:
                return f"A secret named {name} already exists; edit it instead."
        if not self.value.text():
            return "The value is empty."
        return None

    def accept(self) -> None:
        """Take the value into a buffer, clear the field and close."""
        problem = self.validate()
        if problem:
            self.problem.setText(problem)
            return
        self._value = bytearray(self.value.text().encode())
        self.value.clear()
        super().accept()

    def reject(self) -> None:
        """Clear the value field and close."""
        self.value.clear()
        super().reject()

    def secret_name(self) -> str:
        """The name typed or edited."""
        return self.name.text().strip()

    def take_value(self) -> bytearray | None:
        """Hand over the value buffer (the caller zeroes it); None after the first call."""
        value, self._value = self._value, None
        return value
