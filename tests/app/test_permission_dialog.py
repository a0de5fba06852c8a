"""The permission prompt and the separate unsandboxed-run dialog."""

from __future__ import annotations

from typing import Any

import pytest

from app.controllers.errand_controller import PermissionQuestion, PermissionReply
from app.dialogs.permission import PermissionDialog, UnsandboxedDialog, dialog_for
from app.qt import Qt, QtWidgets

# The offscreen platform warns that it cannot propagate size hints when a window shows.
pytestmark = [pytest.mark.gui, pytest.mark.qt_log_ignore("propagateSizeHints")]

LONG = "x" * 5000


def question(**kw: Any) -> PermissionQuestion:
    base: dict[str, Any] = {
        "call_id": "c1",
        "tool": "shell",
        "arguments": {"command": "git status", "blob": LONG},
        "why": "no_rule",
        "suggested_rule": "shell(git status)",
    }
    base.update(kw)
    return PermissionQuestion(**base)


def open_dialog(qtbot: Any, dialog: QtWidgets.QDialog) -> list[PermissionReply]:
    qtbot.add_widget(dialog)
    replies: list[PermissionReply] = []
    dialog.answered.connect(replies.append)  # type: ignore[attr-defined]
    dialog.show()
    qtbot.wait_exposed(dialog)
    return replies


def test_shows_tool_full_arguments_and_why(qtbot: Any) -> None:
    d = PermissionDialog(question(why="tainted", detail="Effect: execute."))
    open_dialog(qtbot, d)
    assert "shell" in d.windowTitle()
    assert LONG in d.arguments_view.toPlainText()  # in full, scrollable
    assert d.arguments_view.verticalScrollBar().maximum() > 0
    assert "Untrusted content" in d.why_label.text()
    assert "Effect: execute." in d.why_label.text()
    assert d.rule_edit.text() == "shell(git status)"


def test_enter_denies_by_default(qtbot: Any) -> None:
    d = PermissionDialog(question())
    replies = open_dialog(qtbot, d)
    assert d.deny_button.isDefault()
    assert d.focusWidget() is d.deny_button
    qtbot.keyClick(d, Qt.Key.Key_Return)
    assert replies == [PermissionReply("deny")]
    assert d.result() == QtWidgets.QDialog.DialogCode.Rejected


def test_escape_denies_with_the_typed_reason(qtbot: Any) -> None:
    d = PermissionDialog(question())
    replies = open_dialog(qtbot, d)
    d.reason_edit.setFocus()
    qtbot.keyClicks(d.reason_edit, "not on main")
    qtbot.keyClick(d.reason_edit, Qt.Key.Key_Escape)
    assert replies == [PermissionReply("deny", reason="not on main")]


@pytest.mark.parametrize(
    ("button", "choice"), [("once_button", "once"), ("session_button", "session")]
)
def test_allow_buttons(qtbot: Any, button: str, choice: str) -> None:
    d = PermissionDialog(question())
    replies = open_dialog(qtbot, d)
    qtbot.mouseClick(getattr(d, button), Qt.MouseButton.LeftButton)
    assert [r.choice for r in replies] == [choice]
    assert d.result() == QtWidgets.QDialog.DialogCode.Accepted


def test_always_saves_the_edited_rule_and_scope(qtbot: Any) -> None:
    d = PermissionDialog(question())
    replies = open_dialog(qtbot, d)
    d.rule_edit.setText("shell(git *)")
    d.scope_combo.setCurrentIndex(d.scope_combo.findData("user"))
    qtbot.mouseClick(d.always_button, Qt.MouseButton.LeftButton)
    assert replies == [PermissionReply("always", rule_text="shell(git *)", scope="user")]


def test_an_invalid_rule_cannot_be_saved(qtbot: Any) -> None:
    checks: list[str] = []

    def check(text: str) -> str | None:
        checks.append(text)
        return "shell pattern has no words" if text.endswith("( )") else None

    d = PermissionDialog(question(rule_check=check))
    replies = open_dialog(qtbot, d)
    d.rule_edit.setText("read_file(src/**)")
    assert not d.always_button.isEnabled()
    assert "this call is 'shell'" in d.rule_error.text()
    d.rule_edit.setText("shell( )")
    assert not d.always_button.isEnabled()
    assert d.rule_error.text() == "shell pattern has no words"
    d.rule_edit.setText("shell(")
    assert "tool(pattern)" in d.rule_error.text()
    d.rule_edit.setText("shell(git diff)")
    assert d.always_button.isEnabled() and d.rule_error.isHidden()
    assert replies == []


def tab_chain(start: QtWidgets.QWidget) -> list[QtWidgets.QWidget]:
    """The widgets Tab visits from ``start``, in order (one lap of the focus chain)."""
    chain: list[QtWidgets.QWidget] = []
    w = start.nextInFocusChain()
    while w is not start and len(chain) < 200:
        if w.focusPolicy() & Qt.FocusPolicy.TabFocus and w.isVisibleTo(start.window()):
            chain.append(w)
        w = w.nextInFocusChain()
    return chain


def test_every_control_is_reachable_by_tab_in_reading_order(qtbot: Any) -> None:
    d = PermissionDialog(question())
    open_dialog(qtbot, d)
    chain = tab_chain(d.arguments_view)
    wanted = [
        d.rule_edit,
        d.scope_combo,
        d.reason_edit,
        d.once_button,
        d.session_button,
        d.always_button,
        d.deny_button,
    ]
    assert [w for w in chain if w in wanted] == wanted
    assert d.rule_edit.accessibleName() and d.reason_edit.accessibleName()
    assert d.arguments_view.accessibleName()


def test_unsandboxed_gets_its_own_dialog(qtbot: Any) -> None:
    q = question(why="unsandboxed", arguments={"command": "make install"})
    d = dialog_for(q)
    assert isinstance(d, UnsandboxedDialog)
    replies = open_dialog(qtbot, d)
    assert d.command_view.toPlainText() == "make install"
    assert "WITHOUT" in d.findChild(QtWidgets.QLabel, "unsandboxedHeader").text()
    # The run button needs the explicit acknowledgement; Enter denies.
    assert not d.run_button.isEnabled()
    qtbot.mouseClick(d.run_button, Qt.MouseButton.LeftButton)
    assert replies == []
    qtbot.keyClick(d, Qt.Key.Key_Return)
    assert [r.choice for r in replies] == ["deny"]


def test_unsandboxed_allows_once_after_acknowledging(qtbot: Any) -> None:
    d = UnsandboxedDialog(question(why="unsandboxed", arguments={"command": "make"}))
    replies = open_dialog(qtbot, d)
    d.acknowledge.setChecked(True)
    qtbot.mouseClick(d.run_button, Qt.MouseButton.LeftButton)
    assert replies == [PermissionReply("once")]


def test_ordinary_questions_get_the_ordinary_dialog(qtbot: Any) -> None:
    d = dialog_for(question())
    qtbot.add_widget(d)
    assert isinstance(d, PermissionDialog)


def test_a_write_that_runs_code_on_the_machine_is_marked(qtbot: Any) -> None:
    lines = (".vscode/tasks.json: VS Code runs tasks and uses interpreters and shells named there",)
    d = PermissionDialog(
        question(tool="write_file", arguments={"path": ".vscode/tasks.json"}, runs_code=lines)
    )
    open_dialog(qtbot, d)
    assert d.runs_code_label.isVisible()
    assert "Runs code on your machine" in d.runs_code_label.text()
    assert ".vscode/tasks.json" in d.runs_code_label.text()
    plain = PermissionDialog(question())
    open_dialog(qtbot, plain)
    assert not plain.runs_code_label.isVisible()


def test_the_runner_carries_runs_code_into_the_question() -> None:
    from agent.host.permission import PermissionRequest
    from agent.host.policy import Rule
    from app.controllers.agent_runner import question_from_request

    request = PermissionRequest(
        tool="write_file",
        arguments={"path": ".envrc", "content": "x"},
        effect="write",
        reason="default for write calls",
        tainted=False,
        suggested_rule=Rule(tool="write_file", pattern=".envrc", action="allow"),
        runs_code=[".envrc: direnv runs it when you enter the directory"],
    )
    assert question_from_request("c1", request).runs_code == (
        ".envrc: direnv runs it when you enter the directory",
    )


def test_a_net_question_names_the_request_and_the_command_that_asked(qtbot: Any) -> None:
    from agent.host.permission import PermissionRequest
    from agent.host.policy import Rule
    from app.controllers.agent_runner import question_from_request

    request = PermissionRequest(
        tool="net",
        arguments={"command": "git push origin main", "host": "github.com", "method": "POST",
                   "path": "/me/repo.git/git-receive-pack", "capability": True},
        effect="egress",
        reason="default for egress calls",
        tainted=False,
        suggested_rule=Rule.parse("net(github.com)", action="allow"),
    )
    question = question_from_request("c1", request)
    assert question.suggested_rule == "net(github.com)"
    dialog = PermissionDialog(question)
    open_dialog(qtbot, dialog)
    why = dialog.why_label.text()
    assert "POST github.com/me/repo.git/git-receive-pack" in why
    assert "asked by: git push origin main" in why
