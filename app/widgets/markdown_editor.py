"""A markdown editor with a live preview beside it (QTextBrowser.setMarkdown)."""

from __future__ import annotations

from app.qt import Qt, QtGui, QTimer, QtWidgets, Signal

PREVIEW_DELAY_MS = 250


class MarkdownEditor(QtWidgets.QWidget):
    """Source on the left, rendered preview on the right.

    Signals:
        modified_changed: Whether the text differs from what was last loaded or saved.
    """

    modified_changed = Signal(bool)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.source = QtWidgets.QPlainTextEdit()
        self.source.setAccessibleName("Markdown source")
        self.source.setTabChangesFocus(True)
        font = QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont)
        self.source.setFont(font)
        self.source.setLineWrapMode(QtWidgets.QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.preview = QtWidgets.QTextBrowser()
        self.preview.setAccessibleName("Preview")
        # Memory files may come from the model: never follow their links in-app.
        self.preview.setOpenLinks(False)
        self.preview.setOpenExternalLinks(False)
        self.splitter = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.source)
        self.splitter.addWidget(self.preview)
        self.splitter.setChildrenCollapsible(False)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.splitter)
        self.setFocusProxy(self.source)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(PREVIEW_DELAY_MS)
        self._timer.timeout.connect(self.render_preview)
        self.source.textChanged.connect(self._timer.start)
        self.source.modificationChanged.connect(self.modified_changed)

    def set_markdown(self, text: str) -> None:
        """Load ``text`` as unmodified and render it at once."""
        self.source.setPlainText(text)
        self.source.document().setModified(False)
        self.render_preview()

    def markdown(self) -> str:
        """The source text."""
        return self.source.toPlainText()

    def is_modified(self) -> bool:
        """Whether the text changed since it was loaded or :meth:`mark_saved`."""
        return bool(self.source.document().isModified())

    def mark_saved(self) -> None:
        """Record that the current text is saved."""
        self.source.document().setModified(False)

    def set_read_only(self, read_only: bool) -> None:
        """Allow or forbid editing (the preview is always read-only)."""
        self.source.setReadOnly(read_only)

    def render_preview(self) -> None:
        """Render the source now (otherwise it happens shortly after typing stops)."""
        self._timer.stop()
        scroll = self.preview.verticalScrollBar().value()
        self.preview.setMarkdown(self.source.toPlainText())
        self.preview.verticalScrollBar().setValue(scroll)
