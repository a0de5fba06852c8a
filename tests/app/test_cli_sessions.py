"""``keyless sessions`` and ``keyless run --session/--resume``, with a real ``kill -9``."""

from __future__ import annotations

import io
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import build_parser, main
from app.cli_run import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, run_errand_cli
from app.paths import default_paths
from app.sessions import SessionStore
from tests.agent.hostkit import call, final, write_script


def keyless_run(tmp_path: Path, replies: list[str], answers: str, *argv: str) -> tuple[int, str]:
    script = write_script(tmp_path / "script.json", replies)
    args = build_parser().parse_args(["run", *argv, "--scripted-model", str(script), "-q"])
    err = io.StringIO()
    status = run_errand_cli(args, stdin=io.StringIO(answers), out=io.StringIO(), err=err)
    return status, err.getvalue()


def store() -> SessionStore:
    return SessionStore(default_paths().database)


def test_list_show_rm(
    tmp_path: Path, workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workspace / "a.txt").write_text("hello\n")
    status, _ = keyless_run(tmp_path, [call("read_file", path="a.txt"), final("It says hello.")],
                            "", "read a.txt", "-w", str(workspace), "--session", "s1",
                            "--yes-read-only")
    assert status == EXIT_OK
    assert main(["sessions", "list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("s1  ") and "open   1 errand(s)  read a.txt" in out
    assert main(["sessions", "show", "s1"]) == 0
    out = capsys.readouterr().out
    assert "  > read a.txt\n  -> read_file {\"path\": \"a.txt\"}\n" in out
    assert "  <- ok\n     hello" in out and "  = It says hello." in out
    assert "no grants in this session" in out
    state = default_paths().kvstate_dir / "s1" / "state.kvstate"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_bytes(b"saved")
    assert main(["sessions", "rm", "s1"]) == 0
    assert not state.parent.exists()
    assert main(["sessions", "show", "s1"]) == 1
    assert "error: no session 's1'" in capsys.readouterr().err


def test_run_session_continues_the_session_in_its_workspace(
    tmp_path: Path, workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keyless_run(tmp_path, [final("four")], "", "two and two?", "-w", str(workspace),
                "--session", "s1")
    status, _ = keyless_run(tmp_path, [final("five")], "", "plus one?", "--session", "s1")
    assert status == EXIT_OK
    s = store()
    try:
        assert s.turns("s1") == [("two and two?", "four"), ("plus one?", "five")]
    finally:
        s.close()
    other = tmp_path / "other"
    other.mkdir()
    status, err = keyless_run(tmp_path, [final("x")], "", "x", "-w", str(other), "--session", "s1")
    assert status == EXIT_FAILED and f"works in {workspace}" in err
    status, err = keyless_run(tmp_path, [final("x")], "", "x", "--session", "nope")
    assert status == EXIT_FAILED and "no session 'nope'" in err


def _start_run(tmp_path: Path, workspace: Path, replies: list[str]) -> subprocess.Popen[bytes]:
    script = write_script(tmp_path / "killed.json", replies)
    return subprocess.Popen(
        [sys.executable, "-m", "app", "run", "tidy up", "-w", str(workspace), "--session", "s1",
         "--scripted-model", str(script), "--yes-read-only", "-q"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=os.environ.copy(), start_new_session=True,
    )


def _wait_for(proc: subprocess.Popen[bytes], text: bytes) -> None:
    assert proc.stderr is not None
    seen = b""
    while text not in seen:
        ready, _, _ = select.select([proc.stderr], [], [], 60)
        assert ready, f"no {text!r} within 60 s; got {seen[-600:]!r}"
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, f"keyless run ended before {text!r}; got {seen[-600:]!r}"
        seen += chunk


def test_a_killed_run_leaves_its_transcript_and_resumes_from_the_last_step(
    tmp_path: Path, workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workspace / "a.txt").write_text("hello\n")
    proc = _start_run(tmp_path, workspace, [
        call("read_file", path="a.txt"), call("write_file", path="b.txt", content="x"),
        final("never"),
    ])
    try:
        _wait_for(proc, b"Permission needed: write_file")  # blocked on the terminal's answer
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and its agent process
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert main(["sessions", "list"]) == 0
    assert "1 errand(s), 1 interrupted" in capsys.readouterr().out
    s = store()
    try:
        [errand] = s.errands("s1")
        kinds = [m.kind for m in s.errand_messages(errand.id)]
    finally:
        s.close()
    assert errand.state == "interrupted" and errand.last_step == 4
    assert kinds == ["task", "tool_call", "decision", "tool_result", "tool_call"]
    # The write was never decided, so nothing is asked: the model goes on.
    status, err = keyless_run(tmp_path, [call("write_file", path="b.txt", content="x"),
                                         final("Tidied.")], "o\n", "--resume", errand.id)
    assert status == EXIT_OK, err
    assert "may have run" not in err and (workspace / "b.txt").read_text() == "x"
    s = store()
    try:
        assert s.errand(errand.id).state == "finished"
        assert s.turns("s1") == [("tidy up", "Tidied.")]
    finally:
        s.close()


def _allowed_write_without_result(workspace: Path) -> str:
    s = store()
    try:
        s.ensure_session("s1", workspace=workspace)
        e = s.begin_errand("s1", "write b")
        s.append(e.id, "tool_call", call_id="c1", tool="write_file",
                 arguments='{"content": "x", "path": "b.txt"}')
        s.append(e.id, "decision", call_id="c1", tool="write_file", text="allow")
        s.finish_errand(e.id, "interrupted", outcome="interrupted")
        return e.id
    finally:
        s.close()


def test_a_call_that_may_have_run_is_shown_and_stop_leaves_it_interrupted(
    tmp_path: Path, workspace: Path
) -> None:
    errand_id = _allowed_write_without_result(workspace)
    status, err = keyless_run(tmp_path, [final("x")], "maybe\nt\n", "--resume", errand_id)
    assert status == EXIT_CANCELLED
    assert 'interrupted during: write_file {"content": "x", "path": "b.txt"}' in err
    assert "Answer r, s or t" in err and f"errand {errand_id} stays interrupted" in err
    s = store()
    try:
        assert s.errand(errand_id).state == "interrupted"
    finally:
        s.close()
    # End of input is a stop too: nothing is repeated without an answer.
    status, _ = keyless_run(tmp_path, [final("x")], "", "--resume", errand_id)
    assert status == EXIT_CANCELLED


def test_skip_tells_the_model_not_to_run_it_again(tmp_path: Path, workspace: Path) -> None:
    errand_id = _allowed_write_without_result(workspace)
    status, err = keyless_run(tmp_path, [final("Left b.txt alone.")], "s\n", "--resume", errand_id)
    assert status == EXIT_OK, err
    s = store()
    try:
        notes = [m.text for m in s.errand_messages(errand_id) if m.kind == "notice"]
        assert s.errand(errand_id).state == "finished"
    finally:
        s.close()
    assert "do not run it again" in notes[0]
    status, err = keyless_run(tmp_path, [final("x")], "", "--resume", errand_id)
    assert status == EXIT_FAILED and "only an interrupted errand resumes" in err


def test_close_distills_the_session_notes_into_the_project(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.services import AppServices
    from memory.frontmatter import Provenance

    s = store()
    try:
        s.ensure_session("s1", workspace=workspace)
    finally:
        s.close()
    services = AppServices()
    memory = services.memory_service(
        workspace=workspace, session_id="s1", count_tokens=lambda t: len(t) // 4 + 1
    )
    try:
        memory.remember("Build quirk", "make needs GNU make 4.", level="session",
                        source=Provenance(tool="remember", trust="model"))
    finally:
        memory.close()
        services.close()
    assert main(["sessions", "close", "s1", "--no-model"]) == 0
    out = capsys.readouterr().out
    assert "closed session s1" in out and "session -> project: 1 note(s) kept" in out
    assert "without the model (--no-model)" in out
    topic = workspace / ".keyless" / "memory" / "topics" / "build-quirk.md"
    assert "make needs GNU make 4." in topic.read_text()
    assert main(["sessions", "list"]) == 0
    assert "closed" in capsys.readouterr().out


def _session_with_notes(workspace: Path, notes: dict[str, str]) -> None:
    from app.services import AppServices
    from memory.frontmatter import Provenance

    s = store()
    try:
        s.ensure_session("s1", workspace=workspace)
    finally:
        s.close()
    services = AppServices()
    memory = services.memory_service(
        workspace=workspace, session_id="s1", count_tokens=lambda t: len(t) // 4 + 1
    )
    try:
        for title, body in notes.items():
            memory.remember(title, body, level="session",
                            source=Provenance(tool="remember", trust="model"))
    finally:
        memory.close()
        services.close()


def _scripted_model_spec(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, replies: list[str]
) -> None:
    """The model `keyless memory consolidate` opens becomes the scripted fake (own process)."""
    import json

    import app.cli_memory as cli_memory
    from models.factory import ModelSpec

    script = tmp_path / "distill.json"
    script.write_text(json.dumps(replies))
    monkeypatch.setattr(
        cli_memory, "_model_spec", lambda: ModelSpec(backend="fake", scripted_file=script)
    )


def test_close_merges_the_notes_with_the_model_in_its_own_process(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    _session_with_notes(workspace, {"Build quirk": "make needs GNU make 4.",
                                    "Ninja": "ninja is installed too."})
    plan = {"operations": [{
        "op": "MERGE", "target": "build", "sources": ["build-quirk", "ninja"],
        "content": "Builds need GNU make 4; ninja is installed too.",
    }]}
    _scripted_model_spec(monkeypatch, tmp_path, [json.dumps(plan)])
    assert main(["sessions", "close", "s1"]) == 0
    out = capsys.readouterr().out
    assert "closed session s1" in out and "without the model" not in out
    assert "MERGE project/build" in out
    topics = workspace / ".keyless" / "memory" / "topics"
    assert "Builds need GNU make 4; ninja is installed too." in (topics / "build.md").read_text()
    # the merged notes were not promoted one by one as well
    assert not (topics / "build-quirk.md").exists() and not (topics / "ninja.md").exists()
    s = store()
    try:
        assert s.session("s1").state == "closed"
    finally:
        s.close()


def test_close_promotes_the_notes_when_the_model_cannot_be_opened(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import app.cli_memory as cli_memory
    from models.factory import ModelSpec

    _session_with_notes(workspace, {"Build quirk": "make needs GNU make 4."})
    missing = tmp_path / "missing.json"
    monkeypatch.setattr(
        cli_memory, "_model_spec", lambda: ModelSpec(backend="fake", scripted_file=missing)
    )
    assert main(["sessions", "close", "s1"]) == 0
    out = capsys.readouterr().out
    assert "without the model (cannot open the model:" in out and "missing.json" in out
    assert "session -> project: 1 note(s) kept" in out
    topic = workspace / ".keyless" / "memory" / "topics" / "build-quirk.md"
    assert "make needs GNU make 4." in topic.read_text()


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_session_left_and_continued_restores_the_agents_saved_state(
    workspace: Path,
) -> None:
    from app.settings import AppSettings, ModelSettings, save_settings
    from vault.audit import AuditLog

    paths = default_paths()
    save_settings(paths, AppSettings(model=ModelSettings(n_ctx=512)))

    def run(task: str, *extra: str) -> int:
        args = build_parser().parse_args(
            ["run", task, "--session", "s1", "--max-steps", "1", "-q", *extra]
        )
        return run_errand_cli(args, stdin=io.StringIO(""), out=io.StringIO(), err=io.StringIO())

    run("Say hello.", "-w", str(workspace))
    # Leaving the session (the command ended) saved the agent's state.
    assert list((paths.kvstate_dir / "s1").glob("*.kvstate"))
    run("Say goodbye.")
    audit = AuditLog(paths.database)
    try:
        kinds = [e.kind for e in audit.entries(limit=100)]
        finished = audit.entries("errand_finished", limit=10)
    finally:
        audit.close()
    assert "kv_state_restored" in kinds and "kv_state_refused" not in kinds, kinds
    # The second run continued from the state: far fewer tokens evaluated.
    evaluated = sorted(int(e.details["evaluated_tokens"]) for e in finished)
    assert len(evaluated) == 2 and evaluated[0] < evaluated[1] / 3, evaluated
