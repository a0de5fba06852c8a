"""The Qt binding itself: guards against a known-bad PySide6 release."""

from __future__ import annotations

import sys

from app.qt import QObject, Signal


class _Emitter(QObject):
    text = Signal(str)


def test_signal_emit_keeps_reference_counts() -> None:
    # PySide6 6.12.0 drops a reference to True on every emit(); on Python 3.11
    # the interpreter aborts ("deallocating True") after a few thousand signals,
    # i.e. a few thousand streamed tokens.
    emitter = _Emitter()
    received: list[str] = []
    emitter.text.connect(received.append)
    before = (sys.getrefcount(True), sys.getrefcount(False), sys.getrefcount(None))
    for _ in range(1000):
        emitter.text.emit("token")
    after = (sys.getrefcount(True), sys.getrefcount(False), sys.getrefcount(None))
    assert len(received) == 1000
    assert [a - b for a, b in zip(after, before, strict=True)] == [0, 0, 0]
