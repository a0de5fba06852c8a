"""Dismissible banners that show a problem, or offer an action, above a screen's content."""

from __future__ import annotations

from typing import Literal

from app.qt import Qt, QtWidgets, Signal

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


class OfferBanner(QtWidgets.QFrame):
    """An info strip that offers one action: a message, an action button and Dismiss.

    Unlike :class:`Banner` it never closes by itself; the owner removes it once
    :attr:`accepted` or :attr:`dismissed` fired.

    Args:
        key: Names what the banner offers; both signals carry it.
        text: The message.
        action: The action button's text (with its ``&`` mnemonic).
        parent: The Qt parent.
    """

    accepted = Signal(str)
    dismissed = Signal(str)

    def __init__(
        self, key: str, text: str, action: str, parent: QtWidgets.QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.key = key
        self.setObjectName("offerBanner")
        self.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
        background, foreground = _COLOURS["info"]
        self.setStyleSheet(
            f"#offerBanner {{ background: {background}; border: 1px solid {foreground};"
            f" border-radius: 4px; }} #offerText {{ color: {foreground}; }}"
        )
        self.label = QtWidgets.QLabel(text)
        self.label.setObjectName("offerText")
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.TextFormat.PlainText)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.action_button = QtWidgets.QPushButton(action)
        self.action_button.setObjectName("offerAction")
        self.dismiss_button = QtWidgets.QPushButton("Dismiss")
        self.dismiss_button.setObjectName("offerDismiss")
        self.dismiss_button.setAccessibleName(f"Dismiss: {text}")
        self.setAccessibleName(f"info: {text}")
        self.action_button.clicked.connect(lambda: self.accepted.emit(self.key))
        self.dismiss_button.clicked.connect(lambda: self.dismissed.emit(self.key))
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(10, 6, 6, 6)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.action_button, 0, Qt.AlignmentFlag.AlignTop)
        layout.addWidget(self.dismiss_button, 0, Qt.AlignmentFlag.AlignTop)

    def text(self) -> str:
        """The message shown."""
        return self.label.text()
