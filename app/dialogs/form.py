"""The parts every vault dialog's form is made of: masked fields, labelled rows, a problem line.

One place for them keeps the dialogs alike to a screen-reader user (the same
accessible names, the same red problem line) and short to read.
"""

from __future__ import annotations

from app.qt import QtWidgets

PROBLEM_COLOUR = "#b00020"
_Button = QtWidgets.QDialogButtonBox.StandardButton


def masked_field(accessible_name: str) -> QtWidgets.QLineEdit:
    """A line edit that never shows what is typed (passphrases, secret values)."""
    field = QtWidgets.QLineEdit()
    field.setEchoMode(QtWidgets.QLineEdit.EchoMode.Password)
    field.setAccessibleName(accessible_name)
    return field


def labelled_row(
    form: QtWidgets.QFormLayout,
    text: str,
    field: QtWidgets.QWidget,
    *,
    buddy: QtWidgets.QWidget | None = None,
) -> QtWidgets.QLabel:
    """Add ``text`` (with its ``&`` mnemonic) and ``field`` as a row; the label focuses ``buddy``.

    Args:
        form: The form to add the row to.
        text: The label, e.g. ``"&Name:"``.
        field: The row's widget.
        buddy: What the mnemonic focuses (default: ``field``).

    Returns:
        The label.
    """
    label = QtWidgets.QLabel(text)
    label.setBuddy(buddy or field)
    form.addRow(label, field)
    return label


def problem_label(text: str = "") -> QtWidgets.QLabel:
    """The red line under a form that says what is wrong (object and accessible name "problem")."""
    label = QtWidgets.QLabel(text)
    label.setObjectName("problem")
    label.setAccessibleName("Problem")
    label.setStyleSheet(f"color: {PROBLEM_COLOUR};")
    label.setWordWrap(True)
    return label


def accept_buttons(
    dialog: QtWidgets.QDialog, *, accept: _Button = _Button.Ok, text: str | None = None
) -> QtWidgets.QDialogButtonBox:
    """``accept`` and Cancel, wired to the dialog's ``accept()`` and ``reject()``.

    Args:
        dialog: The dialog the buttons close.
        accept: The accepting standard button (Ok, Save).
        text: The accepting button's own text (e.g. ``"&Unlock"``), if not the standard one.
    """
    buttons = QtWidgets.QDialogButtonBox(accept | _Button.Cancel)
    if text is not None:
        buttons.button(accept).setText(text)
    buttons.accepted.connect(dialog.accept)
    buttons.rejected.connect(dialog.reject)
    return buttons
