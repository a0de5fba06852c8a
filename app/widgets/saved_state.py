"""The Settings screen's "Saved model state" section: the disk cap, the disk used, a delete.

When a session is left, the agent's KV state (what the model has read of the
conversation) is saved so that reopening the session does not evaluate it
all again. This section shows how much disk those files take, sets the cap
(``kv_state_cap_mb``; oldest files go first, 0 turns saving off) and deletes
them all after asking. It only shows and asks: the page's controller does
the work.
"""

from __future__ import annotations

from app.qt import QtWidgets, Signal
from app.widgets.question import ask_yes_no

MAX_CAP_MB = 1_048_576  # as AppSettings.kv_state_cap_mb allows
MB = 1024 * 1024


def megabytes(size: int) -> str:
    """Bytes in the cap's unit (MB of 1024 × 1024 bytes, as the cap counts them)."""
    return f"{size / MB:.1f} MB"


class SavedStateBox(QtWidgets.QGroupBox):
    """The cap (MB, 0 = off), the disk used now and "Delete saved states".

    Signals:
        cap_chosen: The cap in MB the user applied.
        delete_requested: The user confirmed deleting every saved state.
    """

    cap_chosen = Signal(int)
    delete_requested = Signal()

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__("Saved model state", parent)
        self.setObjectName("savedModelState")
        self.cap = QtWidgets.QSpinBox()
        self.cap.setObjectName("kvStateCap")
        self.cap.setRange(0, MAX_CAP_MB)
        self.cap.setSingleStep(256)
        self.cap.setSuffix(" MB")
        self.cap.setSpecialValueText("Off (nothing saved)")
        self.cap.setAccessibleName("Saved model state cap")
        self.cap.setToolTip("The most disk sessions' saved model state may take; 0 turns it off.")
        cap_label = QtWidgets.QLabel("&Keep up to:")
        cap_label.setBuddy(self.cap)
        self.apply_button = QtWidgets.QPushButton("Appl&y")
        self.apply_button.setAccessibleName("Apply the saved model state cap")
        self.usage = QtWidgets.QLabel("Measuring…")
        self.usage.setObjectName("kvStateUsage")
        self.usage.setAccessibleName("Saved model state disk use")
        # No mnemonic: deleting is never one keystroke away (and it asks first).
        self.delete_button = QtWidgets.QPushButton("Delete saved states…")
        self.delete_button.setAccessibleName("Delete saved model states")
        note = QtWidgets.QLabel(
            "A session's model state is saved when you leave it, so reopening it does not "
            "read the whole conversation again. Past the cap the oldest go first; "
            "deleting them loses nothing but that time."
        )
        note.setWordWrap(True)
        cap_row = QtWidgets.QHBoxLayout()
        cap_row.addWidget(cap_label)
        cap_row.addWidget(self.cap, 1)
        cap_row.addWidget(self.apply_button)
        use_row = QtWidgets.QHBoxLayout()
        use_row.addWidget(self.usage, 1)
        use_row.addWidget(self.delete_button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(cap_row)
        layout.addLayout(use_row)
        layout.addWidget(note)
        self.delete_question: QtWidgets.QMessageBox | None = None
        self._files = 0
        self.apply_button.clicked.connect(lambda: self.cap_chosen.emit(self.cap.value()))
        self.delete_button.clicked.connect(self.ask_delete)
        self.delete_button.setEnabled(False)

    def show_cap(self, cap_mb: int) -> None:
        """Show the saved cap."""
        self.cap.setValue(cap_mb)

    def show_usage(self, files: int, size: int) -> None:
        """Show how many state files there are and the bytes they take."""
        self._files = files
        if files == 0:
            self.usage.setText("Disk used: none (no saved state)")
        else:
            noun = "session" if files == 1 else "sessions"
            self.usage.setText(f"Disk used: {megabytes(size)} ({files} {noun})")
        self.delete_button.setEnabled(files > 0)

    def ask_delete(self) -> None:
        """Ask, then emit :attr:`delete_requested` on Yes."""
        if self.delete_question is not None or self._files == 0:
            return
        noun = "session" if self._files == 1 else "sessions"
        self.delete_question = ask_yes_no(
            self,
            "Delete saved model states?",
            f"Delete the saved model state of {self._files} {noun}? Nothing in the "
            "sessions is lost: reopening one reads its conversation again, which takes longer.",
            self._delete_answered,
        )

    def _delete_answered(self, yes: bool) -> None:
        self.delete_question = None
        if yes:
            self.delete_requested.emit()
