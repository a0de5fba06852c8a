"""The errand controller: worker thread, signals, permission round trip, cancel."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.controllers.errand_controller import (
    ErrandController,
    PermissionQuestion,
    PermissionReply,
    RunnerContext,
    parse_rule_text,
)
from tests.agent.test_mcp_http import port

__all__ = ["port"]  # the loopback streamable-HTTP MCP server, a fixture

pytestmark = pytest.mark.gui


class SyntheticRunner:
    """Plays an errand the way the agent host reports one, from the worker thread."""

    def __init__(self, ctx: RunnerContext, *, stream_forever: bool = False) -> None:
        self.ctx = ctx
        self.stream_forever = stream_forever
        self.cancelled = threading.Event()
        self.closed = False
        self.replies: list[PermissionReply] = []
        self.thread_names: list[str] = []

    def run_errand(self, task: str) -> None:
        self.thread_names.append(
            "gui" if threading.current_thread() is threading.main_thread() else "worker"
        )
        ev = self.ctx.events
        self.cancelled.clear()
        if self.stream_forever:
            n = 0
            while not self.cancelled.is_set():
                ev.token(f" t{n}")
                n += 1
                self.cancelled.wait(0.001)
            ev.final("stopped", {"stop_reason": "cancelled", "n_generated": n})
            return
        for word in ("Let", " me", " look"):
            ev.token(word)
        args = {"command": "ls -la"}
        ev.tool_call("c1", "shell", args)
        reply = self.ctx.asker.ask(
            PermissionQuestion("c1", "shell", args, "no_rule", suggested_rule="shell(ls -la)")
        )
        self.replies.append(reply)
        if reply.choice == "deny":
            ev.decision("c1", "deny", reply.reason or "the user denied this call")
            ev.tool_result("c1", False, f"denied by the user: {reply.reason}", [], False)
            ev.final("I was not allowed.", {"stop_reason": "eos"})
            return
        ev.decision("c1", "allow", f"allowed by the user ({reply.choice})")
        ev.tool_result("c1", True, "token=[REDACTED:API_KEY]\nREADME.md", ["API_KEY"], False)
        ev.final("There is a README.", {"stop_reason": "eos", "tokens_per_second": 123.0})

    def cancel(self) -> None:
        self.cancelled.set()

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def runners() -> list[SyntheticRunner]:
    return []


def make_factory(
    runners: list[SyntheticRunner], **kwargs: Any
) -> Callable[[RunnerContext], SyntheticRunner]:
    def factory(ctx: RunnerContext) -> SyntheticRunner:
        runner = SyntheticRunner(ctx, **kwargs)
        runners.append(runner)
        return runner

    return factory


@pytest.fixture
def controller(
    qtbot: Any, workspace: Path, runners: list[SyntheticRunner]
) -> Iterator[ErrandController]:
    c = ErrandController(make_factory(runners), workspace=workspace)
    yield c
    assert c.shutdown(5000)


def test_full_errand_streams_asks_and_answers(
    qtbot: Any, controller: ErrandController, runners: list[SyntheticRunner]
) -> None:
    tokens: list[str] = []
    results: list[tuple[Any, ...]] = []
    controller.tokenReceived.connect(tokens.append)
    controller.toolResultReceived.connect(lambda *a: results.append(a))
    questions: list[PermissionQuestion] = []

    def answer(q: object) -> None:
        assert isinstance(q, PermissionQuestion)
        questions.append(q)
        controller.answer_permission(q.call_id, PermissionReply("once"))

    controller.permissionRequested.connect(answer)
    with qtbot.wait_signal(controller.answerReady, timeout=5000) as blocker:
        controller.start("list the files")
    assert blocker.args[0] == "There is a README."
    qtbot.wait_until(lambda: not controller.busy, timeout=5000)
    assert "".join(tokens) == "Let me look"
    assert [q.tool for q in questions] == ["shell"]
    assert questions[0].arguments == {"command": "ls -la"}
    assert results == [("c1", True, "token=[REDACTED:API_KEY]\nREADME.md", ["API_KEY"], False)]
    # The errand ran in the worker thread, not the GUI thread.
    assert runners[0].thread_names == ["worker"]
    kinds = [kind for kind, _ in controller.session(controller.current_session).transcript]
    assert kinds == ["task", "tool_call", "decision", "tool_result", "final"]
    assert controller.session(controller.current_session).title == "list the files"


def test_deny_reason_reaches_the_runner(
    qtbot: Any, controller: ErrandController, runners: list[SyntheticRunner]
) -> None:
    decisions: list[tuple[str, str, str]] = []
    controller.decisionMade.connect(lambda *a: decisions.append(a))
    controller.permissionRequested.connect(
        lambda q: controller.answer_permission(
            q.call_id, PermissionReply("deny", reason="not in this repo")
        )
    )
    with qtbot.wait_signal(controller.errandFinished, timeout=5000):
        controller.start("list the files")
    assert runners[0].replies == [PermissionReply("deny", reason="not in this repo")]
    assert decisions == [("c1", "deny", "not in this repo")]


def test_nobody_to_ask_means_deny(
    qtbot: Any, controller: ErrandController, runners: list[SyntheticRunner]
) -> None:
    with qtbot.wait_signal(controller.errandFinished, timeout=5000):
        controller.start("list the files")
    assert runners[0].replies[0].choice == "deny"
    assert "no one" in runners[0].replies[0].reason


def test_cancel_during_streaming_stops_the_errand(
    qtbot: Any, workspace: Path, runners: list[SyntheticRunner]
) -> None:
    c = ErrandController(make_factory(runners, stream_forever=True), workspace=workspace)
    try:
        with qtbot.wait_signal(c.tokenReceived, timeout=5000):
            c.start("tell a long story")
        assert c.busy
        with qtbot.wait_signal(c.errandFinished, timeout=5000):
            c.cancel()
        assert runners[0].cancelled.is_set()
        assert not c.busy
        final = [args for kind, args in c.session(c.current_session).transcript if kind == "final"]
        assert final and final[0][1]["stop_reason"] == "cancelled"
    finally:
        assert c.shutdown(5000)


def test_cancel_while_a_prompt_waits_denies_it(
    qtbot: Any, controller: ErrandController, runners: list[SyntheticRunner]
) -> None:
    asked: list[PermissionQuestion] = []
    controller.permissionRequested.connect(asked.append)
    with qtbot.wait_signal(controller.permissionRequested, timeout=5000):
        controller.start("list the files")
    with qtbot.wait_signal(controller.errandFinished, timeout=5000):
        controller.cancel()
    assert runners[0].replies[0].choice == "deny"
    assert "cancelled" in runners[0].replies[0].reason


def test_a_runner_that_cannot_start_is_reported(qtbot: Any, workspace: Path) -> None:
    def broken(ctx: RunnerContext) -> SyntheticRunner:
        raise FileNotFoundError("model file /nope.gguf is missing")

    c = ErrandController(broken, workspace=workspace)
    try:
        with qtbot.wait_signal(c.errandFailed, timeout=5000) as blocker:
            c.start("anything")
        assert "model file /nope.gguf is missing" in blocker.args[0]
        qtbot.wait_until(lambda: not c.busy, timeout=5000)
    finally:
        assert c.shutdown(5000)


def test_bad_starts_are_refused_with_a_message(qtbot: Any, runners: list[SyntheticRunner]) -> None:
    c = ErrandController(make_factory(runners), workspace=None)
    try:
        with qtbot.wait_signal(c.errandFailed, timeout=1000) as blocker:
            c.start("do it")
        assert "workspace" in blocker.args[0]
        with qtbot.wait_signal(c.errandFailed, timeout=1000) as blocker:
            c.start("   ")
        assert "task" in blocker.args[0]
        assert not c.busy and runners == []
    finally:
        assert c.shutdown(5000)


def test_sessions_are_listed_and_a_new_session_closes_the_agent(
    qtbot: Any, controller: ErrandController, runners: list[SyntheticRunner]
) -> None:
    controller.permissionRequested.connect(
        lambda q: controller.answer_permission(q.call_id, PermissionReply("once"))
    )
    first = controller.current_session
    with qtbot.wait_signal(controller.errandFinished, timeout=5000):
        controller.start("list the files")
    second = controller.new_session()
    assert second != first
    assert [s.session_id for s in controller.sessions()][:2] == [second, first]
    qtbot.wait_until(lambda: runners[0].closed, timeout=5000)
    controller.select_session(first)
    assert controller.current_session == first


def test_shutdown_closes_the_runner(
    qtbot: Any, workspace: Path, runners: list[SyntheticRunner]
) -> None:
    c = ErrandController(make_factory(runners), workspace=workspace)
    c.permissionRequested.connect(
        lambda q: c.answer_permission(q.call_id, PermissionReply("once"))
    )
    with qtbot.wait_signal(c.errandFinished, timeout=5000):
        c.start("list the files")
    assert c.shutdown(5000)
    assert runners[0].closed


def test_live_stats_measure_tokens(
    qtbot: Any, controller: ErrandController, runners: list[SyntheticRunner]
) -> None:
    controller.permissionRequested.connect(
        lambda q: controller.answer_permission(q.call_id, PermissionReply("once"))
    )
    stats: list[dict[str, Any]] = []
    controller.statsUpdated.connect(stats.append)
    with qtbot.wait_signal(controller.errandFinished, timeout=5000):
        controller.start("list the files")
    last = stats[-1]
    assert last["n_generated"] == 3
    assert last["time_to_first_token_s"] >= 0
    assert last["stop_reason"] == "eos"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("shell(git status)", ("shell", "git status")),
        ("read_file(src/**)", ("read_file", "src/**")),
        ("list_dir", ("list_dir", "")),
        ("http_request(domain:api.github.com)", ("http_request", "domain:api.github.com")),
    ],
)
def test_parse_rule_text(text: str, expected: tuple[str, str]) -> None:
    assert parse_rule_text(text) == expected


@pytest.mark.parametrize("text", ["", "shell(git", "two words(x)", "(x)"])
def test_parse_rule_text_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="tool\\(pattern\\)"):
        parse_rule_text(text)


# -- end to end through the real agent host and the scripted agent process ---------------


def _script(tmp_path: Path, *replies: dict[str, Any]) -> Path:
    import json

    path = tmp_path / "script.json"
    path.write_text(json.dumps([json.dumps(r) for r in replies]))
    return path


def _host_controller(
    tmp_path: Path, workspace: Path, *replies: dict[str, Any]
) -> tuple[ErrandController, list[tuple[str, bytes]]]:
    from app.controllers.agent_runner import agent_host_factory
    from app.services import AppServices

    transcript: list[tuple[str, bytes]] = []
    services = AppServices()
    factory = agent_host_factory(
        services,
        lambda: None,
        scripted_model=_script(tmp_path, *replies),
        host_options={"transcript": lambda d, line: transcript.append((d, line))},
    )
    return ErrandController(factory, workspace=workspace), transcript


WRITE = {"tool": "write_file", "arguments": {"path": "notes.txt", "content": "hello"}}


def test_agent_host_errand_denied_tells_the_agent_why(
    qtbot: Any, tmp_path: Path, workspace: Path
) -> None:
    c, transcript = _host_controller(tmp_path, workspace, WRITE, {"final": "could not write"})
    try:
        questions: list[PermissionQuestion] = []

        def deny(q: object) -> None:
            assert isinstance(q, PermissionQuestion)
            questions.append(q)
            c.answer_permission(q.call_id, PermissionReply("deny", reason="keep the tree clean"))

        c.permissionRequested.connect(deny)
        decisions: list[tuple[str, str, str]] = []
        c.decisionMade.connect(lambda *a: decisions.append(a))
        with qtbot.wait_signal(c.answerReady, timeout=60_000) as blocker:
            c.start("write hello into notes.txt")
        assert blocker.args[0] == "could not write"
        assert [(q.tool, dict(q.arguments)["path"]) for q in questions] == [
            ("write_file", "notes.txt")
        ]
        assert questions[0].suggested_rule == "write_file(notes.txt)"
        assert decisions[0][1:] == ("deny", "keep the tree clean")
        assert not (workspace / "notes.txt").exists()
        sent = b"".join(line for direction, line in transcript if direction == "sent")
        assert b"keep the tree clean" in sent  # the agent process got the reason
    finally:
        assert c.shutdown(10_000)


def test_agent_host_errand_allowed_runs_the_tool(
    qtbot: Any, tmp_path: Path, workspace: Path
) -> None:
    c, _ = _host_controller(tmp_path, workspace, WRITE, {"final": "wrote it"})
    try:
        c.permissionRequested.connect(
            lambda q: c.answer_permission(q.call_id, PermissionReply("once"))
        )
        results: list[tuple[Any, ...]] = []
        c.toolResultReceived.connect(lambda *a: results.append(a))
        with qtbot.wait_signal(c.answerReady, timeout=60_000) as blocker:
            c.start("write hello into notes.txt")
        assert blocker.args[0] == "wrote it"
        assert (workspace / "notes.txt").read_text() == "hello"
        assert results and results[0][1] is True
    finally:
        assert c.shutdown(10_000)


def test_a_model_change_applies_at_the_next_errand_on_a_new_agent(
    qtbot: Any, tmp_path: Path, workspace: Path
) -> None:
    from app.controllers.agent_runner import agent_host_factory
    from app.services import AppServices
    from models.factory import ModelSpec

    transcript: list[tuple[str, bytes]] = []
    spec = [ModelSpec(n_ctx=512)]
    factory = agent_host_factory(
        AppServices(),
        lambda: spec[0],
        scripted_model=_script(tmp_path, {"final": "done"}),
        host_options={"transcript": lambda d, line: transcript.append((d, line))},
    )
    c = ErrandController(factory, workspace=workspace)
    notices: list[str] = []
    c.noticeReported.connect(notices.append)

    def hellos() -> int:
        return sum(b'"type":"hello"' in line for d, line in transcript if d == "sent")

    try:
        with qtbot.wait_signal(c.errandFinished, timeout=60_000):
            c.start("first")
        with qtbot.wait_signal(c.errandFinished, timeout=60_000):
            c.start("second, same settings")
        assert hellos() == 1 and notices == []
        spec[0] = ModelSpec(n_ctx=1024)  # the Model panel saved a new context size
        with qtbot.wait_signal(c.errandFinished, timeout=60_000):
            c.start("third, after the change")
        # A new agent process with the new model, in the same session.
        assert hellos() == 2
        assert any("model settings changed" in n for n in notices), notices
    finally:
        assert c.shutdown(10_000)


def test_shutdown_during_an_errand_still_closes_the_runner(
    qtbot: Any, workspace: Path, runners: list[SyntheticRunner]
) -> None:
    c = ErrandController(make_factory(runners, stream_forever=True), workspace=workspace)
    with qtbot.wait_signal(c.tokenReceived, timeout=5000):
        c.start("tell a long story")
    assert c.shutdown(5000)
    assert runners[0].cancelled.is_set()
    assert runners[0].closed


def test_agent_killed_while_the_user_is_asked_ends_the_errand_and_writes_nothing(
    qtbot: Any, tmp_path: Path, workspace: Path
) -> None:
    import os
    import signal

    c, _ = _host_controller(tmp_path, workspace, WRITE, {"final": "wrote it"})
    try:
        asked: list[PermissionQuestion] = []

        def kill_the_agent(q: object) -> None:
            assert isinstance(q, PermissionQuestion)
            asked.append(q)  # and never answered: the dialog stays open
            runner = c._worker._runner
            assert runner is not None
            pid = runner.host.worker_pid  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)

        c.permissionRequested.connect(kill_the_agent)
        crashes: list[str] = []
        c.agentCrashed.connect(crashes.append)
        with qtbot.wait_signal(c.errandFinished, timeout=30_000):
            c.start("write hello into notes.txt")
        assert len(asked) == 1
        # Said once; the agent's last stderr lines may follow on later lines.
        assert [c.splitlines()[0] for c in crashes] == ["the agent process was killed (signal 9)"]
        assert not (workspace / "notes.txt").exists()
        assert not c.busy
    finally:
        assert c.shutdown(10_000)


def test_the_host_listener_passes_a_proxied_request_on_under_its_shell_call() -> None:
    from agent.host.events import AgentEvent
    from app.controllers.agent_runner import HostListener, HostPrompt

    got: list[tuple[str, Any]] = []

    class Events:
        def egress(self, call_id: str, request: Any) -> None:
            got.append((call_id, request))

    request = {"command": "curl x", "host": "x.example", "method": "GET", "path": "/",
               "decision": "deny", "reason": "rule net(x.example)"}
    listener = HostListener(Events(), HostPrompt(None))  # type: ignore[arg-type]
    listener(AgentEvent("egress", tool="net", call_id="c7", data=request))
    assert got == [("c7", request)]


class LoadingRunner(SyntheticRunner):
    """Reports the loaded model through the host's listener, as the agent host does at start."""

    def run_errand(self, task: str) -> None:
        from agent.host.events import AgentEvent
        from app.controllers.agent_runner import HostListener, HostPrompt
        from models.interface import ModelInfo

        listener = HostListener(self.ctx.events, HostPrompt(self.ctx.asker))
        info = ModelInfo(
            name="tiny", backend="llama.cpp", n_ctx=256, n_gpu_layers=99, n_layers_offloaded=0,
            n_layers=31,
        )  # fmt: skip
        listener(AgentEvent("model_loaded", text="tiny", data=info.model_dump()))
        self.ctx.events.final("done", {"stop_reason": "eos"})


def test_the_loaded_model_is_reported_to_the_gui_thread(qtbot: Any, workspace: Path) -> None:
    c = ErrandController(lambda ctx: LoadingRunner(ctx), workspace=workspace)
    try:
        with qtbot.wait_signal(c.modelLoaded, timeout=5000) as blocker:
            c.start("hello")
        assert blocker.args[0]["n_layers_offloaded"] == 0
        assert blocker.args[0]["n_layers"] == 31
        qtbot.wait_until(lambda: not c.busy, timeout=5000)
    finally:
        assert c.shutdown(5000)


def test_an_app_errand_calls_a_url_mcp_server_configured_in_settings(
    qtbot: Any, tmp_path: Path, workspace: Path, port: int
) -> None:
    from agent.host.mcpserver.store import McpServerConfig, McpStore
    from agent.host.policy import Rule
    from app.cli_mcp import hub_for
    from app.services import AppServices

    services = AppServices()
    store = McpStore(services.paths.database)
    rules = services.rule_store(None)
    try:
        store.add(
            McpServerConfig(name="weather", url=f"http://127.0.0.1:{port}/mcp", allow_local=True)
        )
        for text in ("net(127.0.0.1)", "mcp(weather.*)"):
            rules.add(Rule.parse(text, action="allow", scope="user"))
        hub = hub_for(services, store, workspace)
        try:
            hub.approve("weather")
        finally:
            hub.close()
    finally:
        rules.close()
        store.close()
    call = {"tool": "weather.forecast", "arguments": {"city": "Oslo"}}
    c, _ = _host_controller(tmp_path, workspace, call, {"final": "sunny"})
    try:
        results: list[tuple[Any, ...]] = []
        c.toolResultReceived.connect(lambda *a: results.append(a))
        with qtbot.wait_signal(c.answerReady, timeout=60_000) as blocker:
            c.start("weather in Oslo?")
        assert blocker.args[0] == "sunny"
        assert [(r[1], r[2]) for r in results] == [(True, "Oslo: sunny, 21 °C")]
    finally:
        assert c.shutdown(10_000)


def test_another_api_key_secret_for_the_remote_model_applies_at_the_next_errand(
    qtbot: Any, workspace: Path
) -> None:
    import json

    from app.controllers.agent_runner import agent_host_factory
    from app.services import AppServices
    from models.factory import ModelSpec
    from models.fake import ScriptedModel

    services = AppServices()  # no vault
    spec = ModelSpec(
        backend="openai", base_url="http://127.0.0.1:9/v1", model_name="m", allow_local=True
    )
    relayed = ScriptedModel([json.dumps({"final": "done"})] * 2)  # stands in for the server
    factory = agent_host_factory(services, lambda: spec, host_options={"relay_model": relayed})
    c = ErrandController(factory, workspace=workspace)
    notices: list[str] = []
    errors: list[str] = []
    c.noticeReported.connect(notices.append)
    c.errandFailed.connect(errors.append)
    try:
        with qtbot.wait_signal(c.errandFinished, timeout=60_000):
            c.start("first, no key")
        assert errors == [] and notices == []
        services.settings.model.remote_key_secret = "OTHER_KEY"  # the Model panel saved it
        with qtbot.wait_signal(c.errandFinished, timeout=60_000):
            c.start("second, the key is in the vault")
        # A new runner reads the key from the vault, which is locked (none here).
        assert any("model settings changed" in n for n in notices), notices
        assert errors and "OTHER_KEY" in errors[-1] and "locked" in errors[-1], errors
    finally:
        assert c.shutdown(10_000)
