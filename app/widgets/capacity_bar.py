"""A bar showing how full a memory level is: tokens used of its capacity."""

from __future__ import annotations

from app.qt import QtWidgets

OK_COLOUR = "#2e7d32"
NEAR_COLOUR = "#f9a825"
OVER_COLOUR = "#c62828"


class CapacityBar(QtWidgets.QProgressBar):
    """``used`` of ``capacity`` tokens; turns amber near the limit and red over it.

    The bar is capped at 100 %, the text is not ("1 800 / 1 500 tokens (over)"),
    so an over-full level is visible at a glance and readable by a screen reader.
    """

    def __init__(self, level: str, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.level = level
        self.used = 0
        self.capacity = 0
        self.truncated = False
        self.setAccessibleName(f"{level.capitalize()} memory capacity")
        self.setTextVisible(True)
        self.setMinimumWidth(160)
        self.set_usage(0, 0)

    @property
    def over(self) -> bool:
        """Whether the level holds more than its capacity."""
        return self.capacity > 0 and self.used > self.capacity

    def set_usage(self, used: int, capacity: int, *, truncated: bool = False) -> None:
        """Show ``used`` tokens of ``capacity`` (``truncated``: the prompt got a cut version)."""
        self.used = max(0, used)
        self.capacity = max(0, capacity)
        self.truncated = truncated
        self.setRange(0, max(1, self.capacity))
        self.setValue(min(self.used, max(1, self.capacity)))
        state = ""
        if self.over:
            state = " (over capacity)"
        elif truncated:
            state = " (cut to fit)"
        text = f"{self.level}: {self.used:,} / {self.capacity:,} tokens{state}"
        self.setFormat(text)
        self.setToolTip(text)
        self.setAccessibleDescription(text)
        ratio = self.used / self.capacity if self.capacity else 0.0
        colour = OVER_COLOUR if ratio > 1.0 else NEAR_COLOUR if ratio >= 0.85 else OK_COLOUR
        self.setStyleSheet(
            "QProgressBar { border: 1px solid #888; border-radius: 3px; text-align: center; }"
            f"QProgressBar::chunk {{ background-color: {colour}; }}"
        )
