"""The audit screen: a filterable table of every decision, with the hash-chain check."""

from __future__ import annotations

from typing import Any

from app.controllers.audit_controller import AuditController, AuditRow, ChainResult
from app.qt import Qt, QtCore, QtGui, QtWidgets

COLUMNS = ("Time", "Kind", "Tool", "Decision", "Reason")
ALL = "All"

_Index = QtCore.QModelIndex | QtCore.QPersistentModelIndex


class AuditTableModel(QtCore.QAbstractTableModel):
    """The audit entries as a read-only table (time, kind, tool, decision, reason)."""

    def __init__(self, parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[AuditRow] = []

    def set_rows(self, rows: list[AuditRow]) -> None:
        """Replace every row."""
        self.beginResetModel()
        self._rows = list(rows)
        self.endResetModel()

    def row_at(self, row: int) -> AuditRow:
        """The entry shown in ``row``."""
        return self._rows[row]

    def rowCount(self, parent: _Index = QtCore.QModelIndex()) -> int:  # noqa: B008, N802
        """Qt override: the number of entries."""
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: _Index = QtCore.QModelIndex()) -> int:  # noqa: B008, N802
        """Qt override: the number of columns."""
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(  # noqa: N802
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        """Qt override: column titles."""
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        """Qt override: one cell (display text, sort key, tooltip)."""
        if not index.isValid():
            return None
        row = self._rows[index.row()]
        column = index.column()
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            if column == 0:
                if row.time is None:
                    return ""
                fmt = "%Y-%m-%d %H:%M:%S"
                return row.time.astimezone().strftime(fmt)
            if column == 4 and not row.reason:
                return row.details
            if column == 4 and role == Qt.ItemDataRole.ToolTipRole:
                extra = f"\n{row.details}" if row.details else ""
                return f"{row.reason}{extra}\nsession: {row.session_id or '-'}"
            return (row.kind, row.tool, row.decision, row.reason)[column - 1]
        if role == Qt.ItemDataRole.UserRole:
            # Sort key: time sorts by entry id (the chain order), not by text.
            return row.entry_id if column == 0 else self.data(index)
        if role == Qt.ItemDataRole.ForegroundRole:
            if column == 3 and row.decision in ("deny", "denied", "refused"):
                return QtGui.QBrush(QtGui.QColor("#b00020"))
            if column == 4 and not row.reason:
                return QtGui.QBrush(QtGui.QColor("#666"))
        return None


class AuditFilter(QtCore.QSortFilterProxyModel):
    """Filters by kind, by decision and by a text found in any column."""

    def __init__(self, parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self._kind = ""
        self._decision = ""
        self._text = ""
        self.setSortRole(Qt.ItemDataRole.UserRole)

    def set_kind(self, kind: str) -> None:
        """Show only entries of ``kind`` ('' = all)."""
        self.beginFilterChange()
        self._kind = kind
        self.endFilterChange(QtCore.QSortFilterProxyModel.Direction.Rows)

    def set_decision(self, decision: str) -> None:
        """Show only entries with ``decision`` ('' = all)."""
        self.beginFilterChange()
        self._decision = decision
        self.endFilterChange(QtCore.QSortFilterProxyModel.Direction.Rows)

    def set_text(self, text: str) -> None:
        """Show only entries containing ``text`` in any column (case-insensitive)."""
        self.beginFilterChange()
        self._text = text.strip().casefold()
        self.endFilterChange(QtCore.QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, source_row: int, source_parent: _Index) -> bool:  # noqa: N802
        """Qt override: whether the source row passes every filter."""
        model = self.sourceModel()
        if not isinstance(model, AuditTableModel):
            return True
        row = model.row_at(source_row)
        if self._kind and row.kind != self._kind:
            return False
        if self._decision and row.decision != self._decision:
            return False
        if self._text:
            haystack = " ".join(
                (row.kind, row.tool, row.decision, row.reason, row.session_id, row.details)
            )
            return self._text in haystack.casefold()
        return True


class AuditView(QtWidgets.QWidget):
    """The audit page; reads through its :class:`AuditController`."""

    def __init__(
        self, controller: AuditController, parent: QtWidgets.QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.controller = controller
        # Qt ownership: the controller (its worker thread, its timers) is
        # destroyed with the page, on the GUI thread, never by Python's
        # garbage collector running on some other thread.
        controller.setParent(self)
        self._shown_once = False
        self.setAccessibleName("Audit log")

        self.chain_label = QtWidgets.QLabel("Checking the hash chain…")
        self.chain_label.setObjectName("chainResult")
        self.chain_label.setAccessibleName("Hash chain check")
        self.chain_label.setWordWrap(True)
        self.refresh_button = QtWidgets.QPushButton("&Refresh and verify")

        self.search = QtWidgets.QLineEdit()
        self.search.setPlaceholderText("Filter: any text (tool, reason, session…)")
        self.search.setAccessibleName("Filter text")
        self.search.setClearButtonEnabled(True)
        self.kind_filter = QtWidgets.QComboBox()
        self.kind_filter.setAccessibleName("Kind filter")
        self.decision_filter = QtWidgets.QComboBox()
        self.decision_filter.setAccessibleName("Decision filter")
        for combo in (self.kind_filter, self.decision_filter):
            combo.addItem(ALL, "")
            combo.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToContents)

        self.model = AuditTableModel(self)
        self.proxy = AuditFilter(self)
        self.proxy.setSourceModel(self.model)
        self.table = QtWidgets.QTableView()
        self.table.setModel(self.proxy)
        self.table.setAccessibleName("Audit entries")
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setTabKeyNavigation(False)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 8)
        self.count_label = QtWidgets.QLabel()
        self.count_label.setAccessibleName("Entry count")

        top = QtWidgets.QHBoxLayout()
        top.addWidget(self.chain_label, 1)
        top.addWidget(self.refresh_button)
        filters = QtWidgets.QHBoxLayout()
        for text, widget in (
            ("&Search:", self.search),
            ("&Kind:", self.kind_filter),
            ("&Decision:", self.decision_filter),
        ):
            label = QtWidgets.QLabel(text)
            label.setBuddy(widget)
            filters.addWidget(label)
            filters.addWidget(widget, 1 if widget is self.search else 0)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(filters)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.count_label)

        self.setTabOrder(self.refresh_button, self.search)
        self.setTabOrder(self.search, self.kind_filter)
        self.setTabOrder(self.kind_filter, self.decision_filter)
        self.setTabOrder(self.decision_filter, self.table)

        self.refresh_button.clicked.connect(self.refresh)
        self.search.textChanged.connect(self._filter_changed)
        self.kind_filter.currentIndexChanged.connect(self._filter_changed)
        self.decision_filter.currentIndexChanged.connect(self._filter_changed)
        controller.entries_loaded.connect(self._on_entries)
        controller.chain_checked.connect(self._on_chain)
        controller.error.connect(self._on_error)
        self.refresh()

    def showEvent(self, event: QtGui.QShowEvent) -> None:  # noqa: N802
        """Qt override: reload when the page comes back into view (errands add entries)."""
        super().showEvent(event)
        if self._shown_once and not event.spontaneous():
            self.refresh()
        self._shown_once = True

    def refresh(self) -> None:
        """Reload the entries and verify the chain again."""
        self.chain_label.setText("Checking the hash chain…")
        self.chain_label.setStyleSheet("")
        self.controller.refresh()

    def _on_entries(self, rows: list[AuditRow]) -> None:
        self.model.set_rows(rows)
        for combo, values in (
            (self.kind_filter, sorted({r.kind for r in rows if r.kind})),
            (self.decision_filter, sorted({r.decision for r in rows if r.decision})),
        ):
            current = combo.currentData()
            combo.blockSignals(True)
            combo.clear()
            combo.addItem(ALL, "")
            for value in values:
                combo.addItem(value, value)
            index = combo.findData(current)
            combo.setCurrentIndex(max(index, 0))
            combo.blockSignals(False)
        self._filter_changed()
        self.table.resizeColumnsToContents()

    def _filter_changed(self) -> None:
        self.proxy.set_kind(str(self.kind_filter.currentData() or ""))
        self.proxy.set_decision(str(self.decision_filter.currentData() or ""))
        self.proxy.set_text(self.search.text())
        shown, total = self.proxy.rowCount(), self.model.rowCount()
        self.count_label.setText(f"{shown} of {total} entries shown")

    def _on_chain(self, result: ChainResult) -> None:
        self.chain_label.setText(result.describe())
        # Green only for what a key proves; amber for an intact but weaker chain.
        colour = "#1b5e20" if result.verified else "#8a5a00" if result.ok else "#b00020"
        self.chain_label.setStyleSheet(f"color: {colour}; font-weight: bold;")

    def _on_error(self, text: str) -> None:
        self.chain_label.setText(text)
        self.chain_label.setStyleSheet("color: #b00020; font-weight: bold;")
