"""The context gauge: what the model's sink-style rolling KV cache holds.

The bar is the whole context (``n_ctx``): the attention sinks at the start,
then the rolling window, then free space. Tokens evicted from the middle are
shown as a hatched stub before the bar with their count, because they are no
longer in the cache but the conversation still went through them.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.qt import Qt, QtCore, QtGui, QtWidgets

SINK_COLOUR = QtGui.QColor("#d08700")
WINDOW_COLOUR = QtGui.QColor("#2f6fb3")
FREE_COLOUR = QtGui.QColor("#e4e7eb")
EVICTED_COLOUR = QtGui.QColor("#9aa3ad")


@dataclass(frozen=True)
class GaugeState:
    """The numbers the gauge shows."""

    n_ctx: int = 0
    n_sink: int = 0
    n_window: int = 0
    n_evicted: int = 0
    n_shifts: int = 0
    shift_supported: bool = True

    @property
    def used(self) -> int:
        """Tokens in the cache."""
        return self.n_sink + self.n_window

    @property
    def free(self) -> int:
        """Free cache cells."""
        return max(0, self.n_ctx - self.used)

    def summary(self) -> str:
        """A one-line description (also the gauge's accessible description)."""
        if self.n_ctx <= 0:
            return "no model loaded"
        text = (
            f"{self.n_sink:,} sink + {self.n_window:,} window of {self.n_ctx:,} tokens, "
            f"{self.free:,} free; {self.n_evicted:,} evicted"
        )
        if self.n_shifts:
            text += f" in {self.n_shifts:,} shifts"
        if not self.shift_supported:
            text += " (this model cannot shift in place: overflow re-prefills)"
        return text


class ContextGauge(QtWidgets.QWidget):
    """Paints a :class:`GaugeState`."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("contextGauge")
        self._state = GaugeState()
        self.setAccessibleName("Context gauge")
        self.setFocusPolicy(Qt.FocusPolicy.TabFocus)
        self.setSizePolicy(
            QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Fixed
        )
        self._sync_text()

    @property
    def state(self) -> GaugeState:
        """What the gauge shows now."""
        return self._state

    def set_state(self, state: GaugeState) -> None:
        """Show ``state``."""
        if state != self._state:
            self._state = state
            self._sync_text()
            self.update()

    def _sync_text(self) -> None:
        summary = self._state.summary()
        self.setToolTip(summary)
        self.setAccessibleDescription(summary)

    def sizeHint(self) -> QtCore.QSize:
        """Room for the bar and one line of legend."""
        metrics = self.fontMetrics()
        return QtCore.QSize(420, 26 + metrics.height() + 10)

    def minimumSizeHint(self) -> QtCore.QSize:
        """A usable minimum."""
        return QtCore.QSize(200, self.sizeHint().height())

    def paintEvent(self, event: QtGui.QPaintEvent) -> None:
        """Draw the evicted stub, the sinks, the window, the free space and the legend."""
        s = self._state
        painter = QtGui.QPainter(self)
        painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
        metrics = self.fontMetrics()
        bar_h = 22
        rect = self.rect().adjusted(1, 1, -1, -1)
        stub_w = 54 if s.n_evicted else 0
        bar = QtCore.QRectF(rect.left() + stub_w, rect.top(), rect.width() - stub_w, bar_h)

        if stub_w:
            stub = QtCore.QRectF(rect.left(), rect.top(), stub_w - 4, bar_h)
            painter.fillRect(stub, QtGui.QBrush(EVICTED_COLOUR, Qt.BrushStyle.BDiagPattern))
            painter.setPen(EVICTED_COLOUR.darker(140))
            painter.drawRect(stub)
            painter.drawText(stub, Qt.AlignmentFlag.AlignCenter, _short(s.n_evicted))

        painter.fillRect(bar, FREE_COLOUR)
        if s.n_ctx > 0:
            scale = bar.width() / s.n_ctx
            # Sinks are few tokens; keep them visible at any n_ctx.
            sink_w = max(3.0, s.n_sink * scale) if s.n_sink else 0.0
            window_w = min(bar.width() - sink_w, s.n_window * scale)
            painter.fillRect(QtCore.QRectF(bar.left(), bar.top(), sink_w, bar_h), SINK_COLOUR)
            painter.fillRect(
                QtCore.QRectF(bar.left() + sink_w, bar.top(), window_w, bar_h), WINDOW_COLOUR
            )
        painter.setPen(self.palette().color(QtGui.QPalette.ColorRole.Mid))
        painter.drawRect(bar)

        legend_y = rect.top() + bar_h + 4
        x = float(rect.left())
        painter.setPen(self.palette().color(QtGui.QPalette.ColorRole.WindowText))
        items = [
            (SINK_COLOUR, f"sink {s.n_sink:,}"),
            (WINDOW_COLOUR, f"window {s.n_window:,}"),
            (FREE_COLOUR, f"free {s.free:,} / {s.n_ctx:,}"),
            (EVICTED_COLOUR, f"evicted {s.n_evicted:,}"),
        ]
        box = metrics.height() - 4
        for colour, label in items:
            painter.fillRect(QtCore.QRectF(x, legend_y + 2, box, box), colour)
            x += box + 4
            painter.drawText(
                QtCore.QPointF(x, legend_y + metrics.ascent()), label
            )
            x += metrics.horizontalAdvance(label) + 14
        if self.hasFocus():
            painter.setPen(QtGui.QPen(self.palette().color(QtGui.QPalette.ColorRole.Highlight)))
            painter.drawRect(self.rect().adjusted(0, 0, -1, -1))
        painter.end()


def _short(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 10_000:
        return f"{n // 1000}k"
    return f"{n:,}"
