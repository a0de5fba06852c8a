"""The chat view's session list survives a restart; an interrupted errand resumes (real host)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.controllers.agent_runner import agent_host_factory
from app.controllers.errand_controller import ErrandController
from app.paths import default_paths
from app.services import AppServices
from app.sessions import SessionStore
from app.views.chat_view import ChatView


def _app(qtbot: Any, workspace: Path, script: Path) -> tuple[ChatView, SessionStore, AppServices]:
    services = AppServices()
    store = SessionStore(default_paths().database)
    controller = ErrandController(
        agent_host_factory(services, lambda: None, scripted_model=script, sessions=store),
        workspace=workspace,
        sessions=store,
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
