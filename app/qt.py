"""The one module through which Keyless imports Qt.

Everything in ``app/`` takes its Qt names from here (as qutebrowser does), so
the binding is chosen in one place and a grep shows every Qt dependency.
"""

from __future__ import annotations

from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Property, QObject, Qt, QThread, QTimer, Signal, Slot

__all__ = [
    "Property",
    "QObject",
    "QThread",
    "QTimer",
    "Qt",
    "QtCore",
    "QtGui",
    "QtWidgets",
    "Signal",
    "Slot",
]
