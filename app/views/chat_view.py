"""The chat / errand screen.

The task box, the model's output as it streams, and each tool call as it
happens (tool, arguments, decision, result, with ``[REDACTED:NAME]`` marks
highlighted), a Stop button, the workspace chooser, and the session list.

The view only talks to an :class:`~app.controllers.errand_controller.ErrandController`:
it calls its methods and renders its signals. Tokens are coalesced and
painted at most every :data:`FLUSH_MS` milliseconds so a fast model cannot
flood the event loop.

A credential the host withheld from a tool result shows as an
:class:`~app.widgets.banner.OfferBanner` (one per value): "Move to vault…"
takes the offer from the controller and hands it on through
:attr:`ChatView.moveToVaultRequested`; "Dismiss" has the controller zero it.
The view itself never holds a value.

A session in the list is closed (its notes distilled into the project's
memory) or removed (after a question) with the buttons under the list or
its context menu.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.controllers.errand_controller import ErrandController, SessionInfo
from app.qt import Qt, QtCore, QtGui, QTimer, QtWidgets, Signal, Slot
from app.widgets.banner import Banner, OfferBanner
from app.widgets.question import ask_yes_no
from app.withheld import CredentialNotice

FLUSH_MS = 33
_REDACTED_RE = re.compile(r"\[REDACTED:[A-Za-z0-9_.\-]+\]")
_MAX_SHOWN_RESULT = 4000

TOOL_COLUMNS = ("Tool", "Arguments", "Decision", "Result")


def render_result_html(content: str) -> str:
    """Escape a tool result and highlight every ``[REDACTED:NAME]`` mark."""
    shown = content if len(content) <= _MAX_SHOWN_RESULT else content[:_MAX_SHOWN_RESULT] + " …"
    out: list[str] = []
    last = 0
    for match in _REDACTED_RE.finditer(shown):
        out.append(html.escape(shown[last : match.start()]))
        out.append(
            '<span style="background:#5c2d91;color:white;font-weight:bold">'
            f"{html.escape(match.group(0))}</span>"
        )
        last = match.end()
    out.append(html.escape(shown[last:]))
    return "".join(out)


def _one_line(value: Any, limit: int = 120) -> str:
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ChatView(QtWidgets.QWidget):
    """The errand screen.

    Args:
        controller: Runs the errands; the view renders its signals.
        recent_workspaces: Folders offered in the workspace chooser.
        parent: The Qt parent.
    """

    workspaceChosen = Signal(str)
    moveToVaultRequested = Signal(object)
    """An :class:`app.withheld.CredentialOffer` to store; the receiver owns its value."""

    def __init__(
        self,
        controller: ErrandController,
        recent_workspaces: list[str] | None = None,
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.controller = controller
        self.setObjectName("chatView")
        self._pending_tokens: list[str] = []
        self._tool_items: dict[str, QtWidgets.QTreeWidgetItem] = {}
        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.setInterval(FLUSH_MS)
        self._flush_timer.timeout.connect(self._flush_tokens)

        # Sessions (left).
        self.new_session_button = QtWidgets.QPushButton("&New session")
        self.new_session_button.setObjectName("newSession")
        self.new_session_button.setToolTip("Start a new conversation (Ctrl+N)")
        self.session_list = QtWidgets.QListWidget()
        self.session_list.setObjectName("sessionList")
        self.session_list.setAccessibleName("Sessions")
        self.session_list.setWordWrap(True)
        self.session_list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.session_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        sessions_label = QtWidgets.QLabel("Sess&ions")
        sessions_label.setBuddy(self.session_list)
        self.close_session_action = QtGui.QAction("Close session", self)
        self.close_session_action.setToolTip(
            "End the selected session: its notes are added to the project's memory"
        )
        self.remove_session_action = QtGui.QAction("Remove session…", self)
        self.remove_session_action.setToolTip(
            "Delete the selected session and its transcript (its notes are not kept)"
        )
        self.session_list.addAction(self.close_session_action)
        self.session_list.addAction(self.remove_session_action)
        self.session_list.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        self.close_session_button = QtWidgets.QToolButton()
        self.close_session_button.setObjectName("closeSession")
        self.close_session_button.setDefaultAction(self.close_session_action)
        self.remove_session_button = QtWidgets.QToolButton()
        self.remove_session_button.setObjectName("removeSession")
        self.remove_session_button.setDefaultAction(self.remove_session_action)
        self.remove_question: QtWidgets.QMessageBox | None = None
        session_buttons = QtWidgets.QHBoxLayout()
        session_buttons.addWidget(self.close_session_button)
        session_buttons.addWidget(self.remove_session_button)
        session_buttons.addStretch(1)
        left = QtWidgets.QWidget()
        left_layout = QtWidgets.QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.new_session_button)
        left_layout.addWidget(sessions_label)
        left_layout.addWidget(self.session_list, 1)
        left_layout.addLayout(session_buttons)

        # Workspace chooser.
        workspace_label = QtWidgets.QLabel("&Workspace:")
        self.workspace_combo = QtWidgets.QComboBox()
        self.workspace_combo.setObjectName("workspaceCombo")
        self.workspace_combo.setAccessibleName("Workspace folder")
        self.workspace_combo.setSizeAdjustPolicy(
            QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.workspace_combo.setMinimumContentsLength(30)
        workspace_label.setBuddy(self.workspace_combo)
        self.browse_button = QtWidgets.QPushButton("&Browse…")
        self.browse_button.setObjectName("browseWorkspace")
        self.browse_button.setAccessibleName("Choose a workspace folder")
        workspace_row = QtWidgets.QHBoxLayout()
        workspace_row.addWidget(workspace_label)
        workspace_row.addWidget(self.workspace_combo, 1)
        workspace_row.addWidget(self.browse_button)

        self.banner = Banner()
        self.offer_banners: dict[str, OfferBanner] = {}
        self._offers_box = QtWidgets.QVBoxLayout()
        self._offers_box.setContentsMargins(0, 0, 0, 0)

        # Transcript, live output and tool calls.
        self.transcript = QtWidgets.QTextBrowser()
        self.transcript.setObjectName("transcript")
        self.transcript.setAccessibleName("Conversation")
        self.transcript.setOpenLinks(False)
        self.transcript.setPlaceholderText(
            "Choose a workspace folder above, type a task below and press Ctrl+Enter.\n\n"
            "Every tool call the agent makes appears here as it happens. You are asked "
            "before anything is written, run or sent over the network, and secrets the "
            "agent's calls used show up only as [REDACTED:NAME]."
        )
        self.live_output = QtWidgets.QPlainTextEdit()
        self.live_output.setObjectName("liveOutput")
        self.live_output.setReadOnly(True)
        self.live_output.setAccessibleName("Model output as it streams")
        self.live_output.setPlaceholderText("The model's output streams here.")
        self.live_output.setFont(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont))
        self.live_output.setMaximumBlockCount(2000)
        self.tool_table = QtWidgets.QTreeWidget()
        self.tool_table.setObjectName("toolCalls")
        self.tool_table.setAccessibleName("Tool calls")
        self.tool_table.setHeaderLabels(list(TOOL_COLUMNS))
        self.tool_table.setRootIsDecorated(False)
        self.tool_table.setUniformRowHeights(True)
        self.tool_table.setColumnWidth(0, 110)
        self.tool_table.setColumnWidth(1, 260)
        self.tool_table.setColumnWidth(2, 140)

        live_box = QtWidgets.QWidget()
        live_layout = QtWidgets.QVBoxLayout(live_box)
        live_layout.setContentsMargins(0, 0, 0, 0)
        live_label = QtWidgets.QLabel("&Live output")
        live_label.setBuddy(self.live_output)
        live_layout.addWidget(live_label)
        live_layout.addWidget(self.live_output)
        tools_box = QtWidgets.QWidget()
        tools_layout = QtWidgets.QVBoxLayout(tools_box)
        tools_layout.setContentsMargins(0, 0, 0, 0)
        tools_label = QtWidgets.QLabel("&Tool calls")
        tools_label.setBuddy(self.tool_table)
        tools_layout.addWidget(tools_label)
        tools_layout.addWidget(self.tool_table)

        self.splitter = QtWidgets.QSplitter(Qt.Orientation.Vertical)
        self.splitter.setObjectName("chatSplitter")
        self.splitter.addWidget(self.transcript)
        self.splitter.addWidget(live_box)
        self.splitter.addWidget(tools_box)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setStretchFactor(2, 2)

        # Task box.
        task_label = QtWidgets.QLabel("T&ask:")
        self.task_edit = QtWidgets.QPlainTextEdit()
        self.task_edit.setObjectName("taskEdit")
        self.task_edit.setAccessibleName("Task for the agent")
        self.task_edit.setPlaceholderText(
            "Describe the errand, e.g. 'List the Python files and summarise README.md'. "
            "Ctrl+Enter runs it."
        )
        self.task_edit.setTabChangesFocus(True)
        self.task_edit.setMaximumHeight(90)
        task_label.setBuddy(self.task_edit)
        self.run_button = QtWidgets.QPushButton("&Run")
        self.run_button.setObjectName("runButton")
        self.run_button.setToolTip("Run the errand (Ctrl+Enter)")
        self.stop_button = QtWidgets.QPushButton("&Stop")
        self.stop_button.setObjectName("stopButton")
        self.stop_button.setToolTip("Stop the errand now (Esc)")
        self.stop_button.setEnabled(False)
        self.resume_button = QtWidgets.QPushButton("Res&ume")
        self.resume_button.setObjectName("resumeButton")
        self.resume_button.setToolTip(
            "Go on with the errand that was interrupted (by a quit or a crash) "
            "from its last completed tool step"
        )
        self.resume_button.setVisible(False)
        self.status_label = QtWidgets.QLabel("Ready")
        self.status_label.setObjectName("chatStatus")
        buttons = QtWidgets.QVBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.resume_button)
        buttons.addStretch(1)
        task_row = QtWidgets.QHBoxLayout()
        task_row.addWidget(self.task_edit, 1)
        task_row.addLayout(buttons)

        right = QtWidgets.QWidget()
        right_layout = QtWidgets.QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addLayout(workspace_row)
        right_layout.addWidget(self.banner)
        right_layout.addLayout(self._offers_box)
        right_layout.addWidget(self.splitter, 1)
        right_layout.addWidget(task_label)
        right_layout.addLayout(task_row)
        right_layout.addWidget(self.status_label)

        self.main_splitter = QtWidgets.QSplitter(Qt.Orientation.Horizontal)
        self.main_splitter.setObjectName("chatMainSplitter")
        self.main_splitter.addWidget(left)
        self.main_splitter.addWidget(right)
        self.main_splitter.setStretchFactor(1, 1)
        self.main_splitter.setSizes([200, 800])
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.main_splitter)

        # Reading order: workspace, task, run/stop, transcript, tools, sessions.
        order: list[QtWidgets.QWidget] = [
            self.workspace_combo,
            self.browse_button,
            self.task_edit,
            self.run_button,
            self.stop_button,
            self.transcript,
            self.live_output,
            self.tool_table,
            self.new_session_button,
            self.session_list,
            self.close_session_button,
            self.remove_session_button,
        ]
        for first, second in zip(order, order[1:], strict=False):
            QtWidgets.QWidget.setTabOrder(first, second)

        run_shortcut = QtGui.QShortcut(QtGui.QKeySequence("Ctrl+Return"), self)
        run_shortcut.activated.connect(self.run_task)
        run_shortcut2 = QtGui.QShortcut(QtGui.QKeySequence("Ctrl+Enter"), self)
        run_shortcut2.activated.connect(self.run_task)
        stop_shortcut = QtGui.QShortcut(QtGui.QKeySequence("Escape"), self)
        stop_shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        stop_shortcut.activated.connect(self.controller.cancel)
        new_shortcut = QtGui.QShortcut(QtGui.QKeySequence("Ctrl+N"), self)
        new_shortcut.activated.connect(self._new_session)

        self.run_button.clicked.connect(self.run_task)
        self.resume_button.clicked.connect(self.resume_errand)
        self.stop_button.clicked.connect(self.controller.cancel)
        self.new_session_button.clicked.connect(self._new_session)
        self.browse_button.clicked.connect(self._browse_workspace)
        self.workspace_combo.activated.connect(self._workspace_activated)
        self.session_list.itemActivated.connect(self._session_activated)
        self.session_list.itemClicked.connect(self._session_activated)
        self.close_session_action.triggered.connect(self.close_selected_session)
        self.remove_session_action.triggered.connect(self.remove_selected_session)

        c = self.controller
        c.busyChanged.connect(self._on_busy)
        c.errandStarted.connect(self._on_started)
        c.tokenReceived.connect(self._on_token)
        c.toolCallStarted.connect(self._on_tool_call)
        c.decisionMade.connect(self._on_decision)
        c.egressRequested.connect(self._on_egress)
        c.toolResultReceived.connect(self._on_tool_result)
        c.answerReady.connect(self._on_answer)
        c.errandFailed.connect(self._on_error)
        c.agentCrashed.connect(self._on_crash)
        c.noticeReported.connect(self._on_notice)
        c.isolationReported.connect(self._on_isolation)
        c.credentialFound.connect(self._on_credential_found)
        c.sessionsChanged.connect(self._refresh_sessions)
        c.currentSessionChanged.connect(self._show_session)
        c.sessionClosed.connect(self._on_session_closed)
        c.sessionCloseFailed.connect(self._on_session_close_failed)

        self.set_recent_workspaces(recent_workspaces or [])
        self._refresh_sessions()
        self._show_session(c.current_session)
        for notice in c.pending_offers():
            self._on_credential_found(notice)

    # -- workspace -------------------------------------------------------------------

    def set_recent_workspaces(self, folders: list[str]) -> None:
        """Offer ``folders`` in the chooser, selecting the controller's workspace."""
        current = str(self.controller.workspace) if self.controller.workspace else None
        self.workspace_combo.blockSignals(True)
        self.workspace_combo.clear()
        seen: list[str] = []
        for folder in ([current] if current else []) + folders:
            if folder and folder not in seen:
                seen.append(folder)
                self.workspace_combo.addItem(folder, folder)
        if not seen:
            self.workspace_combo.addItem("(choose a folder with Browse…)", None)
        self.workspace_combo.setCurrentIndex(0)
        self.workspace_combo.blockSignals(False)

    def choose_workspace(self, folder: str) -> None:
        """Run later errands in ``folder`` (the controller starts a new session)."""
        path = Path(folder)
        if not path.is_dir():
            self.banner.show_message(f"The workspace {folder} is not an existing folder.")
            return
        try:
            self.controller.set_workspace(path)
        except RuntimeError as e:
            self.banner.show_message(f"Cannot change the workspace: {e}.", "warning")
            return
        recent = [self.workspace_combo.itemData(i) for i in range(self.workspace_combo.count())]
        self.set_recent_workspaces([folder] + [r for r in recent if isinstance(r, str)])
        self.workspaceChosen.emit(folder)

    @Slot()
    def _browse_workspace(self) -> None:
        start = str(self.controller.workspace or Path.home())
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Choose the workspace", start)
        if folder:
            self.choose_workspace(folder)

    @Slot(int)
    def _workspace_activated(self, index: int) -> None:
        folder = self.workspace_combo.itemData(index)
        if isinstance(folder, str) and Path(folder) != self.controller.workspace:
            self.choose_workspace(folder)

    # -- sessions --------------------------------------------------------------------

    @Slot()
    def _new_session(self) -> None:
        try:
            self.controller.new_session()
        except RuntimeError as e:
            self.banner.show_message(f"{e}.", "warning")

    @Slot()
    def _refresh_sessions(self) -> None:
        self.session_list.blockSignals(True)
        self.session_list.clear()
        for info in self.controller.sessions():
            closed = " · closed" if info.closed else ""
            item = QtWidgets.QListWidgetItem(
                f"{info.title}\n{info.created:%Y-%m-%d %H:%M}{closed}"
            )
            item.setData(Qt.ItemDataRole.UserRole, info.session_id)
            item.setToolTip(f"Session {info.session_id}")
            self.session_list.addItem(item)
            if info.session_id == self.controller.current_session:
                self.session_list.setCurrentItem(item)
        self.session_list.blockSignals(False)

    def selected_session(self) -> str:
        """The id of the session selected in the list ("" when none)."""
        item = self.session_list.currentItem()
        return str(item.data(Qt.ItemDataRole.UserRole)) if item is not None else ""

    @Slot()
    def close_selected_session(self) -> None:
        """Close the selected session (its notes go into the project's memory)."""
        session_id = self.selected_session()
        if not session_id:
            return
        try:
            started = self.controller.close_session(session_id)
        except (KeyError, RuntimeError) as e:
            self.banner.show_message(f"Cannot close the session: {e}.", "warning")
            return
        if not started:
            self.banner.show_message(
                "Sessions are not recorded in this window, so there is nothing to close.",
                "warning",
            )

    @Slot()
    def remove_selected_session(self) -> None:
        """Ask, then delete the selected session and its transcript."""
        session_id = self.selected_session()
        if not session_id or self.remove_question is not None:
            return
        try:
            title = self.controller.session(session_id).title
        except KeyError:
            return
        self.remove_question = ask_yes_no(
            self,
            "Remove the session?",
            f"Remove the session “{title}” with its transcript? Its notes are not added "
            "to the project's memory (close it first to keep them). This cannot be undone.",
            lambda yes: self._remove_answered(session_id, yes),
        )

    def _remove_answered(self, session_id: str, yes: bool) -> None:
        self.remove_question = None
        if not yes:
            return
        from app.sessions import SessionStoreError

        try:
            self.controller.remove_session(session_id)
        except (KeyError, RuntimeError, SessionStoreError) as e:
            self.banner.show_message(f"The session was not removed: {e}.", "error")

    @Slot(str, object)
    def _on_session_closed(self, session_id: str, lines: object) -> None:
        detail = "\n".join(str(line) for line in lines) if isinstance(lines, list) else ""
        self.banner.show_message(
            f"Session {session_id} closed: its notes were added to the project's memory as "
            "they are (no model runs at close; the Memory screen's Distill now merges them)."
            + (f"\n{detail}" if detail else ""),
            "info",
        )

    @Slot(str, str)
    def _on_session_close_failed(self, session_id: str, message: str) -> None:
        self.banner.show_message(
            f"Session {session_id} was not closed (it stays open): {message}", "error"
        )

    @Slot(QtWidgets.QListWidgetItem)
    def _session_activated(self, item: QtWidgets.QListWidgetItem) -> None:
        session_id = item.data(Qt.ItemDataRole.UserRole)
        if session_id == self.controller.current_session:
            return
        try:
            self.controller.select_session(session_id)
        except (KeyError, RuntimeError) as e:
            self.banner.show_message(f"Cannot switch sessions: {e}.", "warning")
            self._refresh_sessions()

    @Slot(str)
    def _show_session(self, session_id: str) -> None:
        """Re-render a session's transcript from the controller's record."""
        self.transcript.clear()
        self.live_output.clear()
        self.tool_table.clear()
        self._tool_items.clear()
        self._pending_tokens.clear()
        try:
            info: SessionInfo = self.controller.session(session_id)
        except KeyError:
            return
        for kind, args in info.transcript:
            if kind == "task":
                self._append_task(*args)
            elif kind == "tool_call":
                self._on_tool_call(*args)
            elif kind == "decision":
                self._on_decision(*args)
            elif kind == "egress":
                self._on_egress(*args)
            elif kind == "tool_result":
                self._on_tool_result(*args)
            elif kind == "final":
                self._append_answer(args[0], args[1])
            elif kind == "error":
                self._append_error(args[0])
            elif kind == "notice":
                self._append_notice(args[0])
            elif kind == "withheld":
                self._append_withheld(args[0])
        self._refresh_sessions()
        self._update_resume()

    def _update_resume(self) -> None:
        waiting = self.controller.interrupted_errands(self.controller.current_session)
        self.resume_button.setVisible(bool(waiting) and not self.controller.busy)
        self.resume_button.setProperty("errandId", waiting[-1] if waiting else "")

    @Slot()
    def resume_errand(self) -> None:
        """Resume the session's interrupted errand, asking about a call that may have run."""
        errand_id = str(self.resume_button.property("errandId") or "")
        if not errand_id:
            return
        choice = "skip"
        what = self.controller.maybe_ran(errand_id)
        if what:
            box = QtWidgets.QMessageBox(self)
            box.setWindowTitle("Resume the errand")
            box.setText(f"The errand was interrupted during:\n{what}\n\nIt may have run.")
            again = box.addButton("Run it again", QtWidgets.QMessageBox.ButtonRole.AcceptRole)
            skip = box.addButton("Skip it", QtWidgets.QMessageBox.ButtonRole.AcceptRole)
            box.addButton("Stop", QtWidgets.QMessageBox.ButtonRole.RejectRole)
            box.exec()
            clicked = box.clickedButton()
            if clicked is again:
                choice = "again"
            elif clicked is not skip:
                return
        self.resume_button.setVisible(False)
        self.controller.resume(errand_id, choice)

    # -- running ---------------------------------------------------------------------

    @Slot()
    def run_task(self) -> None:
        """Start the task typed in the task box."""
        if self.controller.busy:
            return
        task = self.task_edit.toPlainText().strip()
        if not task:
            self.banner.show_message("Type a task first.", "warning")
            self.task_edit.setFocus()
            return
        self.banner.clear()
        self.controller.start(task)

    @Slot(bool)
    def _on_busy(self, busy: bool) -> None:
        self.run_button.setEnabled(not busy)
        self._update_resume()
        self.stop_button.setEnabled(busy)
        self.task_edit.setReadOnly(busy)
        self.new_session_button.setEnabled(not busy)
        self.close_session_action.setEnabled(not busy)
        self.remove_session_action.setEnabled(not busy)
        self.workspace_combo.setEnabled(not busy)
        self.browse_button.setEnabled(not busy)
        self.status_label.setText("Running… (Esc or Stop to cancel)" if busy else "Ready")
        if busy:
            self.stop_button.setFocus()
        else:
            self._flush_tokens()
            self.task_edit.setFocus()

    @Slot(str, str)
    def _on_started(self, session_id: str, task: str) -> None:
        self.task_edit.clear()
        self.live_output.clear()
        self._append_task(task)

    def _append_task(self, task: str) -> None:
        self._append_html(
            '<p style="margin-top:10px"><b>You:</b> '
            f"{html.escape(task).replace(chr(10), '<br>')}</p>"
        )

    @Slot(str)
    def _on_token(self, text: str) -> None:
        self._pending_tokens.append(text)
        if not self._flush_timer.isActive():
            self._flush_timer.start()

    @Slot()
    def _flush_tokens(self) -> None:
        if not self._pending_tokens:
            return
        text = "".join(self._pending_tokens)
        self._pending_tokens.clear()
        cursor = self.live_output.textCursor()
        cursor.movePosition(QtGui.QTextCursor.MoveOperation.End)
        cursor.insertText(text)
        self.live_output.setTextCursor(cursor)
        self.live_output.ensureCursorVisible()

    def _end_live_segment(self) -> None:
        self._flush_tokens()
        if self.live_output.toPlainText() and not self.live_output.toPlainText().endswith("\n"):
            self.live_output.appendPlainText("")

    @Slot(str, str, object)
    def _on_tool_call(self, call_id: str, tool: str, arguments: object) -> None:
        self._end_live_segment()
        args_text = json.dumps(arguments, indent=2, ensure_ascii=False, default=str)
        self._append_html(
            '<table width="100%" style="background:#f1f4f8;margin-top:6px" cellpadding="4">'
            f'<tr><td><b>⚙ {html.escape(tool)}</b>'
            f'<pre style="margin:2px 0">{html.escape(args_text)}</pre></td></tr></table>'
        )
        item = QtWidgets.QTreeWidgetItem([tool, _one_line(arguments), "waiting…", ""])
        item.setToolTip(1, args_text)
        item.setData(0, Qt.ItemDataRole.UserRole, call_id)
        self.tool_table.addTopLevelItem(item)
        self.tool_table.scrollToItem(item)
        self._tool_items[call_id] = item

    @Slot(str, str, str)
    def _on_decision(self, call_id: str, action: str, reason: str) -> None:
        allowed = action.lower().startswith("allow")
        mark, colour = ("✔", "#1b7f3b") if allowed else ("✖", "#b00020")
        detail = f" — {html.escape(reason)}" if reason else ""
        self._append_html(
            f'<p style="color:{colour};margin:2px 0 2px 12px">{mark} '
            f"<b>{html.escape(action)}</b>{detail}</p>"
        )
        item = self._tool_items.get(call_id)
        if item is not None:
            item.setText(2, f"{action}: {reason}" if reason else action)
            item.setToolTip(2, reason or action)
            item.setForeground(2, QtGui.QBrush(QtGui.QColor(colour)))

    @Slot(str, object)
    def _on_egress(self, call_id: str, request: object) -> None:
        """A request the shell call sent through the egress proxy: a row under that call."""
        if not isinstance(request, Mapping):
            return
        target = f"{request.get('method', '?')} {request.get('host', '?')}{request.get('path', '')}"
        decision, reason = str(request.get("decision", "?")), str(request.get("reason", ""))
        allowed = decision == "allow"
        colour = "#1b7f3b" if allowed else "#b00020"
        self._append_html(
            f'<p style="margin:0 0 0 24px;color:{colour}">↳ net <b>{html.escape(target)}</b>'
            f" — {html.escape(decision)}{' (' + html.escape(reason) + ')' if reason else ''}</p>"
        )
        parent = self._tool_items.get(call_id)
        row = ["net", target, f"{decision}: {reason}" if reason else decision, ""]
        item = QtWidgets.QTreeWidgetItem(row)
        item.setToolTip(1, target)
        item.setToolTip(2, reason or decision)
        item.setForeground(2, QtGui.QBrush(QtGui.QColor(colour)))
        if parent is not None:
            parent.addChild(item)
            parent.setExpanded(True)
        else:
            self.tool_table.addTopLevelItem(item)
        self.tool_table.scrollToItem(item)

    @Slot(str, bool, str, object, bool)
    def _on_tool_result(
        self, call_id: str, ok: bool, content: str, redacted: object, truncated: bool
    ) -> None:
        notes = []
        if isinstance(redacted, list) and redacted:
            notes.append("redacted: " + ", ".join(html.escape(str(r)) for r in redacted))
        if truncated:
            notes.append("truncated")
        if not ok:
            notes.append("failed")
        note = f' <i style="color:#5c2d91">({"; ".join(notes)})</i>' if notes else ""
        self._append_html(
            f'<p style="margin:2px 0 0 12px"><b>Result</b>{note}</p>'
            '<pre style="margin:0 0 6px 12px;background:#fafafa">'
            f"{render_result_html(content)}</pre>"
        )
        item = self._tool_items.get(call_id)
        if item is not None:
            item.setText(3, ("" if ok else "failed: ") + _one_line(content))
            item.setToolTip(3, content[:_MAX_SHOWN_RESULT])

    @Slot(str, object)
    def _on_answer(self, text: str, stats: object) -> None:
        self._end_live_segment()
        self._append_answer(text, stats)

    def _append_answer(self, text: str, stats: object) -> None:
        line = ""
        if isinstance(stats, Mapping):
            parts = []
            if stats.get("steps"):
                parts.append(f"{stats['steps']} steps, {stats.get('tool_calls', 0)} tool calls")
            if stats.get("tokens_per_second"):
                parts.append(f"{float(stats['tokens_per_second']):.1f} tok/s")
            if stats.get("time_to_first_token_s") is not None:
                parts.append(f"first token {float(stats['time_to_first_token_s']) * 1000:.0f} ms")
            if stats.get("stop_reason") not in (None, "final", "finish", "eos"):
                parts.append(f"stopped: {stats['stop_reason']}")
            line = " · ".join(parts)
        stats_html = f'<br><small style="color:#666">{html.escape(line)}</small>' if line else ""
        self._append_html(
            '<p style="margin-top:6px"><b>Keyless:</b> '
            f"{render_result_html(text).replace(chr(10), '<br>')}{stats_html}</p>"
        )

    @Slot(str)
    def _on_error(self, message: str) -> None:
        self.banner.show_message(message, "error")
        self._append_error(message)

    def _append_error(self, message: str) -> None:
        self._append_html(
            f'<p style="color:#b00020;margin-top:6px"><b>Problem:</b> {html.escape(message)}</p>'
        )

    @Slot(str)
    def _on_notice(self, message: str) -> None:
        self.banner.show_message(message, "warning")
        self._append_notice(message)

    def _append_notice(self, message: str) -> None:
        self._append_html(
            f'<p style="color:#7a5200;margin-top:6px"><b>Note:</b> {html.escape(message)}</p>'
        )

    @Slot(str)
    def _on_crash(self, message: str) -> None:
        self.banner.show_message(
            f"The agent process stopped unexpectedly ({message}). Keyless is still running; "
            "the next errand starts a fresh agent.",
            "error",
        )
        self._append_error(f"the agent process crashed: {message}")

    @Slot(bool, str)
    def _on_isolation(self, enabled: bool, detail: str) -> None:
        if not enabled:
            self.banner.show_message(f"OS isolation is off: {detail}", "warning")

    # -- withheld credentials -----------------------------------------------------------

    @Slot(object)
    def _on_credential_found(self, notice: object) -> None:
        assert isinstance(notice, CredentialNotice)
        if notice.offer_id in self.offer_banners:
            return
        banner = OfferBanner(notice.offer_id, notice.text, "&Move to vault…")
        banner.action_button.setToolTip(
            f"Store it in the vault as {notice.name} (the value stays masked), "
            "then grant it to this session as a capability"
        )
        banner.accepted.connect(self._move_to_vault)
        banner.dismissed.connect(self._dismiss_offer)
        self.offer_banners[notice.offer_id] = banner
        self._offers_box.addWidget(banner)
        self._append_withheld(notice.text)

    def _append_withheld(self, text: str) -> None:
        self._append_html(
            f'<p style="color:#1f4e79;margin:2px 0 2px 12px">🔑 {html.escape(text)}</p>'
        )

    @Slot(str)
    def _move_to_vault(self, offer_id: str) -> None:
        signal = QtCore.QMetaMethod.fromSignal(self.moveToVaultRequested)
        if not self.isSignalConnected(signal):
            self.banner.show_message("There is no vault screen to move the credential to.")
            return
        self._remove_offer_banner(offer_id)
        offer = self.controller.take_offer(offer_id)
        if offer is not None:
            self.moveToVaultRequested.emit(offer)

    @Slot(str)
    def _dismiss_offer(self, offer_id: str) -> None:
        self._remove_offer_banner(offer_id)
        self.controller.dismiss_offer(offer_id)

    def _remove_offer_banner(self, offer_id: str) -> None:
        banner = self.offer_banners.pop(offer_id, None)
        if banner is not None:
            self._offers_box.removeWidget(banner)
            banner.hide()
            banner.deleteLater()

    def _append_html(self, fragment: str) -> None:
        cursor = self.transcript.textCursor()
        cursor.movePosition(QtGui.QTextCursor.MoveOperation.End)
        cursor.insertHtml(fragment)
        cursor.insertBlock()
        self.transcript.setTextCursor(cursor)
        self.transcript.ensureCursorVisible()

    # -- for tests and screenshots ----------------------------------------------------

    def tool_rows(self) -> list[tuple[str, ...]]:
        """The tool table's rows as text tuples (tool, arguments, decision, result)."""
        rows = []
        for i in range(self.tool_table.topLevelItemCount()):
            item = self.tool_table.topLevelItem(i)
            assert item is not None
            rows.append(tuple(item.text(c) for c in range(len(TOOL_COLUMNS))))
        return rows

    def request_rows(self, row: int) -> list[tuple[str, ...]]:
        """The proxied requests listed under the tool table's ``row`` (net, target, decision)."""
        item = self.tool_table.topLevelItem(row)
        if item is None:
            return []
        children = (item.child(i) for i in range(item.childCount()))
        return [tuple(c.text(col) for col in range(3)) for c in children if c is not None]

    def sizeHint(self) -> QtCore.QSize:
        """A comfortable default size."""
        return QtCore.QSize(1000, 700)
