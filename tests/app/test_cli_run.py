"""``keyless run`` end to end: the real host, worker, policy and rule store, terminal answers."""

from __future__ import annotations

import http.server
import io
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from agent.host.policy import Rule, RuleStore
from app.cli import build_parser
from app.cli_common import ExitStatus
from app.cli_run import EXIT_FAILED, EXIT_LIMIT, EXIT_OK, run_errand_cli
from app.paths import default_paths
from tests.agent.hostkit import call, final, write_script


def keyless_run(
    tmp_path: Path, workspace: Path, replies: list[str], answers: str = "", *extra: str
) -> tuple[int, str, str]:
    script = write_script(tmp_path / "script.json", replies)
    args = build_parser().parse_args(
        ["run", "do the errand", "--workspace", str(workspace), "--scripted-model", str(script),
         *extra]
    )
    out, err = io.StringIO(), io.StringIO()
    status = run_errand_cli(args, stdin=io.StringIO(answers), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def ws(workspace: Path) -> Path:
    (workspace / "notes.txt").write_text("buy milk\n")
    return workspace


def test_a_denied_write_is_reported_and_the_summary_lists_the_calls(
    tmp_path: Path, ws: Path
) -> None:
    replies = [
        call("read_file", path="notes.txt"),
        call("write_file", path="out.txt", content="x"),
        final("Read it; the write was denied."),
    ]
    status, out, err = keyless_run(tmp_path, ws, replies, "d\nnot today\n")
    assert status == EXIT_OK
    assert out.startswith("Read it; the write was denied.\n")
    assert "2 tool call(s):" in out
    assert "read_file     allow" in out and "write_file    denied" in out
    assert "Permission needed: write_file (write)" in err
    assert "deny (not today)" in err
    assert "[OS isolation" in err
    assert not (ws / "out.txt").exists()


def test_always_saves_the_rule_for_the_next_run(tmp_path: Path, ws: Path) -> None:
    replies = [call("write_file", path="a.txt", content="1"), final("ok")]
    # a, then edit the rule, then save it for this workspace.
    status, _out, err = keyless_run(tmp_path, ws, replies, "a\nwrite_file(*.txt)\nw\n")
    assert status == EXIT_OK and (ws / "a.txt").read_text() == "1"
    store = RuleStore(default_paths().database, workspace=ws)
    try:
        assert [str(r) for r in store.rules(ws)] == ["write_file(*.txt)"]
    finally:
        store.close()
    replies = [call("write_file", path="b.txt", content="2"), final("ok")]
    status, _out, err = keyless_run(tmp_path, ws, replies, "")
    assert status == EXIT_OK and (ws / "b.txt").read_text() == "2"
    assert "Permission needed" not in err


def test_yes_read_only_answers_reads_but_never_beats_a_deny_rule(tmp_path: Path, ws: Path) -> None:
    paths = default_paths().ensure()
    store = RuleStore(paths.database, workspace=ws)
    store.add(Rule(tool="read_file", pattern="notes.txt", action="ask", scope="workspace"))
    store.add(Rule(tool="read_file", pattern="secret.txt", action="deny", scope="workspace"))
    store.close()
    (ws / "secret.txt").write_text("hidden")
    replies = [
        call("read_file", path="notes.txt"),
        call("read_file", path="secret.txt"),
        final("done"),
    ]
    status, out, err = keyless_run(tmp_path, ws, replies, "", "--yes-read-only")
    assert status == EXIT_OK
    assert "[auto] allowed once: read_file" in err
    assert "read_file     allow    ok" in out
    assert "read_file     denied   failed" in out


def test_end_of_input_denies(tmp_path: Path, ws: Path) -> None:
    replies = [call("write_file", path="a.txt", content="1"), final("ok")]
    status, out, _err = keyless_run(tmp_path, ws, replies, "")
    assert status == EXIT_OK and "write_file    denied" in out
    assert not (ws / "a.txt").exists()


def test_the_step_limit_gives_its_own_status(tmp_path: Path, ws: Path) -> None:
    replies = [call("list_dir"), call("list_dir", path="a"), call("list_dir", path="b")]
    status, out, _err = keyless_run(tmp_path, ws, replies, "", "--max-steps", "2")
    assert status == EXIT_LIMIT and "step limit (2)" in out


def test_a_missing_workspace_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Checked as the arguments are parsed (app.cli_common.workspace_dir): nothing starts.
    with pytest.raises(SystemExit) as info:
        keyless_run(tmp_path, tmp_path / "nope", [final("x")])
    assert info.value.code == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert "keyless run: error: argument --workspace/-w: workspace " in err
    assert "is not a directory" in err


def test_too_many_steps_are_a_usage_error(tmp_path: Path, ws: Path) -> None:
    status, _out, err = keyless_run(tmp_path, ws, [final("x")], "", "--max-steps", "201")
    assert status == ExitStatus.USAGE
    assert err.startswith("keyless run: error: --max-steps: ") and "200" in err


def test_a_model_failure_fails_the_run(tmp_path: Path, ws: Path) -> None:
    # The scripted model runs out of replies: the agent reports a model error.
    status, out, err = keyless_run(tmp_path, ws, [call("list_dir")])
    assert status == EXIT_FAILED
    assert "error: the scripted model has no response left" in err
    assert "(no answer:" in out


def test_a_remote_model_whose_key_is_in_a_locked_vault_is_refused(ws: Path) -> None:
    from app.settings import AppSettings, ModelSettings, save_settings

    paths = default_paths().ensure()
    model = ModelSettings(
        backend="openai",
        base_url="https://models.example.com/v1",
        remote_model="big",
        remote_key_secret="REMOTE_KEY",
    )
    save_settings(paths, AppSettings(model=model))
    args = build_parser().parse_args(["run", "x", "--workspace", str(ws)])
    out, err = io.StringIO(), io.StringIO()
    status = run_errand_cli(args, stdin=io.StringIO(""), out=out, err=err)
    assert status == EXIT_FAILED
    assert "cannot use the remote model" in err.getvalue()
    assert "'REMOTE_KEY' is in the vault, which is locked" in err.getvalue()


def test_session_option_names_the_errands_session(tmp_path: Path, ws: Path) -> None:
    from vault.audit import AuditLog

    replies = [call("read_file", path="notes.txt"), final("done")]
    status, _out, _err = keyless_run(tmp_path, ws, replies, "o\n", "--session", "sess-42")
    assert status == EXIT_OK
    entries = AuditLog(default_paths().database).entries()
    assert entries and {e.session_id for e in entries if e.session_id} == {"sess-42"}


def test_model_text_cannot_drive_the_terminal(tmp_path: Path, ws: Path) -> None:
    # Streamed tokens, the final answer and the summary are the model's words:
    # escape sequences in them are shown, not obeyed.
    evil = "done\x1b]52;c;ZXZpbA==\x07\x1b[2J\x9b"
    replies = [call("read_file", path="notes.txt\x1b[8m"), final(evil)]
    _, out, err = keyless_run(tmp_path, ws, replies, "")
    for text in (out, err):
        assert not any(ch in text for ch in "\x1b\x07\x9b"), repr(text)
    assert "done\\x1b]52" in out


def test_a_workspace_holding_the_data_dir_is_warned_about_and_the_tools_refuse_it(
    tmp_path: Path, ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = ws / "kdata"
    monkeypatch.setenv("KEYLESS_DATA_DIR", str(data))
    (data / "memory").mkdir(parents=True)
    (data / "memory" / "USER.md").write_text("private user memory\n")
    replies = [
        call("read_file", path="kdata/memory/USER.md"),
        call("write_file", path="kdata/vault.kls", content="gone"),
        final("done"),
    ]
    status, out, err = keyless_run(tmp_path, ws, replies, "o\no\n")
    assert status == EXIT_OK
    assert f"warning: The workspace {ws.resolve()} contains {data.resolve()}" in err
    assert "read_file     allow    failed" in out and "write_file    allow    failed" in out
    assert "private user memory" not in out + err
    assert not (data / "vault.kls").exists()


def test_a_scripted_run_has_memory_so_remember_works(tmp_path: Path, ws: Path) -> None:
    replies = [
        call("remember", topic="build-steps", content="run make test", level="project"),
        final("noted"),
    ]
    status, out, err = keyless_run(tmp_path, ws, replies, "o\n" * 3)
    assert status == EXIT_OK, err
    assert "running without memory" not in err
    topic = ws / ".keyless" / "memory" / "topics" / "build-steps.md"
    assert "run make test" in topic.read_text()


def test_memory_withheld_while_the_vault_is_locked_is_said_on_stderr(
    tmp_path: Path, ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    (ws / "KEYLESS.md").write_text("Always run make test before committing.\n")
    status, _out, err = keyless_run(tmp_path, ws, [final("ok")])
    assert status == EXIT_OK, err
    assert err.count("1 memory file(s) were withheld from the agent") == 1, err
    assert "Unlock the vault to give the agent its memory" in err


def test_every_line_the_terminal_shows_is_redacted(tmp_path: Path, ws: Path) -> None:
    from agent.host.policy import Rule
    from app.cli_run import EventPrinter, print_result
    from tests.agent.hostkit import make_rig
    from vault._crypto import Argon2Params
    from vault.audit import AuditLog
    from vault.broker import Broker
    from vault.grants import GrantStore
    from vault.keystore import NoKeyring
    from vault.store import Vault

    secret = "sk-term-" + "Hq72Lw0Zc5Vb8Nm"
    vault = Vault.create(
        tmp_path / "vault.kls",
        passphrase="correct horse",
        use_keyring=False,
        keystore=NoKeyring(),
        kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64),
        idle_timeout=None,
    )
    vault.add("API_TOKEN", secret.encode())
    db = tmp_path / "broker.db"
    broker = Broker(vault, GrantStore(db), AuditLog(db))
    err, out = io.StringIO(), io.StringIO()
    printer = EventPrinter(err, stream_tokens=True)
    rig = make_rig(
        tmp_path,
        ws,
        [call("write_file", path="key.txt", content=f"token={secret}"), final("saved it")],
        broker=broker,
        rules=[Rule(tool="write_file", pattern="*", action="allow")],
        tools=("write_file",),
        on_event=printer,
        isolate=False,
    )
    try:
        printer.redact = rig.host.redact
        result = rig.host.run_errand("save the key")
        print_result(result, out, redact=rig.host.redact)
    finally:
        rig.host.close()
        broker.close()
    assert result.outcome == "final"
    for text in (out.getvalue(), err.getvalue()):
        assert secret not in text, text
    assert "API_TOKEN" in out.getvalue()  # the summary says what was redacted


def test_a_withheld_credential_is_named_with_the_command_that_moves_it_into_the_vault(
    tmp_path: Path, ws: Path
) -> None:
    token = "ghp_" + "Zq3Vb8Nm1Lk4Jh7Gf2Ds5Ap9Ow6Ie0Ru3Ty8"
    (ws / ".env").write_text(f"SECRET_TOKEN={token}\n")
    replies = [call("read_file", path=".env"), final("It holds a token.")]
    status, out, err = keyless_run(tmp_path, ws, replies, "o\n")
    assert status == EXIT_OK
    assert "may hold credentials" in err  # the default rule asked first
    assert "a credential (GitHub token) at .env:1 was withheld from the agent" in err
    assert "keyless vault add SECRET_TOKEN" in err
    assert token not in err and token not in out


# -- on a terminal: offered after the errand ---------------------------------------------------

PASS = "correct horse battery staple"
TOKEN = "ghp_" + "Zq3Vb8Nm1Lk4Jh7Gf2Ds5Ap9Ow6Ie0Ru3Ty8"


def run_reading_env(
    tmp_path: Path, ws: Path, answers: str, monkeypatch: pytest.MonkeyPatch, passphrase: str = ""
) -> tuple[int, str, str]:
    """`keyless run` as on a terminal: prompts answered from ``answers``.

    The vault passphrase is read the way ``keyless vault add`` reads it; with
    standard input a pipe that is the first line of ``sys.stdin``.
    """
    monkeypatch.setenv("KEYLESS_NO_KEYRING", "1")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(passphrase.encode())))
    (ws / ".env").write_text(f"# deploy\nSECRET_TOKEN={TOKEN}\n")
    script = write_script(
        tmp_path / "script.json", [call("read_file", path=".env"), final("It holds a token.")]
    )
    args = build_parser().parse_args(
        ["run", "what is in .env?", "--workspace", str(ws), "--scripted-model", str(script),
         "--session", "sess-7"]
    )
    out, err = io.StringIO(), io.StringIO()
    status = run_errand_cli(args, stdin=io.StringIO(answers), out=out, err=err, interactive=True)
    return status, out.getvalue(), err.getvalue()


def make_vault() -> Path:
    from vault._crypto import Argon2Params
    from vault.keystore import NoKeyring
    from vault.store import Vault

    path = default_paths().ensure().vault_file
    Vault.create(path, passphrase=PASS, use_keyring=False, keystore=NoKeyring(),
                 kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64)).lock()
    return path


def test_on_a_terminal_yes_moves_the_credential_into_the_vault_after_the_errand(
    tmp_path: Path, ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vault.keystore import NoKeyring
    from vault.store import Vault

    path = make_vault()
    status, out, err = run_reading_env(tmp_path, ws, "o\ny\n", monkeypatch, f"{PASS}\n")
    assert status == EXIT_OK and out.startswith("It holds a token.")
    question = "Move SECRET_TOKEN (GitHub token, .env:2) into the vault? [y/N] "
    assert question in err
    assert err.index(question) > err.index("<- ok")  # after the errand, not amid its output
    assert "after the errand you are asked whether to store it in the vault" in err
    assert "stored SECRET_TOKEN in the vault" in err
    assert (
        "keyless vault grant SECRET_TOKEN --session sess-7 --host HOST --path '/*' "
        "--inject 'header:Authorization: Bearer {}'" in err
    )
    assert TOKEN not in err and TOKEN not in out
    vault = Vault.open(path, keystore=NoKeyring())
    vault.unlock(PASS)
    assert bytes(vault.get("SECRET_TOKEN")) == TOKEN.encode()


def test_on_a_terminal_no_or_end_of_input_stores_nothing(
    tmp_path: Path, ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vault.keystore import NoKeyring
    from vault.store import Vault

    path = make_vault()
    for answers in ("o\nn\n", "o\n"):
        status, _out, err = run_reading_env(tmp_path, ws, answers, monkeypatch, f"{PASS}\n")
        assert status == EXIT_OK and "into the vault? [y/N]" in err
        assert "stored SECRET_TOKEN" not in err
    vault = Vault.open(path, keystore=NoKeyring())
    vault.unlock(PASS)
    assert vault.names() == []


def test_on_a_terminal_without_a_vault_says_how_to_create_one(
    tmp_path: Path, ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, _out, err = run_reading_env(tmp_path, ws, "o\ny\n", monkeypatch)
    assert status == EXIT_OK
    assert "no vault yet: create it with `keyless vault init`, then " in err
    assert "`keyless vault add SECRET_TOKEN`" in err


def test_on_a_terminal_a_wrong_passphrase_stores_nothing_and_says_so(
    tmp_path: Path, ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_vault()
    status, _out, err = run_reading_env(tmp_path, ws, "o\ny\n", monkeypatch, "wrong\n")
    assert status == EXIT_OK
    assert "   not stored: " in err and "passphrase" in err
    assert TOKEN not in err


def test_keyless_run_on_a_real_terminal_offers_the_credential(
    tmp_path: Path, ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole command under a pseudo-terminal: stdin is a tty, the passphrase is not echoed."""
    import os
    import pty
    import select
    import signal

    from vault.keystore import NoKeyring
    from vault.store import Vault

    monkeypatch.setenv("KEYLESS_NO_KEYRING", "1")
    path = make_vault()
    (ws / ".env").write_text(f"SECRET_TOKEN={TOKEN}\n")
    script = write_script(
        tmp_path / "script.json", [call("read_file", path=".env"), final("It holds a token.")]
    )
    argv = [sys.executable, "-m", "app", "run", "what is in .env?", "--workspace", str(ws),
            "--scripted-model", str(script), "--quiet"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        os.execv(sys.executable, argv)
    seen = b""

    def until(text: bytes) -> None:
        nonlocal seen
        while text not in seen:
            ready, _, _ = select.select([fd], [], [], 60)
            assert ready, f"no {text!r} within 60 s; got {seen[-600:]!r}"
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                chunk = b""
            assert chunk, f"the command ended before {text!r}; got {seen[-600:]!r}"
            seen += chunk

    try:
        until(b"[d]eny: ")
        os.write(fd, b"o\n")
        until(b"into the vault? [y/N] ")
        os.write(fd, b"y\n")
        until(b"Vault passphrase: ")
        os.write(fd, PASS.encode() + b"\n")
        until(b"keyless run --session")
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # never leave the child waiting for input
        raise
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == EXIT_OK
    assert b"Move SECRET_TOKEN (GitHub token, .env:1) into the vault? [y/N]" in seen
    assert PASS.encode() not in seen and TOKEN.encode() not in seen
    vault = Vault.open(path, keystore=NoKeyring())
    vault.unlock(PASS)
    assert bytes(vault.get("SECRET_TOKEN")) == TOKEN.encode()


@pytest.mark.skipif(
    not __import__("agent.host.sandbox", fromlist=["Sandbox"]).Sandbox.detect().available
    or __import__("shutil").which("curl") is None,
    reason="needs bubblewrap and curl",
)
def test_a_shell_command_reaches_the_network_only_through_the_egress_proxy(
    tmp_path: Path, ws: Path
) -> None:
    replies = [
        call("shell", command="curl -sS -o /dev/null -w '%{http_code}' http://localhost:9/x"),
        final("tried"),
    ]
    # Once for the shell command, once for its request (no net rule decides it).
    status, _out, err = keyless_run(tmp_path, ws, replies, "o\no\n")
    assert status == EXIT_OK, err
    assert "Permission needed: net" in err and "GET localhost/x" in err
    assert "asked by: curl" in err
    # The request is listed under the command that made it, with the decision.
    assert "   net GET localhost/x: allow (allowed by the user" in err


# -- choosing the model on the command line ------------------------------------------


class _OneAnswerServer(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible server that answers every chat with one final answer."""

    seen: ClassVar[list[dict[str, object]]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"body": body, "auth": self.headers.get("Authorization")})
        reply = json.dumps({"final": "the server answered"})
        chunks = [
            {"choices": [{"delta": {"content": reply}, "finish_reason": None}]},
            {"choices": [{"delta": {}, "finish_reason": "stop"}]},
        ]
        payload = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(payload.encode())))
        self.end_headers()
        self.wfile.write(payload.encode())

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
        pass


@pytest.fixture
def one_answer_server() -> Iterator[str]:
    _OneAnswerServer.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OneAnswerServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def run_args(*argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(["run", *argv])
    out, err = io.StringIO(), io.StringIO()
    status = run_errand_cli(args, stdin=io.StringIO(""), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_backend_openai_runs_the_errand_with_the_named_server_and_no_configured_key(
    ws: Path, one_answer_server: str
) -> None:
    from app.settings import AppSettings, ModelSettings, save_settings

    # The settings name another server with a key in a locked vault: neither is used.
    model = ModelSettings(
        backend="openai", base_url="https://models.example.com/v1", remote_model="big",
        remote_key_secret="REMOTE_KEY",
    )  # fmt: skip
    save_settings(default_paths().ensure(), AppSettings(model=model))
    status, out, err = run_args(
        "what is up?", "--workspace", str(ws), "--backend", "openai",
        "--base-url", one_answer_server, "--model-name", "tiny", "--allow-local",
    )  # fmt: skip
    assert status == EXIT_OK, err
    assert "the server answered" in out
    assert _OneAnswerServer.seen and _OneAnswerServer.seen[0]["auth"] is None
    body = _OneAnswerServer.seen[0]["body"]
    assert isinstance(body, dict) and body["model"] == "tiny"


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--backend", "openai", "--model-name", "m"], "--backend openai needs --base-url"),
        (["--backend", "openai", "--base-url", "http://x/v1"], "needs --base-url URL and"),
        (["--base-url", "http://x/v1"], "do not go with --backend llama.cpp"),
        (["--model", "no-such.gguf"], "--model no-such.gguf: no such file"),
    ],
)
def test_inconsistent_model_options_are_usage_errors(
    ws: Path, argv: list[str], problem: str
) -> None:
    status, _out, err = run_args("x", "--workspace", str(ws), *argv)
    assert status == ExitStatus.USAGE
    assert problem in err


def test_scripted_model_does_not_mix_with_a_model_file(tmp_path: Path, ws: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    status, _out, err = keyless_run(tmp_path, ws, [final("x")], "", "--model", str(gguf))
    assert status == ExitStatus.USAGE
    assert "--scripted-model replaces the model" in err


def test_model_file_builds_the_spec_as_chat_does(tmp_path: Path) -> None:
    from app.cli_run import model_spec

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    args = build_parser().parse_args(["run", "x", "--model", str(gguf), "--n-ctx", "2048"])
    spec = model_spec(args, services=None)
    assert (spec.backend, spec.settings.path, spec.settings.n_ctx) == ("llama.cpp", gguf, 2048)
