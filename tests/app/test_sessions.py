"""The session store against real SQLite, fed by a real agent host (scripted model)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.host.permission import PermissionAnswer
from app.sessions import (
    MIGRATIONS,
    ErrandRecorder,
    NotResumableError,
    SessionStore,
    SessionStoreError,
    UnknownSessionError,
    resume_plan,
    run_recorded,
)
from tests.agent.hostkit import call, final, make_rig


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SessionStore]:
    s = SessionStore(tmp_path / "data" / "keyless.db")
    yield s
    s.close()


def test_the_schema_is_migrated_once_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "keyless.db"
    SessionStore(db).close()
    again = SessionStore(db)
    assert again.schema_version == len(MIGRATIONS)
    again.close()
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO session_schema VALUES (?, 'later')", (len(MIGRATIONS) + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(SessionStoreError, match="newer than this Keyless knows"):
        SessionStore(db)


def test_every_event_is_recorded_as_the_agent_saw_it(
    tmp_path: Path, workspace: Path, store: SessionStore
) -> None:
    (workspace / "notes.txt").write_text("buy milk\n")
    recorder = ErrandRecorder(store)
    rig = make_rig(
        tmp_path, workspace,
        [call("read_file", path="notes.txt"), call("write_file", path="x.txt", content="1"),
         final("Read it.")],
        answers=[PermissionAnswer(choice="deny", reason="no")],
        on_event=recorder,
    )
    store.ensure_session("s1", workspace=workspace, title="read the notes", model="scripted")
    try:
        result = run_recorded(rig.host, store, recorder, session_id="s1", task="read the notes")
    finally:
        rig.host.close()
    assert result.outcome in ("final", "finish")
    [errand] = store.errands("s1")
    assert errand.state == "finished" and errand.outcome == result.outcome
    messages = store.messages("s1")
    assert [m.kind for m in messages] == [
        "task", "tool_call", "decision", "tool_result",
        "tool_call", "decision", "tool_result", "final",
    ]
    assert messages[1].arguments == json.dumps({"path": "notes.txt"})
    # The results are exactly what the agent process was sent.
    sent = [r["content"] for r in rig.transcript.sent_of("tool_result")]
    assert [m.text for m in messages if m.kind == "tool_result"] == sent
    assert messages[3].data["untrusted"] is True and messages[5].text == "deny"
    assert errand.last_step == 7 and messages[-1].text == "Read it."


def test_a_continued_session_sends_its_earlier_turns_from_the_store(
    tmp_path: Path, workspace: Path, store: SessionStore
) -> None:
    store.ensure_session("s1", workspace=workspace)
    first = store.begin_errand("s1", "what is two and two?")
    store.append(first.id, "final", text="four")
    store.finish_errand(first.id, "finished", outcome="final")
    recorder = ErrandRecorder(store)
    rig = make_rig(tmp_path, workspace, [final("five")], on_event=recorder)  # a fresh host
    try:
        run_recorded(rig.host, store, recorder, session_id="s1", task="and plus one?")
    finally:
        rig.host.close()
    [task] = rig.transcript.sent_of("task")
    assert [(m["role"], m["content"]) for m in task["history"]] == [
        ("user", "what is two and two?"), ("assistant", "four"),
    ]
    assert store.turns("s1") == [("what is two and two?", "four"), ("and plus one?", "five")]


def test_an_errand_left_running_by_a_dead_process_is_interrupted(
    workspace: Path, store: SessionStore
) -> None:
    store.ensure_session("s1", workspace=workspace)
    dead = store.begin_errand("s1", "cut short")
    ours = store.begin_errand("s1", "still running here")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    with store._tx() as conn:  # noqa: SLF001  # the pid of a process that has exited
        conn.execute("UPDATE session_errands SET pid = ? WHERE id = ?",
                     (int(gone.stdout), dead.id))
    assert store.recover() == [dead.id]
    assert store.errand(dead.id).state == "interrupted"
    assert store.errand(ours.id).state == "running"


def _interrupted(store: SessionStore, workspace: Path, tool: str, decided: str | None) -> str:
    store.ensure_session("s1", workspace=workspace)
    errand = store.begin_errand("s1", "tidy up")
    store.append(errand.id, "tool_call", call_id="c1", tool="read_file",
                 arguments='{"path": "a.txt"}')
    store.append(errand.id, "decision", call_id="c1", tool="read_file", text="allow")
    store.append(errand.id, "tool_result", call_id="c1", tool="read_file", text="hello",
                 data={"ok": True, "untrusted": True})
    store.append(errand.id, "tool_call", call_id="c2", tool=tool, arguments='{"path": "b.txt"}')
    if decided is not None:
        store.append(errand.id, "decision", call_id="c2", tool=tool, text=decided)
    store.finish_errand(errand.id, "interrupted", outcome="interrupted")
    return errand.id


def test_resume_plan_keeps_completed_steps_and_names_an_allowed_write_without_result(
    workspace: Path, store: SessionStore
) -> None:
    errand_id = _interrupted(store, workspace, "write_file", "allow")
    plan = resume_plan(store, errand_id)
    assert [(s.tool, s.result) for s in plan.steps] == [("read_file", "hello")]
    assert plan.maybe_ran is not None and plan.maybe_ran.call_id == "c2"
    assert plan.describe_maybe_ran() == 'write_file {"path": "b.txt"}'
    assert plan.tainted


@pytest.mark.parametrize(("tool", "decided"), [("write_file", None), ("write_file", "deny"),
                                               ("read_file", "allow")])
def test_a_call_that_cannot_have_changed_anything_is_not_asked_about(
    workspace: Path, store: SessionStore, tool: str, decided: str | None
) -> None:
    plan = resume_plan(store, _interrupted(store, workspace, tool, decided))
    assert plan.maybe_ran is None


def test_resuming_continues_the_same_errand_with_its_steps_as_an_assistant_turn(
    tmp_path: Path, workspace: Path, store: SessionStore
) -> None:
    errand_id = _interrupted(store, workspace, "write_file", "allow")
    plan = resume_plan(store, errand_id)
    recorder = ErrandRecorder(store)
    rig = make_rig(tmp_path, workspace, [final("Done.")], on_event=recorder)
    try:
        result = run_recorded(rig.host, store, recorder, session_id="s1", task="",
                              resume=plan, choice="skip")
        assert rig.host.tainted  # the earlier result was untrusted: so is the resumed errand
    finally:
        rig.host.close()
    assert result.text == "Done."
    [task] = rig.transcript.sent_of("task")
    roles = [(m["role"], m["content"]) for m in task["history"]]
    assert roles[0] == ("user", "tidy up")
    assert roles[1][0] == "assistant" and "read_file" in roles[1][1] and "hello" in roles[1][1]
    assert "do not run it again" in task["task"] and "hello" not in task["task"]
    errand = store.errand(errand_id)
    assert errand.state == "finished" and len(store.errands("s1")) == 1
    with pytest.raises(NotResumableError):
        resume_plan(store, errand_id)


def test_remove_deletes_the_transcript_and_unknown_ids_are_named(
    workspace: Path, store: SessionStore
) -> None:
    store.ensure_session("s1", workspace=workspace, title="t")
    errand = store.begin_errand("s1", "x")
    store.finish_errand(errand.id, "failed", outcome="error")
    store.remove("s1")
    assert store.sessions() == [] and store.messages("s1") == []
    with pytest.raises(UnknownSessionError, match="no session 's1'"):
        store.session("s1")
    with pytest.raises(UnknownSessionError, match="no errand 'nope'"):
        resume_plan(store, "nope")
