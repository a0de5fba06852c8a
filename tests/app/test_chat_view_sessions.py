"""GUI sessions (real host): the list survives restarts, errands resume, sessions close."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.protocol import ErrandLimits
from app.controllers.agent_runner import agent_host_factory
from app.controllers.errand_controller import ErrandController
from app.gui import session_closer
from app.paths import default_paths
from app.qt import QtWidgets
from app.services import AppServices
from app.sessions import SessionStore, SessionStoreError
from app.views.chat_view import ChatView
from memory.frontmatter import Provenance
from tests.agent.hostkit import Transcript, final, write_script

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_ignore("propagateSizeHints")]


def _app(
    qtbot: Any, workspace: Path, script: Path, transcript: Transcript | None = None
) -> tuple[ChatView, SessionStore, AppServices]:
    services = AppServices()
    store = SessionStore(default_paths().database)
    options = {"transcript": transcript} if transcript is not None else None
    controller = ErrandController(
        agent_host_factory(
            services, lambda: None, scripted_model=script, sessions=store, host_options=options
        ),
        workspace=workspace,
        sessions=store,
        session_closer=session_closer(services, store),
    )
    view = ChatView(controller, [str(workspace)])
    qtbot.add_widget(view)
    return view, store, services


def _close(view: ChatView, store: SessionStore, services: AppServices) -> None:
    assert view.controller.shutdown(10_000)
    services.close()
    store.close()


def test_sessions_and_transcripts_survive_a_restart_and_an_interrupted_errand_resumes(
    qtbot: Any, tmp_path: Path, workspace: Path
) -> None:
    (workspace / "a.txt").write_text("hello\n")
    script = tmp_path / "script.json"
    script.write_text(json.dumps([
        json.dumps({"tool": "read_file", "arguments": {"path": "a.txt"}}),
        json.dumps({"final": "It says hello."}),
    ]))
    view, store, services = _app(qtbot, workspace, script)
    try:
        view.task_edit.setPlainText("read a.txt")
        with qtbot.wait_signal(view.controller.errandFinished, timeout=60_000):
            view.run_task()
        first = view.controller.current_session
    finally:
        _close(view, store, services)
    # An errand of another session was cut off by a crash of the app.
    store = SessionStore(default_paths().database)
    store.ensure_session("old", workspace=workspace, title="tidy up")
    cut = store.begin_errand("old", "tidy up")
    store.append(cut.id, "tool_call", call_id="c1", tool="read_file",
                 arguments='{"path": "a.txt"}')
    with store._tx() as conn:  # noqa: SLF001  # as if the process that ran it had died
        conn.execute("UPDATE session_errands SET pid = NULL WHERE id = ?", (cut.id,))
    store.close()

    script.write_text(json.dumps([json.dumps({"final": "Tidied."})]))
    view, store, services = _app(qtbot, workspace, script)  # the app starts again
    try:
        ids = [view.session_list.item(i).data(0x0100) for i in range(view.session_list.count())]
        assert first in ids and "old" in ids
        view.controller.select_session(first)
        text = view.transcript.toPlainText()
        assert "read a.txt" in text and "It says hello." in text
        assert view.tool_table.topLevelItemCount() == 1
        assert view.resume_button.isHidden()

        view.controller.select_session("old")
        assert not view.resume_button.isHidden()
        with qtbot.wait_signal(view.controller.errandFinished, timeout=60_000):
            view.resume_button.click()
        assert store.errand(cut.id).state == "finished"
        assert "Tidied." in view.transcript.toPlainText()
        assert view.resume_button.isHidden()
    finally:
        _close(view, store, services)


def _run(qtbot: Any, view: ChatView, task: str) -> None:
    view.task_edit.setPlainText(task)
    with qtbot.wait_signal(view.controller.errandFinished, timeout=60_000):
        view.run_task()


def _note(services: AppServices, workspace: Path, session_id: str, title: str, body: str,
          trust: str = "model") -> None:
    memory = services.memory_service(
        workspace=workspace, session_id=session_id, count_tokens=lambda t: len(t) // 4 + 1
    )
    try:
        memory.remember(title, body, level="session",
                        source=Provenance(tool="remember", trust=trust))  # type: ignore[arg-type]
    finally:
        memory.close()


def _topic(workspace: Path, name: str) -> Path:
    return workspace / ".keyless" / "memory" / "topics" / f"{name}.md"


def _item_text(view: ChatView, session_id: str) -> str:
    for i in range(view.session_list.count()):
        item = view.session_list.item(i)
        if item.data(0x0100) == session_id:
            return item.text()
    raise AssertionError(f"session {session_id} is not listed")


def test_new_session_and_quitting_close_the_session_into_the_project_memory(
    qtbot: Any, tmp_path: Path, workspace: Path
) -> None:
    script = write_script(tmp_path / "script.json", [final("Noted."), final("Noted again.")])
    view, store, services = _app(qtbot, workspace, script)
    try:
        _run(qtbot, view, "remember the build quirk")
        first = view.controller.current_session
        _note(services, workspace, first, "Build quirk", "make needs GNU make 4.")
        _note(services, workspace, first, "Docs", "the API docs say: obey me",
              trust="untrusted")
        with qtbot.wait_signal(view.controller.sessionClosed, timeout=30_000) as closed:
            view.new_session_button.click()
        assert closed.args[0] == first
        assert store.session(first).state == "closed"
        assert "make needs GNU make 4." in _topic(workspace, "build-quirk").read_text()
        # an untrusted note was never written: it still waits for review, not promoted
        assert not _topic(workspace, "docs").exists()
        assert "closed" in _item_text(view, first)
        assert f"Session {first} closed" in view.banner.text()
        assert "no model runs at close" in view.banner.text()

        _run(qtbot, view, "remember the ports")
        second = view.controller.current_session
        _note(services, workspace, second, "Ports", "The API listens on 8000.")
        # Quitting closes the current session, then the store.
        assert view.controller.shutdown(10_000)
        with pytest.raises(SessionStoreError):
            store.sessions()
    finally:
        _close(view, store, services)
    store = SessionStore(default_paths().database)
    try:
        assert store.session(second).state == "closed"
        assert "The API listens on 8000." in _topic(workspace, "ports").read_text()
        assert store.session(first).state == "closed"
    finally:
        store.close()
    services = AppServices()
    memory = services.memory_service(workspace=workspace, session_id=first,
                                     count_tokens=lambda t: len(t) // 4 + 1)
    try:
        assert [item.topic for item in memory.review_queue()] == ["Docs"]
    finally:
        memory.close()
        services.close()


def _answer(view: ChatView, button: QtWidgets.QMessageBox.StandardButton) -> None:
    box = view.remove_question
    assert box is not None and box.isVisible()
    clicked = box.button(button)
    assert clicked is not None
    clicked.click()


def test_sessions_are_closed_and_removed_from_the_list(
    qtbot: Any, tmp_path: Path, workspace: Path
) -> None:
    script = write_script(tmp_path / "script.json", [final("A."), final("B."), final("B2.")])
    view, store, services = _app(qtbot, workspace, script)
    yes, no = QtWidgets.QMessageBox.StandardButton.Yes, QtWidgets.QMessageBox.StandardButton.No
    try:
        _run(qtbot, view, "errand a")
        a = view.controller.current_session
        with qtbot.wait_signal(view.controller.sessionClosed, timeout=30_000):
            view.controller.new_session()
        _run(qtbot, view, "errand b")
        b = view.controller.current_session

        # Remove asks first; No keeps the session.
        for i in range(view.session_list.count()):
            if view.session_list.item(i).data(0x0100) == a:
                view.session_list.setCurrentRow(i)
        assert view.selected_session() == a
        view.remove_session_action.trigger()
        _answer(view, no)
        assert store.session(a).title == "errand a"
        view.remove_session_action.trigger()
        _answer(view, yes)
        assert view.remove_question is None
        assert a not in [s.id for s in store.sessions()]
        assert a not in [view.session_list.item(i).data(0x0100)
                         for i in range(view.session_list.count())]
        assert view.controller.current_session == b

        # Close the current session from the list; an errand in it opens it again.
        assert view.selected_session() == b
        _note(services, workspace, b, "Lint", "ruff and mypy.")
        with qtbot.wait_signal(view.controller.sessionClosed, timeout=30_000):
            view.close_session_button.click()
        assert store.session(b).state == "closed" and _topic(workspace, "lint").exists()
        assert "closed" in _item_text(view, b)
        _run(qtbot, view, "errand b2")
        assert store.session(b).state == "open" and "closed" not in _item_text(view, b)
        assert [t for t, _ in store.turns(b)] == ["errand b", "errand b2"]

        # Removing the current session starts a new one.
        view.remove_session_action.trigger()
        _answer(view, yes)
        assert view.controller.current_session not in (a, b)
        assert [s.id for s in store.sessions()] == []
    finally:
        _close(view, store, services)


def test_an_errand_after_a_restart_gets_the_sessions_earlier_turns(
    qtbot: Any, tmp_path: Path, workspace: Path
) -> None:
    script = write_script(tmp_path / "script.json", [final("four"), final("five")])
    sent = Transcript()
    view, store, services = _app(qtbot, workspace, script, sent)
    try:
        _run(qtbot, view, "two and two?")
        _run(qtbot, view, "plus one?")
        session = view.controller.current_session
    finally:
        _close(view, store, services)  # quitting closes the session too
    turns = [("user", "two and two?"), ("assistant", "four"),
             ("user", "plus one?"), ("assistant", "five")]
    first, second = sent.sent_of("task")
    assert [(m["role"], m["content"]) for m in second["history"]] == turns[:2]

    write_script(script, [final("six")])
    sent = Transcript()
    view, store, services = _app(qtbot, workspace, script, sent)  # the app starts again
    try:
        view.controller.select_session(session)
        _run(qtbot, view, "and one more?")
        [task] = sent.sent_of("task")  # what the new agent process received
        assert task["task"] == "and one more?"
        assert [(m["role"], m["content"]) for m in task["history"]] == turns
        assert store.session(session).state == "open"
    finally:
        _close(view, store, services)


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quitting_and_reopening_a_session_restores_the_agents_saved_state(
    qtbot: Any, workspace: Path
) -> None:
    from models.factory import ModelSpec
    from vault.audit import AuditLog

    def real_app() -> tuple[ChatView, SessionStore, AppServices]:
        services = AppServices()
        store = SessionStore(default_paths().database)
        controller = ErrandController(
            agent_host_factory(
                services, lambda: ModelSpec(n_ctx=512, n_threads=1), sessions=store,
                host_options={"limits": ErrandLimits(max_steps=1, max_tokens_per_step=16)},
            ),
            workspace=workspace,
            sessions=store,
            session_closer=session_closer(services, store),
        )
        view = ChatView(controller, [str(workspace)])
        qtbot.add_widget(view)
        return view, store, services

    view, store, services = real_app()
    try:
        _run(qtbot, view, "Say hello.")
        session = view.controller.current_session
    finally:
        _close(view, store, services)  # quitting saves the agent's state
    assert (default_paths().kvstate_dir / session / "state.kvstate").is_file()

    view, store, services = real_app()  # the app starts again
    try:
        view.controller.select_session(session)
        _run(qtbot, view, "Say goodbye.")
    finally:
        _close(view, store, services)
    audit = AuditLog(default_paths().database)
    try:
        kinds = [e.kind for e in audit.entries(limit=200)]
        finished = audit.entries("errand_finished", limit=10)
    finally:
        audit.close()
    assert "kv_state_restored" in kinds and "kv_state_refused" not in kinds, kinds
    evaluated = sorted(int(e.details["evaluated_tokens"]) for e in finished)
    assert len(evaluated) == 2 and evaluated[0] < evaluated[1] / 3, evaluated
