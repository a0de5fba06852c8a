"""A Yes/No question that does not block: window-modal, opened with ``open()``, No by default.

Asking with ``exec()`` would run a nested event loop in which signals of the
work going on (an errand, a worker thread) are delivered under the caller's
feet; ``open()`` returns at once and the answer arrives as a call.
"""

from __future__ import annotations

from collections.abc import Callable

from app.qt import QtWidgets

_Button = QtWidgets.QMessageBox.StandardButton


def ask_yes_no(
    parent: QtWidgets.QWidget, title: str, text: str, answered: Callable[[bool], None]
) -> QtWidgets.QMessageBox:
    """Open the question and return it (callers keep it to know one is open, and tests click it).

    Args:
        parent: The window the question is modal to.
        title: The question's title.
        text: The question.
        answered: Called once with True for Yes, False for No or a dismissal;
            the box is deleted afterwards.
    """
    box = QtWidgets.QMessageBox(
        QtWidgets.QMessageBox.Icon.Question, title, text, _Button.Yes | _Button.No, parent
    )
    box.setDefaultButton(_Button.No)

    def finished(result: int) -> None:
        box.deleteLater()
        answered(result == _Button.Yes.value)

    box.finished.connect(finished)
    box.open()
    return box
