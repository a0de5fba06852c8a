"""The permission prompt: one modal dialog per tool call that no rule decides.

:class:`PermissionDialog` shows the tool, its arguments in full, why the user
is asked, and offers allow once / allow for this session / always allow (with
the exact rule that will be saved, editable) / deny (with an optional reason
sent back to the agent). Deny is the default button, and Escape denies too.

Running a command without a sandbox is a different kind of decision, so it
gets its own, visibly different :class:`UnsandboxedDialog`: a red header, the
command in large type, and an explicit acknowledgement before the run button
is enabled. It only ever allows one call.
"""

from __future__ import annotations

from app.controllers.errand_controller import (
    PermissionQuestion,
    PermissionReply,
    RuleScope,
    parse_rule_text,
)
from app.qt import Qt, QtGui, QtWidgets, Signal

_MONO = QtGui.QFontDatabase.SystemFont.FixedFont


class _QuestionDialog(QtWidgets.QDialog):
    """A modal question that is answered exactly once; any way of closing it denies.

    Subclasses build the widgets, including ``reason_edit`` (the reason a deny
    sends to the agent), and call :meth:`_finish` with the user's choice.
    """

    answered = Signal(object)
    reason_edit: QtWidgets.QLineEdit

    def __init__(self, question: PermissionQuestion, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.question = question
        self._reply: PermissionReply | None = None

    def _deny(self) -> None:
        self._finish(PermissionReply("deny", reason=self.reason_edit.text().strip()))

    def _finish(self, reply: PermissionReply) -> None:
        if self._reply is not None:
            return
        self._reply = reply
        self.answered.emit(reply)
        if reply.choice == "deny":
            self.reject()
        else:
            self.accept()

    def dismiss(self) -> None:
        """Close without answering (the question went away: errand cancelled or ended)."""
        self._reply = PermissionReply("deny", reason="the question was withdrawn")
        super().reject()

    def reject(self) -> None:
        """Escape or the close button: deny (with whatever reason was typed)."""
        if self._reply is None:
            self._deny()
            return
        super().reject()


class PermissionDialog(_QuestionDialog):
    """Ask whether one tool call may run.

    Emits :attr:`answered` once with the :class:`PermissionReply`; closing the
    dialog any other way (Escape, the window's close button) answers deny.
    """

    def __init__(self, question: PermissionQuestion, parent: QtWidgets.QWidget | None = None):
        super().__init__(question, parent)
        self.setObjectName("permissionDialog")
        self.setWindowTitle(f"Allow {question.tool}?")
        self.setModal(True)
        self.setMinimumWidth(560)

        title = QtWidgets.QLabel(f"The agent wants to run <b>{_html(question.tool)}</b>")
        title.setObjectName("permissionTitle")
        title.setTextFormat(Qt.TextFormat.RichText)
        font = title.font()
        font.setPointSizeF(font.pointSizeF() * 1.25)
        title.setFont(font)

        self.why_label = QtWidgets.QLabel(question.why_text)
        self.why_label.setObjectName("permissionWhy")
        self.why_label.setWordWrap(True)
        self.why_label.setAccessibleName("Why you are asked")

        # Shown above the arguments, in red: the write is a foothold on the host.
        self.runs_code_label = QtWidgets.QLabel(
            "<b>⚠ Runs code on your machine</b> — your own tools execute these files:<br>"
            + "<br>".join(f"• {_html(line)}" for line in question.runs_code)
        )
        self.runs_code_label.setObjectName("permissionRunsCode")
        self.runs_code_label.setTextFormat(Qt.TextFormat.RichText)
        self.runs_code_label.setWordWrap(True)
        self.runs_code_label.setAccessibleName("Runs code on your machine")
        self.runs_code_label.setStyleSheet(
            "#permissionRunsCode { background: #fff4f4; color: #b00020;"
            " border: 2px solid #b00020; padding: 8px; }"
        )
        self.runs_code_label.setVisible(bool(question.runs_code))

        args_label = QtWidgets.QLabel("&Arguments (in full):")
        self.arguments_view = QtWidgets.QPlainTextEdit(question.arguments_text)
        self.arguments_view.setObjectName("permissionArguments")
        self.arguments_view.setReadOnly(True)
        self.arguments_view.setFont(QtGui.QFontDatabase.systemFont(_MONO))
        self.arguments_view.setLineWrapMode(QtWidgets.QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.arguments_view.setAccessibleName("Tool call arguments")
        self.arguments_view.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByKeyboard
            | Qt.TextInteractionFlag.TextSelectableByMouse
        )
        args_label.setBuddy(self.arguments_view)

        rule_label = QtWidgets.QLabel("&Rule that 'Always allow' saves:")
        self.rule_edit = QtWidgets.QLineEdit(question.suggested_rule or f"{question.tool}()")
        self.rule_edit.setObjectName("permissionRule")
        self.rule_edit.setFont(QtGui.QFontDatabase.systemFont(_MONO))
        self.rule_edit.setAccessibleName("Rule to save for always allow")
        self.rule_edit.setToolTip(
            "Written as tool(pattern), e.g. shell(git status), read_file(src/**), "
            "http_request(domain:api.github.com). You can narrow or widen it before saving."
        )
        rule_label.setBuddy(self.rule_edit)
        self.scope_combo = QtWidgets.QComboBox()
        self.scope_combo.setObjectName("permissionScope")
        self.scope_combo.addItem("in this workspace", "workspace")
        self.scope_combo.addItem("in every workspace", "user")
        self.scope_combo.setAccessibleName("Where the rule applies")
        self.rule_error = QtWidgets.QLabel()
        self.rule_error.setObjectName("permissionRuleError")
        self.rule_error.setStyleSheet("color: #b00020;")
        self.rule_error.hide()
        self.rule_edit.textChanged.connect(self._check_rule)

        reason_label = QtWidgets.QLabel("R&eason if you deny (sent to the agent, optional):")
        self.reason_edit = QtWidgets.QLineEdit()
        self.reason_edit.setObjectName("permissionReason")
        self.reason_edit.setAccessibleName("Reason for denying")
        self.reason_edit.setPlaceholderText("e.g. don't touch the build directory")
        reason_label.setBuddy(self.reason_edit)

        self.once_button = QtWidgets.QPushButton("Allow &once")
        self.session_button = QtWidgets.QPushButton("Allow for this &session")
        self.always_button = QtWidgets.QPushButton("A&lways allow")
        self.deny_button = QtWidgets.QPushButton("&Deny")
        for button, name in (
            (self.once_button, "allowOnce"),
            (self.session_button, "allowSession"),
            (self.always_button, "allowAlways"),
            (self.deny_button, "deny"),
        ):
            button.setObjectName(name)
            button.setAutoDefault(False)
        self.deny_button.setDefault(True)
        self.deny_button.setAutoDefault(True)
        self.once_button.clicked.connect(lambda: self._finish(PermissionReply("once")))
        self.session_button.clicked.connect(lambda: self._finish(PermissionReply("session")))
        self.always_button.clicked.connect(self._always)
        self.deny_button.clicked.connect(self._deny)

        rule_row = QtWidgets.QHBoxLayout()
        rule_row.addWidget(self.rule_edit, 1)
        rule_row.addWidget(self.scope_combo)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.once_button)
        buttons.addWidget(self.session_button)
        buttons.addWidget(self.always_button)
        buttons.addStretch(1)
        buttons.addWidget(self.deny_button)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(self.why_label)
        layout.addWidget(self.runs_code_label)
        layout.addWidget(args_label)
        layout.addWidget(self.arguments_view, 1)
        layout.addWidget(rule_label)
        layout.addLayout(rule_row)
        layout.addWidget(self.rule_error)
        layout.addWidget(reason_label)
        layout.addWidget(self.reason_edit)
        layout.addLayout(buttons)

        # Tab order follows reading order; Deny has the focus so Enter denies.
        QtWidgets.QWidget.setTabOrder(self.arguments_view, self.rule_edit)
        QtWidgets.QWidget.setTabOrder(self.rule_edit, self.scope_combo)
        QtWidgets.QWidget.setTabOrder(self.scope_combo, self.reason_edit)
        QtWidgets.QWidget.setTabOrder(self.reason_edit, self.once_button)
        QtWidgets.QWidget.setTabOrder(self.once_button, self.session_button)
        QtWidgets.QWidget.setTabOrder(self.session_button, self.always_button)
        QtWidgets.QWidget.setTabOrder(self.always_button, self.deny_button)
        self.deny_button.setFocus()

    @property
    def reply(self) -> PermissionReply | None:
        """The answer given, or None while the dialog is open."""
        return self._reply

    def _check_rule(self) -> bool:
        try:
            tool, _ = parse_rule_text(self.rule_edit.text())
        except ValueError as e:
            self.rule_error.setText(str(e))
            self.rule_error.show()
            self.always_button.setEnabled(False)
            return False
        problem = None
        if tool != self.question.tool:
            problem = f"the rule names {tool!r} but this call is {self.question.tool!r}"
        elif self.question.rule_check is not None:
            problem = self.question.rule_check(self.rule_edit.text())
        if problem:
            self.rule_error.setText(problem)
            self.rule_error.show()
            self.always_button.setEnabled(False)
            return False
        self.rule_error.hide()
        self.always_button.setEnabled(True)
        return True

    def _always(self) -> None:
        if not self._check_rule():
            return
        scope: RuleScope = "user" if self.scope_combo.currentData() == "user" else "workspace"
        rule = self.rule_edit.text().strip()
        self._finish(PermissionReply("always", rule_text=rule, scope=scope))



class UnsandboxedDialog(_QuestionDialog):
    """Ask whether one command may run WITHOUT a sandbox (allow once or deny).

    The run button stays disabled until the user ticks the acknowledgement, so
    a reflexive Enter can never approve it.
    """

    def __init__(self, question: PermissionQuestion, parent: QtWidgets.QWidget | None = None):
        super().__init__(question, parent)
        self.setObjectName("unsandboxedDialog")
        self.setWindowTitle("Run without a sandbox?")
        self.setModal(True)
        self.setMinimumWidth(560)
        self.setStyleSheet(
            "#unsandboxedHeader { background: #b00020; color: white; padding: 12px;"
            " font-weight: bold; border-radius: 4px; }"
            "#unsandboxedCommand { background: #fff4f4; border: 2px solid #b00020; }"
        )

        header = QtWidgets.QLabel("⚠  Run WITHOUT a sandbox")
        header.setObjectName("unsandboxedHeader")
        font = header.font()
        font.setPointSizeF(font.pointSizeF() * 1.4)
        header.setFont(font)

        explanation = QtWidgets.QLabel(
            "Bubblewrap is not available, so this command would run with <b>your full user "
            "permissions</b>: it could read your files and keys, use the network and change "
            "anything you can change. This approval is for this one command only and is "
            "recorded in the audit log."
        )
        explanation.setWordWrap(True)
        explanation.setTextFormat(Qt.TextFormat.RichText)

        command = question.arguments.get("command", question.arguments_text)
        command_label = QtWidgets.QLabel("&Command:")
        self.command_view = QtWidgets.QPlainTextEdit(str(command))
        self.command_view.setObjectName("unsandboxedCommand")
        self.command_view.setReadOnly(True)
        mono = QtGui.QFontDatabase.systemFont(_MONO)
        mono.setPointSizeF(mono.pointSizeF() * 1.2)
        self.command_view.setFont(mono)
        self.command_view.setAccessibleName("Command to run without a sandbox")
        self.command_view.setMaximumHeight(140)
        command_label.setBuddy(self.command_view)

        self.acknowledge = QtWidgets.QCheckBox(
            "I understand this command runs unsandboxed with my permissions"
        )
        self.acknowledge.setObjectName("unsandboxedAcknowledge")

        reason_label = QtWidgets.QLabel("R&eason if you deny (sent to the agent, optional):")
        self.reason_edit = QtWidgets.QLineEdit()
        self.reason_edit.setObjectName("permissionReason")
        self.reason_edit.setAccessibleName("Reason for denying")
        reason_label.setBuddy(self.reason_edit)

        self.run_button = QtWidgets.QPushButton("&Run unsandboxed once")
        self.run_button.setObjectName("runUnsandboxed")
        self.run_button.setEnabled(False)
        self.run_button.setAutoDefault(False)
        self.deny_button = QtWidgets.QPushButton("&Deny")
        self.deny_button.setObjectName("deny")
        self.deny_button.setDefault(True)
        self.acknowledge.toggled.connect(self.run_button.setEnabled)
        self.run_button.clicked.connect(self._run)
        self.deny_button.clicked.connect(self._deny)

        buttons = QtWidgets.QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addStretch(1)
        buttons.addWidget(self.deny_button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(header)
        layout.addWidget(explanation)
        layout.addWidget(command_label)
        layout.addWidget(self.command_view)
        layout.addWidget(self.acknowledge)
        layout.addWidget(reason_label)
        layout.addWidget(self.reason_edit)
        layout.addLayout(buttons)
        QtWidgets.QWidget.setTabOrder(self.command_view, self.acknowledge)
        QtWidgets.QWidget.setTabOrder(self.acknowledge, self.reason_edit)
        QtWidgets.QWidget.setTabOrder(self.reason_edit, self.run_button)
        QtWidgets.QWidget.setTabOrder(self.run_button, self.deny_button)
        self.deny_button.setFocus()

    @property
    def reply(self) -> PermissionReply | None:
        """The answer given, or None while the dialog is open."""
        return self._reply

    def _run(self) -> None:
        if self.acknowledge.isChecked():
            self._finish(PermissionReply("once"))



def dialog_for(
    question: PermissionQuestion, parent: QtWidgets.QWidget | None = None
) -> PermissionDialog | UnsandboxedDialog:
    """Return the right dialog for ``question`` (unsandboxed runs get their own)."""
    if question.why == "unsandboxed":
        return UnsandboxedDialog(question, parent)
    return PermissionDialog(question, parent)


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
