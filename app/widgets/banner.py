"""A dismissible banner that shows a problem in place, above a screen's content."""

from __future__ import annotations

from typing import Literal

from app.qt import Qt, QtWidgets

Severity = Literal["info", "warning", "error"]

_COLOURS: dict[str, tuple[str, str]] = {
    "info": ("#e8f1fb", "#1f4e79"),
    "warning": ("#fff6db", "#7a5200"),
    "error": ("#fdecec", "#8a1020"),
}


class Banner(QtWidgets.QFrame):
    """A coloured strip with a message and a close button; hidden while empty."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("banner")
        self.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
        self._severity: Severity = "info"
        self.label = QtWidgets.QLabel()
        self.label.setObjectName("bannerText")
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.close_button = QtWidgets.QToolButton()
        self.close_button.setObjectName("bannerClose")
        self.close_button.setText("✕")
        self.close_button.setAccessibleName("Dismiss message")
        self.close_button.setToolTip("Dismiss")
        self.close_button.clicked.connect(self.clear)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(10, 6, 6, 6)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.close_button, 0, Qt.AlignmentFlag.AlignTop)
        self.hide()

    @property
    def severity(self) -> Severity:
        """The severity of the message shown."""
        return self._severity

    def text(self) -> str:
        """The message shown ('' when hidden)."""
        return "" if self.isHidden() else self.label.text()

    def show_message(self, text: str, severity: Severity = "error") -> None:
        """Show ``text`` with the colours of ``severity``."""
        background, foreground = _COLOURS[severity]
        self._severity = severity
        self.setStyleSheet(
            f"#banner {{ background: {background}; border: 1px solid {foreground};"
            f" border-radius: 4px; }} #bannerText {{ color: {foreground}; }}"
        )
        self.label.setText(text)
        self.setAccessibleName(f"{severity}: {text}")
        self.show()

    def clear(self) -> None:
        """Hide the banner."""
        self.label.clear()
        self.hide()
