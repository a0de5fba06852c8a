"""Keyboard checks shared by the GUI tests: the Tab order and the Alt+letter mnemonics."""

from __future__ import annotations

from app.qt import Qt, QtWidgets

QWidget = QtWidgets.QWidget


def tab_sequence(root: QWidget, start: QWidget, count: int) -> list[QWidget]:
    """The widgets Tab visits from ``start`` (as Qt's focusNextPrevChild does)."""
    seen = [start]
    cursor = start.nextInFocusChain()
    for _ in range(500):
        if len(seen) >= count or cursor is start:
            break
        if (
            not isinstance(cursor, QtWidgets.QTabWidget)  # its tab bar takes the focus
            and cursor.focusPolicy() & Qt.FocusPolicy.TabFocus
            and cursor.isEnabled()
            and cursor.isVisibleTo(root)
            and root.isAncestorOf(cursor)
        ):
            # A spin box's inner line edit takes the focus on the spin box's behalf.
            owner = cursor.parentWidget()
            target = owner if isinstance(owner, QtWidgets.QAbstractSpinBox) else cursor
            if target is not seen[-1]:
                seen.append(target)
        cursor = cursor.nextInFocusChain()
    return seen


def mnemonics(root: QWidget) -> list[str]:
    """The Alt+letter shortcuts of the buttons, labels and tabs visible in ``root``."""
    texts: list[str] = []
    for widget in root.findChildren(QtWidgets.QWidget):
        if not widget.isVisibleTo(root):
            continue
        if isinstance(widget, QtWidgets.QAbstractButton | QtWidgets.QLabel):
            texts.append(widget.text())
        elif isinstance(widget, QtWidgets.QTabBar):
            texts.extend(widget.tabText(i) for i in range(widget.count()))
    keys = []
    for text in texts:
        at = text.replace("&&", "").find("&")
        if at >= 0:
            keys.append(text.replace("&&", "")[at + 1].lower())
    return keys
