"""The Settings screen's MCP tool servers: list with status, add, remove, test, approve.

Everything goes through an :class:`~app.controllers.mcp_controller.McpController`.
A test shows what the server lists against what was approved (the pinned
schema diff); "Approve" pins the tools as shown, and is offered only while
a tested server has changes waiting.
"""

from __future__ import annotations

from app.controllers.mcp_controller import McpController, McpServerRow, McpTestReport
from app.qt import Qt, QtGui, QtWidgets

_ROLE = Qt.ItemDataRole.UserRole
_STATE_COLOURS = {"up": "#1b7a2e", "pending": "#8a5a00", "down": "#b00020"}
COLUMNS = ("Server", "Kind", "Command or URL", "Access", "Approved", "Status")


class McpServersBox(QtWidgets.QGroupBox):
    """The MCP servers group of the Settings screen.

    Args:
        controller: Reads and changes the configured servers.
        parent: The Qt parent.
    """

    def __init__(
        self, controller: McpController, parent: QtWidgets.QWidget | None = None
    ) -> None:
        super().__init__("MCP tool servers", parent)
        self.setObjectName("mcpServers")
        self.controller = controller
        controller.setParent(self)
        self._rows: list[McpServerRow] = []
        self._report: McpTestReport | None = None
        self.remove_question: QtWidgets.QMessageBox | None = None

        self.table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("mcpServerTable")
        self.table.setAccessibleName("Configured MCP servers")
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(110)

        self.test_button = QtWidgets.QPushButton("&Test")
        self.test_button.setObjectName("mcpTest")
        self.approve_button = QtWidgets.QPushButton("Appro&ve the tools shown")
        self.approve_button.setObjectName("mcpApprove")
        self.remove_button = QtWidgets.QPushButton("Remo&ve server")
        self.remove_button.setObjectName("mcpRemove")
        actions = QtWidgets.QHBoxLayout()
        actions.addWidget(self.test_button)
        actions.addWidget(self.approve_button)
        actions.addStretch(1)
        actions.addWidget(self.remove_button)

        self.result = QtWidgets.QPlainTextEdit()
        self.result.setObjectName("mcpTestResult")
        self.result.setAccessibleName("MCP server test result")
        self.result.setReadOnly(True)
        self.result.setPlaceholderText(
            "Test a server to see its tools and what changed since you approved them."
        )
        self.result.setFont(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont))
        self.result.setMinimumHeight(120)
        self.result.setMaximumHeight(220)

        # -- add ---------------------------------------------------------------------
        self.name_edit = QtWidgets.QLineEdit()
        self.name_edit.setObjectName("mcpName")
        self.name_edit.setAccessibleName("New server name")
        self.name_edit.setPlaceholderText("name, e.g. github")
        self.name_edit.setMaximumWidth(140)
        self.kind = QtWidgets.QComboBox()
        self.kind.setObjectName("mcpKind")
        self.kind.setAccessibleName("New server kind")
        self.kind.addItem("Command (stdio)", "stdio")
        self.kind.addItem("URL (streamable HTTP)", "http")
        self.target_edit = QtWidgets.QLineEdit()
        self.target_edit.setObjectName("mcpTarget")
        self.target_edit.setAccessibleName("New server command line or URL")
        self.writable = QtWidgets.QCheckBox("Workspace &writable")
        self.writable.setObjectName("mcpWritable")
        self.allow_local = QtWidgets.QCheckBox("Allow a &local address")
        self.allow_local.setObjectName("mcpAllowLocal")
        self.add_button = QtWidgets.QPushButton("A&dd server")
        self.add_button.setObjectName("mcpAdd")
        add_row = QtWidgets.QHBoxLayout()
        add_row.addWidget(self.name_edit)
        add_row.addWidget(self.kind)
        add_row.addWidget(self.target_edit, 1)
        add_row.addWidget(self.writable)
        add_row.addWidget(self.allow_local)
        add_row.addWidget(self.add_button)
        # Two fixed lines, not word-wrapped: a wrapped label's height depends on
        # its width, which the Settings page's layout underestimates.
        note = QtWidgets.QLabel(
            "A command runs in its own sandbox (no network, no home, the workspace read-only "
            "unless writable);\na URL is reached from this app, each request decided by your "
            "net(...) rules. Tools are offered as server.tool once approved, asked again on change."
        )
        note.setToolTip(note.text())

        self.message = QtWidgets.QLabel()
        self.message.setObjectName("mcpMessage")
        self.message.setWordWrap(True)
        self.message.setMinimumHeight(2 * self.message.fontMetrics().lineSpacing())
        self.message.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(note)
        layout.addWidget(self.table, 1)
        layout.addLayout(actions)
        layout.addWidget(self.result)
        layout.addLayout(add_row)
        layout.addWidget(self.message)

        self.table.itemSelectionChanged.connect(self._sync)
        self.kind.currentIndexChanged.connect(self._kind_changed)
        self.add_button.clicked.connect(self.add)
        self.target_edit.returnPressed.connect(self.add)
        self.test_button.clicked.connect(self.test_selected)
        self.approve_button.clicked.connect(self.approve_selected)
        self.remove_button.clicked.connect(self.remove_selected)
        controller.servers_loaded.connect(self._on_servers)
        controller.tested.connect(self._on_tested)
        controller.added.connect(self._on_added)
        controller.notice.connect(lambda text: self._say(text, error=False))
        controller.error.connect(lambda text: self._say(text, error=True))
        controller.busy_changed.connect(lambda _: self._sync())
        self._kind_changed()
        self._sync()
        # Held explicitly: the page's layout gave the group less than its hint.
        self.setMinimumHeight(self.minimumSizeHint().height())
        controller.refresh()

    # -- list -----------------------------------------------------------------------------

    def _on_servers(self, rows: list[McpServerRow]) -> None:
        chosen = self.selected()
        self._rows = list(rows)
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            status = row.state + (f": {row.reason}" if row.reason else "")
            cells = (row.name, row.transport, row.target, row.detail, str(row.approved), status)
            for j, text in enumerate(cells):
                item = QtWidgets.QTableWidgetItem(text)
                item.setData(_ROLE, row.name)
                item.setToolTip(status if j == len(cells) - 1 else text)
                if j == len(cells) - 1 and row.state in _STATE_COLOURS:
                    item.setForeground(QtGui.QColor(_STATE_COLOURS[row.state]))
                self.table.setItem(i, j, item)
            if row.name == chosen:
                self.table.selectRow(i)
        self._sync()

    def selected(self) -> str | None:
        """The selected server's name."""
        items = self.table.selectedItems()
        return str(items[0].data(_ROLE)) if items else None

    def select(self, name: str) -> None:
        """Select the row of server ``name``."""
        for i, row in enumerate(self._rows):
            if row.name == name:
                self.table.selectRow(i)

    def _sync(self) -> None:
        name = self.selected()
        busy = self.controller.busy
        self.test_button.setEnabled(name is not None and not busy)
        self.remove_button.setEnabled(name is not None and not busy)
        report = self._report
        self.approve_button.setEnabled(
            not busy and report is not None and report.name == name and report.pending
        )
        self.add_button.setEnabled(not busy)

    # -- actions ------------------------------------------------------------------------

    def _kind_changed(self) -> None:
        url = self.kind.currentData() == "http"
        self.target_edit.setPlaceholderText(
            "https://host/mcp" if url else "command and arguments, e.g. uvx mcp-server-fetch"
        )
        self.writable.setVisible(not url)
        self.allow_local.setVisible(url)

    def add(self) -> None:
        """Add the server typed in the add row."""
        name, target = self.name_edit.text(), self.target_edit.text()
        if self.kind.currentData() == "http":
            self.controller.add_url(name, target, allow_local=self.allow_local.isChecked())
        else:
            self.controller.add_command(name, target, writable=self.writable.isChecked())

    def _on_added(self, name: str) -> None:
        self.name_edit.clear()
        self.target_edit.clear()
        self.select(name)

    def test_selected(self) -> None:
        """Test the selected server."""
        name = self.selected()
        if name:
            self._say(f"Testing {name}…", error=False)
            self.result.clear()
            self.controller.test(name)

    def approve_selected(self) -> None:
        """Pin the selected server's tools as the last test showed them."""
        name = self.selected()
        if name and self._report is not None and self._report.name == name:
            self.controller.approve(name)

    def remove_selected(self) -> None:
        """Remove the selected server (after asking)."""
        name = self.selected()
        if not name:
            return
        buttons = QtWidgets.QMessageBox.StandardButton
        box = QtWidgets.QMessageBox(
            QtWidgets.QMessageBox.Icon.Question, "Remove MCP server",
            f"Remove {name} and the tools you approved for it?", buttons.Yes | buttons.No, self,
        )  # fmt: skip
        box.setDefaultButton(buttons.No)
        self.remove_question = box

        def answered(result: int) -> None:
            self.remove_question = None
            if result == buttons.Yes.value:
                self.controller.remove(name)

        box.finished.connect(answered)
        box.open()

    # -- results ------------------------------------------------------------------------

    def _on_tested(self, report: McpTestReport) -> None:
        self._report = report
        head = f"{report.name}: {report.state}" + (f" — {report.reason}" if report.reason else "")
        body = "\n".join(report.lines)
        self.result.setPlainText("\n".join(x for x in (head, body, report.diff) if x))
        self._say(
            "Read the difference, then approve the tools shown."
            if report.pending
            else head,
            error=report.state == "down",
        )
        self._sync()

    def _say(self, text: str, *, error: bool) -> None:
        self.message.setStyleSheet("color: #b00020;" if error else "")
        self.message.setText(text)
