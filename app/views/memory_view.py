"""The memory screen: levels and files, a markdown editor, history, review queue, capacity."""

from __future__ import annotations

from app.controllers.memory_controller import (
    LEVELS,
    ChangeRow,
    MemoryController,
    MemorySnapshot,
    ReviewRow,
    TopicText,
)
from app.qt import Qt, QtGui, QtWidgets
from app.widgets.capacity_bar import CapacityBar
from app.widgets.markdown_editor import MarkdownEditor

LEVEL_TITLES = {"user": "User", "project": "Project", "session": "Session"}
_ROLE = Qt.ItemDataRole.UserRole


class MemoryView(QtWidgets.QWidget):
    """The memory page; all reads and writes go through its :class:`MemoryController`."""

    def __init__(
        self, controller: MemoryController, parent: QtWidgets.QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.controller = controller
        # Qt ownership: the controller (its worker thread, its timers) is
        # destroyed with the page, on the GUI thread, never by Python's
        # garbage collector running on some other thread.
        controller.setParent(self)
        self._shown_once = False
        self.setAccessibleName("Memory")
        self._current: tuple[str, str] | None = None
        self._current_kind = "topic"
        self._selected_status = ""
        self._history: list[ChangeRow] = []
        self._review: list[ReviewRow] = []

        # -- left: tree and capacity ---------------------------------------------------
        self.tree = QtWidgets.QTreeWidget()
        self.tree.setHeaderLabels(["Memory", "Status"])
        self.tree.setAccessibleName("Memory levels and files")
        self.tree.setRootIsDecorated(True)
        self.tree.header().setStretchLastSection(False)
        self.tree.header().setSectionResizeMode(0, QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.tree.header().setSectionResizeMode(
            1, QtWidgets.QHeaderView.ResizeMode.ResizeToContents
        )
        self.bars = {level: CapacityBar(level) for level in LEVELS}
        self.distill_button = QtWidgets.QPushButton("&Distill now")
        self.distill_button.setAccessibleName("Distill memory now")
        self.refresh_button = QtWidgets.QPushButton("Re&fresh")
        if not controller.can_distill:
            self.distill_button.setEnabled(False)
            self.distill_button.setToolTip("No model is configured for distillation.")
        else:
            self.distill_button.setToolTip(
                "Let the model merge, update and archive topics so each level fits its capacity."
            )
        capacity_box = QtWidgets.QGroupBox("Capacity")
        capacity_layout = QtWidgets.QVBoxLayout(capacity_box)
        for bar in self.bars.values():
            capacity_layout.addWidget(bar)
        left = QtWidgets.QWidget()
        left_layout = QtWidgets.QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.tree, 1)
        left_layout.addWidget(capacity_box)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.distill_button)
        buttons.addWidget(self.refresh_button)
        left_layout.addLayout(buttons)

        # -- centre: editor ---------------------------------------------------------------
        self.topic_label = QtWidgets.QLabel("Choose a file on the left.")
        self.topic_label.setAccessibleName("Open file")
        self.topic_label.setWordWrap(True)
        self.editor = MarkdownEditor()
        self.editor.set_read_only(True)
        self.save_button = QtWidgets.QPushButton("&Save")
        self.save_button.setEnabled(False)
        self.save_button.setShortcut(QtGui.QKeySequence.StandardKey.Save)
        self.archive_button = QtWidgets.QPushButton("Archi&ve")
        self.archive_button.setEnabled(False)
        self.archive_button.setToolTip(
            "Archived topics leave the prompt but stay on disk, searchable and restorable."
        )
        self.new_title = QtWidgets.QLineEdit()
        self.new_title.setPlaceholderText("New topic title")
        self.new_title.setAccessibleName("New topic title")
        self.new_level = QtWidgets.QComboBox()
        for level in LEVELS:
            self.new_level.addItem(LEVEL_TITLES[level], level)
        self.new_level.setCurrentIndex(1)
        self.new_level.setAccessibleName("New topic level")
        self.new_button = QtWidgets.QPushButton("&New topic")
        centre = QtWidgets.QWidget()
        centre_layout = QtWidgets.QVBoxLayout(centre)
        centre_layout.setContentsMargins(0, 0, 0, 0)
        top_row = QtWidgets.QHBoxLayout()
        top_row.addWidget(self.topic_label, 1)
        top_row.addWidget(self.archive_button)
        top_row.addWidget(self.save_button)
        new_row = QtWidgets.QHBoxLayout()
        new_row.addWidget(self.new_title, 1)
        new_row.addWidget(self.new_level)
        new_row.addWidget(self.new_button)
        centre_layout.addLayout(top_row)
        centre_layout.addWidget(self.editor, 1)
        centre_layout.addLayout(new_row)

        # -- right: history and review -----------------------------------------------------
        self.history_list = QtWidgets.QListWidget()
        self.history_list.setAccessibleName("History")
        self.diff_view = QtWidgets.QPlainTextEdit()
        self.diff_view.setReadOnly(True)
        self.diff_view.setLineWrapMode(QtWidgets.QPlainTextEdit.LineWrapMode.NoWrap)
        self.diff_view.setAccessibleName("Diff")
        self.diff_view.setFont(
            QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont)
        )
        self.undo_button = QtWidgets.QPushButton("&Undo this change")
        self.undo_button.setEnabled(False)
        history_tab = QtWidgets.QWidget()
        history_layout = QtWidgets.QVBoxLayout(history_tab)
        history_layout.addWidget(self.history_list, 1)
        history_layout.addWidget(self.diff_view, 1)
        history_layout.addWidget(self.undo_button)

        self.review_list = QtWidgets.QListWidget()
        self.review_list.setAccessibleName("Review queue")
        self.review_text = QtWidgets.QTextBrowser()
        self.review_text.setAccessibleName("Proposed memory")
        self.review_text.setOpenLinks(False)
        self.approve_button = QtWidgets.QPushButton("&Approve")
        self.reject_button = QtWidgets.QPushButton("Re&ject")
        self.approve_button.setEnabled(False)
        self.reject_button.setEnabled(False)
        review_note = QtWidgets.QLabel(
            "Memory derived from untrusted content (web pages, tool output) waits here and "
            "is not loaded into prompts until approved."
        )
        review_note.setWordWrap(True)
        review_tab = QtWidgets.QWidget()
        review_layout = QtWidgets.QVBoxLayout(review_tab)
        review_layout.addWidget(review_note)
        review_layout.addWidget(self.review_list, 1)
        review_layout.addWidget(self.review_text, 1)
        review_buttons = QtWidgets.QHBoxLayout()
        review_buttons.addWidget(self.approve_button)
        review_buttons.addWidget(self.reject_button)
        review_layout.addLayout(review_buttons)

        self.tabs = QtWidgets.QTabWidget()
        self.tabs.addTab(history_tab, "&History")
        self.tabs.addTab(review_tab, "&Review queue")
        self.tabs.setAccessibleName("History and review")
        # Both tab titles always fit: no scroll arrows to tab through.
        self.tabs.setUsesScrollButtons(False)
        self.tabs.setMinimumWidth(280)

        splitter = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(centre)
        splitter.addWidget(self.tabs)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 5)
        splitter.setStretchFactor(2, 4)
        splitter.setSizes([300, 500, 400])
        splitter.setChildrenCollapsible(False)

        self.message = QtWidgets.QLabel()
        self.message.setObjectName("message")
        self.message.setAccessibleName("Message")
        self.message.setWordWrap(True)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.message)

        order: list[QtWidgets.QWidget] = [
            self.tree,
            self.distill_button,
            self.refresh_button,
            self.archive_button,
            self.save_button,
            self.editor.source,
            self.editor.preview,
            self.new_title,
            self.new_level,
            self.new_button,
            self.tabs,
            self.history_list,
            self.diff_view,
            self.undo_button,
            self.review_list,
            self.review_text,
            self.approve_button,
            self.reject_button,
        ]
        for first, second in zip(order, order[1:], strict=False):
            self.setTabOrder(first, second)

        self.tree.currentItemChanged.connect(self._tree_selection)
        self.save_button.clicked.connect(self.save)
        self.archive_button.clicked.connect(self.toggle_archive)
        self.new_button.clicked.connect(self.create_topic)
        self.new_title.returnPressed.connect(self.create_topic)
        self.editor.modified_changed.connect(self._sync_buttons)
        self.undo_button.clicked.connect(self.undo_selected)
        self.history_list.currentRowChanged.connect(self._history_selection)
        self.review_list.currentRowChanged.connect(self._review_selection)
        self.approve_button.clicked.connect(lambda: self._review_action(approve=True))
        self.reject_button.clicked.connect(lambda: self._review_action(approve=False))
        self.distill_button.clicked.connect(self.distill)
        self.refresh_button.clicked.connect(controller.refresh)
        controller.snapshot_loaded.connect(self._on_snapshot)
        controller.topic_loaded.connect(self._on_topic)
        controller.topic_saved.connect(self._on_saved)
        controller.distilled.connect(self._on_distilled)
        controller.error.connect(self.show_error)
        controller.busy_changed.connect(self._on_busy)
        controller.refresh()

    def showEvent(self, event: QtGui.QShowEvent) -> None:  # noqa: N802
        """Qt override: reload when the page comes back into view (errands change memory)."""
        super().showEvent(event)
        if self._shown_once and not event.spontaneous():
            self.controller.refresh()
        self._shown_once = True

    # -- messages ------------------------------------------------------------------------

    def show_error(self, text: str) -> None:
        """Show a problem in the message line."""
        self.message.setStyleSheet("color: #b00020;")
        self.message.setText(text)

    def show_info(self, text: str) -> None:
        """Show a neutral message in the message line."""
        self.message.setStyleSheet("")
        self.message.setText(text)

    def _on_busy(self, busy: bool) -> None:
        self.distill_button.setEnabled(self.controller.can_distill and not busy)

    # -- snapshot ------------------------------------------------------------------------

    def _on_snapshot(self, snapshot: MemorySnapshot) -> None:
        self.tree.blockSignals(True)
        self.tree.clear()
        selected: QtWidgets.QTreeWidgetItem | None = None
        for node in snapshot.tree:
            parent = QtWidgets.QTreeWidgetItem([LEVEL_TITLES.get(node.level, node.level), ""])
            parent.setData(0, _ROLE, ("", "", "", ""))  # a level, not a file
            for file in node.files:
                status = file.status if file.exists else "not created yet"
                if file.kind != "topic":
                    status = f"{file.kind}, {status}"
                child = QtWidgets.QTreeWidgetItem([file.name, status])
                child.setData(0, _ROLE, (file.level, file.name, file.kind, file.status))
                child.setToolTip(0, file.title)
                if file.status == "archived" or not file.exists:
                    child.setForeground(0, QtGui.QBrush(QtGui.QColor("#777")))
                parent.addChild(child)
                if self._current == (file.level, file.name):
                    selected = child
            self.tree.addTopLevelItem(parent)
            parent.setExpanded(True)
        if selected is not None:
            self.tree.setCurrentItem(selected)
            self._selected_status = selected.data(0, _ROLE)[3]
        self.tree.blockSignals(False)

        usage = {row.level: row for row in snapshot.usage}
        for level, bar in self.bars.items():
            row = usage.get(level)
            if row is not None:
                bar.set_usage(row.tokens, row.capacity, truncated=row.truncated)

        self._history = list(snapshot.history)
        self.history_list.clear()
        for change in self._history:
            when = change.time.astimezone().strftime("%m-%d %H:%M") if change.time else ""
            undone = " (undone)" if change.undone else ""
            text = f"#{change.change_id} {when}  {change.summary}{undone}"
            item = QtWidgets.QListWidgetItem(text)
            item.setToolTip(change.summary + undone)
            self.history_list.addItem(item)
        self.diff_view.clear()

        self._review = list(snapshot.review)
        self.review_list.clear()
        for pending in self._review:
            self.review_list.addItem(f"{pending.level}/{pending.topic} — from {pending.source}")
        self.review_text.clear()
        self.tabs.setTabText(1, f"&Review queue ({len(self._review)})")
        self._sync_buttons()

    # -- editor --------------------------------------------------------------------------

    def _tree_selection(self, item: QtWidgets.QTreeWidgetItem | None) -> None:
        data = item.data(0, _ROLE) if item is not None else ("", "", "", "")
        level, name, kind, status = data
        self._selected_status = status
        self._sync_buttons()
        if not name:
            return
        if self._current == (level, name):
            return
        if self.editor.is_modified():
            self.show_info(f"Unsaved changes to {self._current_label()} were discarded.")
        self.open_topic(level, name, kind)

    def _current_label(self) -> str:
        return "/".join(self._current) if self._current else ""

    def open_topic(self, level: str, name: str, kind: str = "topic") -> None:
        """Load one file into the editor (as a click in the tree does)."""
        self._current = (level, name)
        self._current_kind = kind
        self.controller.open_topic(level, name, kind)

    def _on_topic(self, topic: TopicText) -> None:
        if self._current != (topic.level, topic.name):
            return
        self.editor.set_markdown(topic.body)
        self.editor.set_read_only(topic.kind != "topic")
        summary = f" — {topic.summary}" if topic.summary else ""
        title = LEVEL_TITLES.get(topic.level, topic.level)
        self.topic_label.setText(f"{title} / {topic.name}{summary}")
        self._sync_buttons()

    def save(self) -> None:
        """Save the open topic (recorded in the history, undoable)."""
        if self._current is None or self._current_kind != "topic":
            return
        level, name = self._current
        self.controller.save_topic(level, name, self.editor.markdown())

    def create_topic(self) -> None:
        """Create a topic from the title typed in the new-topic row."""
        title = self.new_title.text().strip()
        if not title:
            self.show_error("Type a title for the new topic.")
            return
        self.controller.create_topic(str(self.new_level.currentData()), title)
        self.new_title.clear()

    def toggle_archive(self) -> None:
        """Archive the selected active topic, or restore the selected archived one."""
        if self._current is None or self._current_kind != "topic":
            return
        level, name = self._current
        if self._selected_status == "archived":
            self.controller.restore(level, name)
        else:
            self.controller.forget(level, name)

    def _on_saved(self, level: str, name: str) -> None:
        if self._current == (level, name):
            self.editor.mark_saved()
        else:
            self.open_topic(level, name)
        self.show_info(f"Saved {level}/{name}.")
        self._sync_buttons()

    # -- history -------------------------------------------------------------------------

    def _history_selection(self, row: int) -> None:
        if 0 <= row < len(self._history):
            self.diff_view.setPlainText(self._history[row].diff or "(no textual change)")
        self._sync_buttons()

    def selected_change(self) -> ChangeRow | None:
        """The history entry selected, if any."""
        row = self.history_list.currentRow()
        return self._history[row] if 0 <= row < len(self._history) else None

    def undo_selected(self) -> None:
        """Undo the selected change."""
        change = self.selected_change()
        if change is not None and not change.undone:
            self.controller.undo(change.change_id)

    # -- review --------------------------------------------------------------------------

    def _review_selection(self, row: int) -> None:
        if 0 <= row < len(self._review):
            # Shown as plain text: untrusted content must not render links or images.
            self.review_text.setPlainText(self._review[row].content)
        self._sync_buttons()

    def selected_review(self) -> ReviewRow | None:
        """The review item selected, if any."""
        row = self.review_list.currentRow()
        return self._review[row] if 0 <= row < len(self._review) else None

    def _review_action(self, *, approve: bool) -> None:
        item = self.selected_review()
        if item is None:
            return
        if approve:
            self.controller.approve(item.item_id)
        else:
            self.controller.reject(item.item_id)

    # -- distill -------------------------------------------------------------------------

    def distill(self) -> None:
        """Ask the model to distill every level now."""
        self.show_info("Distilling… the model is consolidating memory.")
        self.controller.distill()

    def _on_distilled(self, summary: str) -> None:
        self.show_info(f"Distilled: {summary}")

    def _sync_buttons(self) -> None:
        is_topic = self._current is not None and self._current_kind == "topic"
        self.save_button.setEnabled(is_topic and self.editor.is_modified())
        self.archive_button.setEnabled(is_topic)
        self.archive_button.setText(
            "Rest&ore" if self._selected_status == "archived" else "Archi&ve"
        )
        change = self.selected_change()
        self.undo_button.setEnabled(change is not None and not change.undone)
        has_review = self.selected_review() is not None
        self.approve_button.setEnabled(has_review)
        self.reject_button.setEnabled(has_review)
