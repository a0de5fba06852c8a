"""The chat / errand screen, driven through a real controller and a scripted runner."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.controllers.agent_runner import HostListener, HostPrompt
from app.controllers.errand_controller import (
    ErrandController,
    PermissionQuestion,
    PermissionReply,
    RunnerContext,
)
from app.qt import Qt
from app.views.chat_view import ChatView, render_result_html
from app.withheld import CredentialOffer

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_ignore("propagateSizeHints")]


class Runner:
    """One tool call that needs permission, or an endless stream until cancelled."""

    def __init__(self, ctx: RunnerContext, endless: bool) -> None:
        self.ctx = ctx
        self.endless = endless
        self.cancelled = threading.Event()

    def run_errand(self, task: str) -> None:
        ev = self.ctx.events
        if self.endless:
            while not self.cancelled.is_set():
                ev.token(" word")
                self.cancelled.wait(0.001)
            ev.final("", {"stop_reason": "cancelled"})
            return
        ev.token('{"tool": "read_file"')
        ev.tool_call("c1", "read_file", {"path": ".env"})
        reply = self.ctx.asker.ask(PermissionQuestion("c1", "read_file", {"path": ".env"}))
        if reply.choice == "deny":
            ev.decision("c1", "deny", reply.reason)
            ev.tool_result("c1", False, f"denied by the user: {reply.reason}", [], False)
        else:
            ev.decision("c1", "allow", "allowed by the user (once)")
            ev.tool_result("c1", True, "KEY=[REDACTED:OPENAI_KEY]", ["OPENAI_KEY"], False)
        ev.final("Done: the key is stored as OPENAI_KEY.", {"stop_reason": "eos"})

    def cancel(self) -> None:
        self.cancelled.set()

    def close(self) -> None:
        pass


@pytest.fixture
def endless() -> list[bool]:
    return [False]


@pytest.fixture
def view(qtbot: Any, workspace: Path, endless: list[bool]) -> Iterator[ChatView]:
    controller = ErrandController(lambda ctx: Runner(ctx, endless[0]), workspace=workspace)
    v = ChatView(controller, [str(workspace)])
    qtbot.add_widget(v)
    v.show()
    qtbot.wait_exposed(v)
    yield v
    assert controller.shutdown(5000)


def answer_with(view: ChatView, reply: PermissionReply) -> None:
    view.controller.permissionRequested.connect(
        lambda q: view.controller.answer_permission(q.call_id, reply)
    )


def test_errand_shows_stream_tool_call_decision_and_redacted_result(
    qtbot: Any, view: ChatView
) -> None:
    answer_with(view, PermissionReply("once"))
    view.task_edit.setPlainText("where is my key?")
    with qtbot.wait_signal(view.controller.errandFinished, timeout=5000):
        qtbot.mouseClick(view.run_button, Qt.MouseButton.LeftButton)
    qtbot.wait_until(lambda: view.run_button.isEnabled(), timeout=5000)
    assert view.live_output.toPlainText().startswith('{"tool": "read_file"')
    assert view.tool_rows() == [
        ("read_file", '{"path": ".env"}', "allow: allowed by the user (once)",
         "KEY=[REDACTED:OPENAI_KEY]")
    ]
    text = view.transcript.toPlainText()
    assert "You: where is my key?" in text
    assert "[REDACTED:OPENAI_KEY]" in text
    assert "redacted: OPENAI_KEY" in text
    assert "Keyless: Done: the key is stored as OPENAI_KEY." in text
    assert view.task_edit.toPlainText() == ""
    assert not view.stop_button.isEnabled()


def test_denied_call_shows_the_reason(qtbot: Any, view: ChatView) -> None:
    answer_with(view, PermissionReply("deny", reason="secrets stay put"))
    view.task_edit.setPlainText("read .env")
    with qtbot.wait_signal(view.controller.errandFinished, timeout=5000):
        view.run_task()
    row = view.tool_rows()[0]
    assert row[2] == "deny: secrets stay put"
    assert row[3].startswith("failed: denied by the user: secrets stay put")


def test_ctrl_enter_runs_the_task(qtbot: Any, view: ChatView) -> None:
    answer_with(view, PermissionReply("once"))
    view.task_edit.setFocus()
    qtbot.keyClicks(view.task_edit, "go")
    with qtbot.wait_signal(view.controller.errandFinished, timeout=5000):
        qtbot.keyClick(view.task_edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert "You: go" in view.transcript.toPlainText()


def test_stop_cancels_while_streaming(qtbot: Any, view: ChatView, endless: list[bool]) -> None:
    endless[0] = True
    view.task_edit.setPlainText("tell a very long story")
    with qtbot.wait_signal(view.controller.tokenReceived, timeout=5000):
        view.run_task()
    assert view.stop_button.isEnabled() and not view.run_button.isEnabled()
    qtbot.wait_until(lambda: "word" in view.live_output.toPlainText(), timeout=5000)
    with qtbot.wait_signal(view.controller.errandFinished, timeout=5000):
        qtbot.mouseClick(view.stop_button, Qt.MouseButton.LeftButton)
    assert view.run_button.isEnabled() and not view.stop_button.isEnabled()
    assert view.status_label.text() == "Ready"


def test_empty_task_and_errors_show_in_the_banner(qtbot: Any, view: ChatView) -> None:
    view.run_task()
    assert view.banner.text() == "Type a task first."
    view.controller.errandFailed.emit("the model file is missing")
    assert view.banner.text() == "the model file is missing"
    assert view.banner.severity == "error"
    assert "Problem: the model file is missing" in view.transcript.toPlainText()


def test_sessions_new_and_switch_back(qtbot: Any, view: ChatView) -> None:
    answer_with(view, PermissionReply("once"))
    view.task_edit.setPlainText("first errand")
    with qtbot.wait_signal(view.controller.errandFinished, timeout=5000):
        view.run_task()
    first = view.controller.current_session
    qtbot.mouseClick(view.new_session_button, Qt.MouseButton.LeftButton)
    assert view.session_list.count() == 2
    assert view.transcript.toPlainText().strip() == ""
    assert view.tool_rows() == []
    item = next(
        view.session_list.item(i)
        for i in range(view.session_list.count())
        if view.session_list.item(i).data(Qt.ItemDataRole.UserRole) == first
    )
    assert item.text().startswith("first errand")
    view._session_activated(item)
    assert view.controller.current_session == first
    assert "You: first errand" in view.transcript.toPlainText()
    assert len(view.tool_rows()) == 1


def test_workspace_chooser(qtbot: Any, view: ChatView, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    with qtbot.wait_signal(view.workspaceChosen) as blocker:
        view.choose_workspace(str(other))
    assert blocker.args == [str(other)]
    assert view.controller.workspace == other
    assert view.workspace_combo.currentText() == str(other)
    view.choose_workspace(str(tmp_path / "missing"))
    assert "not an existing folder" in view.banner.text()
    assert view.controller.workspace == other


def test_isolation_off_is_said_plainly(view: ChatView) -> None:
    view.controller.isolationReported.emit(False, "bubblewrap is not available")
    assert view.banner.text() == "OS isolation is off: bubblewrap is not available"


def test_inputs_have_labels_and_names(view: ChatView) -> None:
    for w in (view.task_edit, view.workspace_combo, view.session_list, view.transcript,
              view.live_output, view.tool_table):
        assert w.accessibleName(), w.objectName()


def test_render_result_highlights_redactions_and_escapes() -> None:
    out = render_result_html("<b>x</b> [REDACTED:GH_TOKEN] & y")
    assert "&lt;b&gt;x&lt;/b&gt;" in out
    assert ">[REDACTED:GH_TOKEN]</span>" in out
    assert "&amp; y" in out


def test_tab_order_follows_reading_order(view: ChatView) -> None:
    wanted = [view.workspace_combo, view.browse_button, view.task_edit, view.run_button,
              view.transcript, view.live_output, view.tool_table, view.new_session_button,
              view.session_list]
    chain = []
    w = view.workspace_combo.nextInFocusChain()
    while w is not view.workspace_combo and len(chain) < 200:
        if w.focusPolicy() & Qt.FocusPolicy.TabFocus and w.isVisibleTo(view):
            chain.append(w)
        w = w.nextInFocusChain()
    # (The Stop button sits after Run; it is disabled until an errand runs.)
    assert [x for x in [view.workspace_combo, *chain] if x in wanted] == wanted


def test_memory_withheld_while_the_vault_is_locked_shows_a_banner(
    qtbot: Any, tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from app.controllers.agent_runner import agent_host_factory
    from app.paths import default_paths
    from app.services import AppServices
    from vault._crypto import Argon2Params
    from vault.keystore import NoKeyring
    from vault.store import Vault

    monkeypatch.setenv("KEYLESS_NO_KEYRING", "1")
    paths = default_paths().ensure()
    Vault.create(
        paths.vault_file,
        passphrase="correct horse",
        use_keyring=False,
        keystore=NoKeyring(),
        kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64),
        idle_timeout=None,
    ).lock()
    (workspace / "KEYLESS.md").write_text("Always run make test before committing.\n")
    script = tmp_path / "script.json"
    script.write_text(json.dumps([json.dumps({"final": "ok"})]))
    services = AppServices()
    controller = ErrandController(
        agent_host_factory(services, lambda: None, scripted_model=script), workspace=workspace
    )
    v = ChatView(controller, [str(workspace)])
    qtbot.add_widget(v)
    try:
        v.task_edit.setPlainText("what do you remember?")
        with qtbot.wait_signal(controller.errandFinished, timeout=60_000):
            v.run_task()
        assert "1 memory file(s) were withheld from the agent" in v.banner.text()
        assert "Unlock the vault to give the agent its memory" in v.banner.text()
        assert v.banner.severity == "warning"
        assert "Note: 1 memory file(s) were withheld" in v.transcript.toPlainText()
    finally:
        assert controller.shutdown(10_000)
        services.close()


# -- credentials withheld from the agent ------------------------------------------------------

TOKEN = "ghp_" + "Zq3Vb8Nm1Lk4Jh7Gf2Ds5Ap9Ow6Ie0Ru3Ty8"


class KeepBuffers:
    """The errand's events sink, keeping each offer's value buffer for the test to inspect."""

    def __init__(self, events: Any, buffers: list[bytearray]) -> None:
        self.events = events
        self.buffers = buffers

    def __getattr__(self, name: str) -> Any:
        return getattr(self.events, name)

    def secret_found(self, offer: CredentialOffer) -> None:
        self.buffers.append(offer._value)  # type: ignore[arg-type]  # the test's window
        self.events.secret_found(offer)


class FindingRunner:
    """Reports the scanner's findings for a .env read twice, as the host's listener would."""

    def __init__(self, ctx: RunnerContext, buffers: list[bytearray]) -> None:
        self.listener = HostListener(KeepBuffers(ctx.events, buffers), HostPrompt(ctx.asker))

    def run_errand(self, task: str) -> None:
        from agent.host.events import AgentEvent
        from vault.secretscan import withhold

        for _ in range(2):  # the same value twice: offered once
            _text, findings = withhold(f"# keys\nSECRET_TOKEN={TOKEN}\n", source=".env")
            for f in findings:
                event = AgentEvent(
                    "secret_found", tool="read_file", data={**f.describe(), "offer": f}
                )
                self.listener(event)
        self.listener(AgentEvent("final", text="done"))

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def buffers() -> list[bytearray]:
    return []


@pytest.fixture
def offers_view(qtbot: Any, workspace: Path, buffers: list[bytearray]) -> Iterator[ChatView]:
    controller = ErrandController(lambda ctx: FindingRunner(ctx, buffers), workspace=workspace)
    v = ChatView(controller, [str(workspace)])
    qtbot.add_widget(v)
    v.show()
    qtbot.wait_exposed(v)
    yield v
    assert controller.shutdown(5000)


def run_finding_errand(qtbot: Any, view: ChatView) -> None:
    view.task_edit.setPlainText("read .env")
    with qtbot.wait_signal(view.controller.errandFinished, timeout=5000):
        view.run_task()


def test_a_withheld_credential_is_offered_once_per_value(
    qtbot: Any, offers_view: ChatView, buffers: list[bytearray]
) -> None:
    run_finding_errand(qtbot, offers_view)
    [notice] = offers_view.controller.pending_offers()
    [banner] = offers_view.offer_banners.values()
    assert banner.text() == notice.text == (
        "A credential (GitHub token) in .env:2 was withheld from the agent. "
        "Move SECRET_TOKEN into the vault?"
    )
    assert banner.action_button.text() == "&Move to vault…"
    assert TOKEN not in repr(notice) and TOKEN not in offers_view.transcript.toPlainText()
    # The same value in a later errand is not offered again, and its repeats are zeroed.
    run_finding_errand(qtbot, offers_view)
    assert len(offers_view.offer_banners) == 1
    assert len(buffers) == 4
    assert bytes(buffers[0]) == TOKEN.encode()
    assert all(not any(b) for b in buffers[1:])


def test_dismissing_zeroes_the_value_and_keeps_no_reference(
    qtbot: Any, offers_view: ChatView, buffers: list[bytearray]
) -> None:
    run_finding_errand(qtbot, offers_view)
    [offer_id] = offers_view.offer_banners
    buffer = buffers[0]
    assert bytes(buffer) == TOKEN.encode()

    qtbot.mouseClick(offers_view.offer_banners[offer_id].dismiss_button, Qt.MouseButton.LeftButton)
    assert bytes(buffer) == bytes(len(buffer))  # zeroed in place
    assert offers_view.offer_banners == {} and offers_view.controller.pending_offers() == []
    assert offers_view.controller.take_offer(offer_id) is None


def test_move_to_vault_hands_the_offer_on_and_forgets_it(
    qtbot: Any, offers_view: ChatView
) -> None:
    run_finding_errand(qtbot, offers_view)
    [banner] = offers_view.offer_banners.values()
    with qtbot.wait_signal(offers_view.moveToVaultRequested, timeout=1000) as moved:
        qtbot.mouseClick(banner.action_button, Qt.MouseButton.LeftButton)
    offer = moved.args[0]
    value = offer.take_value()
    assert bytes(value) == TOKEN.encode()
    offer.discard()
    assert offers_view.offer_banners == {} and offers_view.controller.pending_offers() == []


class ShellRunner(Runner):
    """A shell call whose command sent two requests through the egress proxy."""

    def run_errand(self, task: str) -> None:
        ev = self.ctx.events
        ev.tool_call("c1", "shell", {"command": "git push"})
        ev.decision("c1", "allow", "rule shell(git *)")
        ev.egress("c1", {"method": "GET", "host": "github.com", "path": "/o/r/info/refs",
                         "decision": "allow", "reason": "rule net(github.com)"})
        ev.egress("c1", {"method": "POST", "host": "evil.example", "path": "/x",
                         "decision": "deny", "reason": "denied by the user (no rule)"})
        ev.tool_result("c1", True, "pushed", [], False)
        ev.final("Pushed.", {"stop_reason": "eos"})


def test_proxied_requests_are_listed_under_the_shell_call_that_made_them(
    qtbot: Any, workspace: Path
) -> None:
    controller = ErrandController(lambda ctx: ShellRunner(ctx, False), workspace=workspace)
    view = ChatView(controller, [str(workspace)])
    qtbot.add_widget(view)
    try:
        view.task_edit.setPlainText("push it")
        with qtbot.wait_signal(controller.errandFinished, timeout=5000):
            view.run_task()
        expected = [
            ("net", "GET github.com/o/r/info/refs", "allow: rule net(github.com)"),
            ("net", "POST evil.example/x", "deny: denied by the user (no rule)"),
        ]
        assert [r[0] for r in view.tool_rows()] == ["shell"]
        assert view.request_rows(0) == expected
        text = view.transcript.toPlainText()
        assert "↳ net GET github.com/o/r/info/refs — allow (rule net(github.com))" in text
        # The session's record re-renders them under the call.
        view._show_session(controller.current_session)
        assert view.request_rows(0) == expected
    finally:
        assert controller.shutdown(5000)
