"""The settings screen: permission rules, memory capacities, saved model state, sandbox, paths."""

from __future__ import annotations

from app.controllers.mcp_controller import McpController
from app.controllers.settings_controller import (
    RuleRow,
    SandboxStatus,
    SavedStateUsage,
    SettingsController,
    tool_names,
)
from app.qt import Qt, QtGui, QtWidgets
from app.settings import AppSettings
from app.widgets.mcp_servers import McpServersBox
from app.widgets.network_rules import NetworkRulesBox
from app.widgets.saved_state import SavedStateBox

ACTIONS = ("deny", "ask", "allow")
_ROLE = Qt.ItemDataRole.UserRole
ACTION_TITLES = {
    "deny": "Deny (always refused)",
    "ask": "Ask (permission prompt)",
    "allow": "Allow (no prompt)",
}


class SettingsView(QtWidgets.QWidget):
    """The settings page; changes go through its :class:`SettingsController`."""

    def __init__(
        self,
        controller: SettingsController,
        parent: QtWidgets.QWidget | None = None,
        *,
        mcp: McpController | None = None,
    ) -> None:
        super().__init__(parent)
        self.controller = controller
        # Qt ownership: the controller (its worker thread, its timers) is
        # destroyed with the page, on the GUI thread, never by Python's
        # garbage collector running on some other thread.
        controller.setParent(self)
        self._shown_once = False
        self.setAccessibleName("Settings")
        self._rules: list[RuleRow] = []

        # -- rules ------------------------------------------------------------------
        self.scope = QtWidgets.QComboBox()
        self.scope.setAccessibleName("Rule scope")
        self.rule_lists: dict[str, QtWidgets.QListWidget] = {}
        lists_row = QtWidgets.QHBoxLayout()
        for action in ACTIONS:
            column = QtWidgets.QVBoxLayout()
            title = QtWidgets.QLabel(ACTION_TITLES[action])
            rule_list = QtWidgets.QListWidget()
            rule_list.setAccessibleName(f"{action.capitalize()} rules")
            title.setBuddy(rule_list)
            self.rule_lists[action] = rule_list
            column.addWidget(title)
            column.addWidget(rule_list)
            lists_row.addLayout(column)
            rule_list.itemSelectionChanged.connect(self._sync_buttons)

        self.tool = QtWidgets.QComboBox()
        self.tool.addItems(list(tool_names()))
        self.tool.setAccessibleName("Tool")
        self.pattern = QtWidgets.QLineEdit()
        self.pattern.setAccessibleName("Pattern")
        self.pattern.setPlaceholderText("git status · src/** · domain:api.github.com (empty = any)")
        self.action = QtWidgets.QComboBox()
        for action in ACTIONS:
            self.action.addItem(action, action)
        self.action.setAccessibleName("Action")
        self.add_rule_button = QtWidgets.QPushButton("&Add rule")
        self.remove_rule_button = QtWidgets.QPushButton("Re&move selected")
        new_rule = QtWidgets.QHBoxLayout()
        for text, widget in (
            ("&Tool:", self.tool),
            ("&Pattern:", self.pattern),
            ("A&ction:", self.action),
        ):
            label = QtWidgets.QLabel(text)
            label.setBuddy(widget)
            new_rule.addWidget(label)
            new_rule.addWidget(widget, 1 if widget is self.pattern else 0)
        new_rule.addWidget(self.add_rule_button)
        scope_row = QtWidgets.QHBoxLayout()
        scope_label = QtWidgets.QLabel("&Rules of:")
        scope_label.setBuddy(self.scope)
        scope_row.addWidget(scope_label)
        scope_row.addWidget(self.scope, 1)
        scope_row.addWidget(self.remove_rule_button)
        note = QtWidgets.QLabel(
            "Deny wins over ask, ask over allow; the first matching rule decides. "
            "Workspace rules apply only in that workspace."
        )
        note.setWordWrap(True)
        rules_box = QtWidgets.QGroupBox("Permission rules")
        rules_layout = QtWidgets.QVBoxLayout(rules_box)
        rules_layout.addLayout(scope_row)
        rules_layout.addWidget(note)
        rules_layout.addLayout(lists_row, 1)
        rules_layout.addLayout(new_rule)

        # -- capacities ----------------------------------------------------------------
        self.capacity: dict[str, QtWidgets.QSpinBox] = {}
        capacity_form = QtWidgets.QFormLayout()
        for level, text in (("user", "&User:"), ("project", "Pro&ject:"), ("session", "S&ession:")):
            spin = QtWidgets.QSpinBox()
            spin.setRange(100, 1_000_000)
            spin.setSingleStep(100)
            spin.setSuffix(" tokens")
            spin.setAccessibleName(f"{level.capitalize()} memory capacity")
            self.capacity[level] = spin
            label = QtWidgets.QLabel(text)
            label.setBuddy(spin)
            capacity_form.addRow(label, spin)
        self.auto_lock = QtWidgets.QSpinBox()
        self.auto_lock.setRange(1, 24 * 60)
        self.auto_lock.setSuffix(" min")
        self.auto_lock.setAccessibleName("Vault auto-lock after idle")
        lock_label = QtWidgets.QLabel("Vault auto-&lock:")
        lock_label.setBuddy(self.auto_lock)
        capacity_form.addRow(lock_label, self.auto_lock)
        self.save_button = QtWidgets.QPushButton("&Save")
        capacity_form.addRow("", self.save_button)
        capacity_box = QtWidgets.QGroupBox("Memory capacity per level")
        capacity_box.setLayout(capacity_form)

        # -- sandbox ------------------------------------------------------------------
        self.sandbox_label = QtWidgets.QLabel("Looking for bubblewrap…")
        self.sandbox_label.setObjectName("sandboxStatus")
        self.sandbox_label.setAccessibleName("Sandbox status")
        self.sandbox_label.setWordWrap(True)
        sandbox_box = QtWidgets.QGroupBox("Sandbox")
        QtWidgets.QVBoxLayout(sandbox_box).addWidget(self.sandbox_label)

        # -- paths ----------------------------------------------------------------------
        paths = controller.paths
        self.path_fields: dict[str, QtWidgets.QLineEdit] = {}
        paths_form = QtWidgets.QFormLayout()
        for key, text, value in (
            ("data", "Data", paths.data_dir),
            ("config", "Settings", paths.settings_file),
            ("vault", "Vault", paths.vault_file),
            ("database", "Database", paths.database),
            ("memory", "User memory", paths.memory_dir),
            ("models", "Models", paths.models_dir),
        ):
            field = QtWidgets.QLineEdit(str(value))
            field.setReadOnly(True)
            field.setAccessibleName(f"{text} path")
            field.setCursorPosition(0)
            self.path_fields[key] = field
            paths_form.addRow(text + ":", field)
        paths_box = QtWidgets.QGroupBox("Paths")
        paths_box.setLayout(paths_form)

        self.message = QtWidgets.QLabel()
        self.message.setObjectName("message")
        self.message.setAccessibleName("Message")
        self.message.setWordWrap(True)

        right = QtWidgets.QVBoxLayout()
        right.addWidget(capacity_box)
        self.saved_state = SavedStateBox()  # sessions' saved KV state: cap, disk used, delete
        right.addWidget(self.saved_state)
        right.addWidget(sandbox_box)
        self.network_rules = NetworkRulesBox()  # the net(...) rules (read-only), pinned hosts
        right.addWidget(self.network_rules, 1)
        right.addStretch(1)
        for box in (capacity_box, self.saved_state, sandbox_box):
            # Their fields never shrink below their height; the page scrolls instead.
            box.setSizePolicy(
                QtWidgets.QSizePolicy.Policy.Preferred, QtWidgets.QSizePolicy.Policy.Fixed
            )
        top = QtWidgets.QHBoxLayout()
        top.addWidget(rules_box, 3)
        top.addLayout(right, 2)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(top, 1)
        self.mcp_box = McpServersBox(mcp) if mcp is not None else None
        if self.mcp_box is not None:
            layout.addWidget(self.mcp_box, 1)
        layout.addWidget(paths_box)
        layout.addWidget(self.message)

        order: list[QtWidgets.QWidget] = [
            self.scope,
            self.remove_rule_button,
            *self.rule_lists.values(),
            self.tool,
            self.pattern,
            self.action,
            self.add_rule_button,
            *self.capacity.values(),
            self.auto_lock,
            self.save_button,
            self.saved_state.cap,
            self.saved_state.apply_button,
            self.saved_state.delete_button,
            self.network_rules.table,
            self.network_rules.pinned_list,
            self.network_rules.pin_host,
            self.network_rules.pin_button,
            self.network_rules.unpin_button,
            *self.path_fields.values(),
        ]
        for first, second in zip(order, order[1:], strict=False):
            self.setTabOrder(first, second)

        self.add_rule_button.clicked.connect(self.add_rule)
        self.pattern.returnPressed.connect(self.add_rule)
        self.remove_rule_button.clicked.connect(self.remove_selected)
        self.save_button.clicked.connect(self.save)
        self.scope.currentIndexChanged.connect(self._show_rules)
        controller.rules_loaded.connect(self._on_rules)
        controller.sandbox_detected.connect(self._on_sandbox)
        controller.settings_changed.connect(self._on_settings)
        controller.kv_states_measured.connect(self._on_kv_states)
        controller.notice.connect(self._on_notice)
        controller.error.connect(self._on_error)
        self.saved_state.cap_chosen.connect(controller.save_kv_state_cap)
        self.saved_state.delete_requested.connect(controller.delete_kv_states)
        self.network_rules.pin_requested.connect(self._pin_host)
        self.network_rules.unpin_requested.connect(controller.unpin_host)
        self._fill_scopes()
        self._on_settings(controller.settings, announce=False)
        self._sync_buttons()
        controller.refresh()

    def showEvent(self, event: QtGui.QShowEvent) -> None:  # noqa: N802
        """Qt override: reload when the page comes back (the workspace may have changed)."""
        super().showEvent(event)
        if self._shown_once and not event.spontaneous():
            self._fill_scopes()
            self.controller.refresh()
        self._shown_once = True

    # -- rules --------------------------------------------------------------------------

    def _fill_scopes(self) -> None:
        current = self.scope.currentData() if self.scope.count() else "user"
        self.scope.blockSignals(True)
        self.scope.clear()
        self.scope.addItem("Me (every workspace)", "user")
        workspace = self.controller.workspace
        if workspace:
            self.scope.addItem(f"This workspace: {workspace}", "workspace")
        self.scope.setCurrentIndex(max(0, self.scope.findData(current)))
        self.scope.blockSignals(False)
        self._show_rules()

    def current_scope(self) -> str:
        """``"user"`` or ``"workspace"``."""
        return str(self.scope.currentData() or "user")

    def _on_rules(self, rows: list[RuleRow]) -> None:
        self._rules = list(rows)
        self._show_rules()
        self.network_rules.show_rules(self._rules)

    def _show_rules(self) -> None:
        scope = self.current_scope()
        for action, rule_list in self.rule_lists.items():
            rule_list.clear()
            for row in self._rules:
                in_scope = (row.workspace is not None) == (scope == "workspace")
                if row.action == action and in_scope:
                    item = QtWidgets.QListWidgetItem(row.label())
                    tip = f"{row.label()} → {row.action} ({row.scope} rule #{row.rule_id})"
                    item.setToolTip(tip)
                    item.setData(_ROLE, row)
                    rule_list.addItem(item)
        self._sync_buttons()

    def selected_rule(self) -> RuleRow | None:
        """The rule selected in any of the three lists."""
        for rule_list in self.rule_lists.values():
            for item in rule_list.selectedItems():
                row = item.data(_ROLE)
                if isinstance(row, RuleRow):
                    return row
        return None

    def _sync_buttons(self) -> None:
        self.remove_rule_button.setEnabled(self.selected_rule() is not None)

    def add_rule(self) -> None:
        """Save the rule typed in the new-rule row, in the chosen scope."""
        self.controller.add_rule(
            self.tool.currentText(),
            self.pattern.text(),
            str(self.action.currentData()),
            self.current_scope(),
        )
        self.pattern.clear()

    def remove_selected(self) -> None:
        """Delete the selected rule."""
        row = self.selected_rule()
        if row is not None:
            self.controller.remove_rule(row)

    # -- capacities, sandbox --------------------------------------------------------------

    def save(self) -> None:
        """Persist the capacities and the auto-lock delay."""
        self.controller.save_preferences(
            user=self.capacity["user"].value(),
            project=self.capacity["project"].value(),
            session=self.capacity["session"].value(),
            auto_lock_minutes=self.auto_lock.value(),
        )

    def _on_settings(self, settings: AppSettings, announce: bool = True) -> None:
        self.capacity["user"].setValue(settings.memory.user)
        self.capacity["project"].setValue(settings.memory.project)
        self.capacity["session"].setValue(settings.memory.session)
        self.auto_lock.setValue(settings.auto_lock_minutes)
        self.saved_state.show_cap(settings.kv_state_cap_mb)
        self.network_rules.show_pinned(settings.egress_pinned_hosts)
        if announce:
            self.message.setStyleSheet("")
            self.message.setText(f"Saved to {self.controller.paths.settings_file}.")

    def _pin_host(self, text: str) -> None:
        # A host the controller refuses stays in the field to be corrected.
        if self.controller.pin_host(text):
            self.network_rules.clear_pin_entry()

    def _on_sandbox(self, status: SandboxStatus) -> None:
        where = f" ({status.bwrap_path})" if status.bwrap_path else ""
        self.sandbox_label.setText(status.explanation.replace("found:", f"found{where}:", 1))
        colour = "#1b5e20" if status.available else "#b00020"
        self.sandbox_label.setStyleSheet(f"color: {colour};")

    def _on_kv_states(self, usage: SavedStateUsage) -> None:
        self.saved_state.show_usage(usage.files, usage.size)

    def _on_notice(self, text: str) -> None:
        self.message.setStyleSheet("")
        self.message.setText(text)

    def _on_error(self, text: str) -> None:
        self.message.setStyleSheet("color: #b00020;")
        self.message.setText(text)
