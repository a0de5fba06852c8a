"""What every ``keyless`` command shares (``app.cli_common``), checked across all of them."""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
from pathlib import Path

import pytest

from app.cli import build_parser, main
from app.cli_common import (
    CliError,
    ExitStatus,
    fail,
    new_session_id,
    report_error,
    valid_session_id,
)

APP = Path(__file__).resolve().parents[2] / "app"
CLI_MODULES = sorted([*APP.glob("cli*.py"), APP / "selftest.py"])


def leaf_commands(parser: argparse.ArgumentParser) -> list[tuple[str, ...]]:
    """Every runnable command, as the words typed after ``keyless`` (aliases once)."""
    found: list[tuple[str, ...]] = []
    seen: set[int] = set()

    def walk(node: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        groups = [a for a in node._actions if isinstance(a.choices, dict)]
        if not groups:
            found.append(path)
            return
        for group in groups:
            assert isinstance(group.choices, dict)
            for name, child in group.choices.items():
                if id(child) not in seen:
                    seen.add(id(child))
                    walk(child, (*path, name))

    walk(parser, ())
    return found


COMMANDS = leaf_commands(build_parser())


def test_every_command_group_is_found() -> None:
    groups = {path[0] for path in COMMANDS}
    assert groups == {"chat", "run", "vault", "memory", "models", "sessions", "mcp"}
    assert ("vault", "grant") in COMMANDS and ("memory", "undo") in COMMANDS
    assert len(COMMANDS) > 15


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_reports_a_bad_argument_as_a_usage_error_under_its_name(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--no-such-option"])
    assert info.value.code == ExitStatus.USAGE
    out, err = capsys.readouterr()
    assert out == ""
    last = err.strip().splitlines()[-1]
    # Either the unknown option or a missing required argument, always named by the command.
    assert last.startswith(f"keyless {' '.join(command)}: error: "), err
    assert err.startswith(f"usage: keyless {' '.join(command)} "), err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["chat", "--max-tokens", "0"], "argument --max-tokens: expected a whole number of at"),
        (["chat", "--n-ctx", "-1"], "argument --n-ctx: expected a whole number from 1 to"),
        (["chat", "--threads", "two"], "argument --threads: expected a whole number, got 'two'"),
        (["run", "x", "-w", "{tmp}/nope"], "argument --workspace/-w: workspace "),
        (["run", "x", "-w", "{tmp}", "--scripted-model", "{tmp}/none.json"],
         "argument --scripted-model: "),
        (["run", "x", "-w", "{tmp}", "--session", "a b"], "argument --session: invalid session id"),
        (["run", "x", "-w", "{tmp}", "--max-steps", "0"], "argument --max-steps: expected a whole"),
        (["memory", "search", "q", "--limit", "0"], "argument --limit: expected a whole number"),
        (["memory", "history", "--session", "../x"], "argument --session: invalid session id"),
        (["vault", "revoke", "cap_1"], "argument HANDLE: 'cap_1' is not a capability handle"),
        (["vault", "audit", "--limit", "-1"], "argument --limit: expected a whole number of at"),
    ],
)  # fmt: skip
def test_shared_argument_types_give_usage_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == ExitStatus.USAGE
    command = " ".join(argv[:2] if argv[0] in {"memory", "vault"} else argv[:1])
    assert f"keyless {command}: error: {message}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "status", "line"),
    [
        (["chat", "--model", "{tmp}/bogus.gguf", "--prompt", "hi"], ExitStatus.ERROR,
         "keyless chat: error: "),
        (["run", "x", "-w", "{tmp}", "--max-steps", "201"], ExitStatus.USAGE,
         "keyless run: error: --max-steps: "),
        (["memory", "undo", "12345", "-w", "{tmp}"], ExitStatus.ERROR,
         "keyless memory undo: error: no memory change with id 12345"),
        (["vault", "--vault", "{tmp}/none.kls", "list"], ExitStatus.ERROR,
         "keyless vault list: error: no vault at "),
        (["vault", "grant", "K", "--host", "example.com", "--path", "/", "--inject", "nope",
          "--db", "{tmp}/k.db"], ExitStatus.USAGE, "keyless vault grant: error: --inject: "),
        (["vault", "revoke", "cap_" + "0" * 32, "--db", "{tmp}/k.db"], ExitStatus.ERROR,
         "keyless vault revoke: error: HANDLE: no grant with handle"),
    ],
)  # fmt: skip
def test_errors_found_while_running_print_the_same_way(
    argv: list[str],
    status: ExitStatus,
    line: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "bogus.gguf").write_bytes(b"not a model")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == status
    err = capsys.readouterr().err
    assert line in err
    assert all(
        not text.startswith("keyless") or re.match(r"keyless [a-z -]+: error: ", text)
        for text in err.splitlines()
    ), err


def test_ctrl_c_at_a_vault_prompt_is_interrupted_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class CtrlC(io.BytesIO):
        """Standard input as the user presses Ctrl-C while it is read."""

        def readline(self, size: int | None = -1) -> bytes:
            raise KeyboardInterrupt

    monkeypatch.setenv("KEYLESS_NO_KEYRING", "1")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(CtrlC()))
    vault_file = tmp_path / "v.kls"
    assert main(["vault", "--vault", str(vault_file), "init"]) == ExitStatus.INTERRUPTED
    assert capsys.readouterr().err.strip().endswith(
        "keyless vault init: error: interrupted, nothing changed"
    )
    assert not vault_file.exists()


def test_report_error_and_fail() -> None:
    err = io.StringIO()
    report_error("vault grant", ValueError("bad --host"), err)
    report_error("", "no such command", err)
    assert fail("run", CliError("cancelled", ExitStatus.INTERRUPTED), err) == 130
    assert err.getvalue().splitlines() == [
        "keyless vault grant: error: bad --host",
        "keyless: error: no such command",
        "keyless run: error: cancelled",
    ]
    assert CliError("x").status == ExitStatus.ERROR


def test_minted_session_ids_are_valid_unique_and_sortable() -> None:
    import datetime as dt

    earlier = new_session_id(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    assert re.fullmatch(r"20260102-030405-[0-9a-f]{8}", earlier)
    now = {new_session_id() for _ in range(50)}
    assert len(now) == 50
    assert all(valid_session_id(s) == s and earlier < s for s in now)


def test_the_readme_lists_every_exit_status() -> None:
    readme = (APP.parent / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| (\d+) \| `(\w+)` \|", readme, flags=re.MULTILINE))
    assert rows == {str(int(s)): s.name for s in ExitStatus}


def _private_imports(path: Path) -> list[str]:
    """Names imported by ``path`` that are private to another module, as ``line: name``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
            names = []
        else:
            continue
        for module in modules:
            if module != "__future__" and any(p.startswith("_") for p in module.split(".")):
                found.append(f"{node.lineno}: {module}")
        found += [f"{node.lineno}: {n}" for n in names if n.startswith("_")]
    return found


@pytest.mark.parametrize("path", CLI_MODULES, ids=lambda p: p.name)
def test_no_cli_module_imports_a_private_name(path: Path) -> None:
    assert _private_imports(path) == []


def test_the_private_import_scan_finds_them(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from __future__ import annotations\n"
        "from app.cli_vault import Terminal, _open\n"
        "from vault import _crypto\n"
        "import vault._format\n"
        "def f():\n    from vault._crypto import zero\n"
    )
    assert _private_imports(sample) == [
        "2: _open", "3: _crypto", "4: vault._format", "6: vault._crypto"
    ]  # fmt: skip
