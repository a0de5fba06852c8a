"""The Settings screen's network section: the ``net(...)`` rules and the pinned hosts.

A sandboxed shell command reaches the network only through the egress proxy,
which decides each request's host (and method) with these rules. The list is
read-only: rules are added and removed with the permission-rule editor beside
it, like any other rule. Pinned hosts are edited here: the box asks
(:attr:`NetworkRulesBox.pin_requested`, :attr:`NetworkRulesBox.unpin_requested`)
and the settings controller checks and saves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from app.qt import QtGui, QtWidgets, Signal

NET_TOOL = "net"
COLUMNS = ("Host", "Methods", "Action", "Scope")
_COLOURS = {"deny": "#b00020", "ask": "#7a5200", "allow": "#1b7f3b"}


class NetRule(Protocol):
    """What the section reads of a saved rule (``app.controllers.settings_controller.RuleRow``)."""

    @property
    def tool(self) -> str:
        """The rule's tool (``net`` here)."""
        ...

    @property
    def pattern(self) -> str:
        """A host, then the methods it allows: ``*.pypi.org, GET``."""
        ...

    @property
    def action(self) -> str:
        """``deny``, ``ask`` or ``allow``."""
        ...

    @property
    def scope(self) -> str:
        """Where it holds (user, workspace, session)."""
        ...


def split_net_pattern(pattern: str) -> tuple[str, str]:
    """``"*.pypi.org, GET"`` → ``("*.pypi.org", "GET")``; no methods listed means any."""
    host, _, methods = pattern.partition(",")
    words = [m.strip().upper() for m in methods.replace(",", " ").split() if m.strip()]
    return host.strip(), " ".join(words) or "any"


class NetworkRulesBox(QtWidgets.QGroupBox):
    """Lists the ``net(...)`` rules (host, methods, action, scope) and edits the pinned hosts.

    Signals:
        pin_requested(str): The user asked to pin the host typed (unchecked).
        unpin_requested(str): The user asked to unpin the selected host.
    """

    pin_requested = Signal(str)
    unpin_requested = Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__("Network (shell commands, through the egress proxy)", parent)
        self.setObjectName("networkRules")
        self.table = QtWidgets.QTreeWidget()
        self.table.setObjectName("networkRuleTable")
        self.table.setAccessibleName("Network rules")
        self.table.setHeaderLabels(list(COLUMNS))
        self.table.setRootIsDecorated(False)
        self.empty = QtWidgets.QLabel(
            "No network rules: each host a command reaches is asked about. "
            "Add one with the rule editor, e.g. net(github.com) or net(*.pypi.org, GET)."
        )
        self.empty.setWordWrap(True)
        self.pinned = QtWidgets.QLabel()
        self.pinned.setObjectName("pinnedHosts")
        self.pinned.setWordWrap(True)
        self.pinned_list = QtWidgets.QListWidget()
        self.pinned_list.setObjectName("pinnedHostList")
        self.pinned_list.setAccessibleName("Pinned hosts")
        self.pinned_list.setMaximumHeight(self.pinned_list.fontMetrics().height() * 5)
        self.pin_host = QtWidgets.QLineEdit()
        self.pin_host.setAccessibleName("Host to pin")
        self.pin_host.setPlaceholderText("host name, e.g. updates.vendor.example")
        self.pin_button = QtWidgets.QPushButton("P&in host")
        self.unpin_button = QtWidgets.QPushButton("U&npin selected")
        pin_row = QtWidgets.QHBoxLayout()
        pin_label = QtWidgets.QLabel("Pin:")
        pin_label.setBuddy(self.pin_host)
        pin_row.addWidget(pin_label)
        pin_row.addWidget(self.pin_host, 1)
        pin_row.addWidget(self.pin_button)
        pin_row.addWidget(self.unpin_button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.empty)
        layout.addWidget(self.pinned)
        layout.addWidget(self.pinned_list)
        layout.addLayout(pin_row)
        self.pin_button.clicked.connect(self._pin)
        self.pin_host.returnPressed.connect(self._pin)
        self.unpin_button.clicked.connect(self._unpin)
        self.pin_host.textChanged.connect(self._sync_buttons)
        self.pinned_list.itemSelectionChanged.connect(self._sync_buttons)
        self.show_pinned(())

    def show_rules(self, rules: Iterable[NetRule]) -> None:
        """Show the ``net`` rules among ``rules`` (all scopes), deny first."""
        order = {"deny": 0, "ask": 1, "allow": 2}
        nets = [r for r in rules if r.tool == NET_TOOL]
        nets.sort(key=lambda r: order.get(r.action, 3))
        self.table.clear()
        for rule in nets:
            host, methods = split_net_pattern(rule.pattern)
            item = QtWidgets.QTreeWidgetItem([host, methods, rule.action, rule.scope])
            item.setToolTip(0, f"net({rule.pattern}) → {rule.action}")
            item.setForeground(2, QtGui.QBrush(QtGui.QColor(_COLOURS.get(rule.action, "#000"))))
            self.table.addTopLevelItem(item)
        self.empty.setVisible(not nets)

    def show_pinned(self, hosts: Sequence[str]) -> None:
        """Show which hosts pass through uninspected (they can never carry a capability)."""
        self.pinned.setText(
            "Pinned: passed through uninspected, never with a capability; "
            "for programs that pin a certificate. Applies from the next errand."
            if hosts else "No pinned hosts: every HTTPS request is inspected."
        )
        self.pinned_list.clear()
        self.pinned_list.addItems(list(hosts))
        self.pinned_list.setVisible(bool(hosts))
        self._sync_buttons()

    def pinned_hosts(self) -> list[str]:
        """The hosts the list shows, in order."""
        items = (self.pinned_list.item(i) for i in range(self.pinned_list.count()))
        return [it.text() for it in items if it is not None]

    def clear_pin_entry(self) -> None:
        """Empty the host field (the controller saved what it held)."""
        self.pin_host.clear()

    def _pin(self) -> None:
        if self.pin_host.text().strip():
            self.pin_requested.emit(self.pin_host.text())

    def _unpin(self) -> None:
        for item in self.pinned_list.selectedItems():
            self.unpin_requested.emit(item.text())

    def _sync_buttons(self) -> None:
        self.pin_button.setEnabled(bool(self.pin_host.text().strip()))
        self.unpin_button.setEnabled(bool(self.pinned_list.selectedItems()))

    def rows(self) -> list[tuple[str, ...]]:
        """The table's rows as text tuples (host, methods, action, scope)."""
        items = (self.table.topLevelItem(i) for i in range(self.table.topLevelItemCount()))
        return [tuple(it.text(c) for c in range(len(COLUMNS))) for it in items if it is not None]
