"""The file tools through run_tool: list_dir, read_file, search_files, write_file, edit_file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.errors import PathRefusedError, ToolError, ToolValidationError
from agent.host.tools.base import ToolContext
from agent.host.tools.registry import run_tool


@pytest.fixture
def ctx(workspace: Path, tmp_path: Path) -> ToolContext:
    (workspace / "src").mkdir()
    (workspace / "src" / "app.py").write_text("def main():\n    return 1\n# TODO fix\n")
    (workspace / "notes.txt").write_text("alpha\nbeta\ngamma\nTODO later\n")
    (workspace / ".git" / "hooks").mkdir(parents=True)
    (workspace / ".git" / "hooks" / "pre-commit").write_text("TODO hook\n")
    (workspace / ".keyless").mkdir()
    (workspace / ".keyless" / "rules.toml").write_text("TODO keyless\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("TODO TOP-SECRET\n")
    os.symlink(outside, workspace / "out")
    return ToolContext(workspace=workspace, session_id="s1", read_bytes=1024, output_bytes=2048)


def test_list_dir_marks_kinds_and_protected(ctx: ToolContext) -> None:
    out = run_tool("list_dir", {}, ctx)
    lines = out.content.splitlines()
    assert lines[0] == ".: 5 entries"
    assert ".git/" in lines and ".keyless/ (protected)" in lines
    assert "out -> (symlink)" in lines and "src/" in lines
    assert "notes.txt  28 bytes" in lines
    assert out.untrusted


def test_list_dir_refuses_protected_and_outside(ctx: ToolContext) -> None:
    with pytest.raises(PathRefusedError, match="protected path .keyless"):
        run_tool("list_dir", {"path": ".keyless"}, ctx)
    with pytest.raises(PathRefusedError, match="symlink pointing outside"):
        run_tool("list_dir", {"path": "out"}, ctx)


def test_read_file_lines_and_truncation_marker(ctx: ToolContext) -> None:
    out = run_tool("read_file", {"path": "notes.txt", "start_line": 2, "max_lines": 2}, ctx)
    assert out.content == "beta\ngamma\n" and not out.truncated
    (ctx.workspace / "big.txt").write_text("x" * 5000)
    big = run_tool("read_file", {"path": "big.txt"}, ctx)
    assert big.truncated
    assert big.content.startswith("x" * 1024)
    assert big.content.endswith("[truncated file: 3976 more bytes not read]")


def test_read_file_output_limit_marker(ctx: ToolContext) -> None:
    ctx.read_bytes = 10_000
    (ctx.workspace / "big.txt").write_text("é" * 3000)  # 6000 bytes of UTF-8
    out = run_tool("read_file", {"path": "big.txt"}, ctx)
    assert out.truncated
    assert out.content.endswith("\n[truncated file: 4052 more bytes not shown]")
    assert len(out.content.split("\n[truncated")[0].encode()) == 1948
    assert len(out.content.encode()) <= 2048


def test_read_file_binary_and_refusals(ctx: ToolContext) -> None:
    (ctx.workspace / "blob.bin").write_bytes(b"\x00\x01\x02" * 10)
    assert run_tool("read_file", {"path": "blob.bin"}, ctx).content == (
        "blob.bin is a binary file (30 bytes); not shown"
    )
    with pytest.raises(PathRefusedError, match="symlink pointing outside"):
        run_tool("read_file", {"path": "out/secret.txt"}, ctx)
    with pytest.raises(PathRefusedError, match="protected path .git/hooks"):
        run_tool("read_file", {"path": ".git/hooks/pre-commit"}, ctx)
    with pytest.raises(PathRefusedError, match="'..'"):
        run_tool("read_file", {"path": "../outside/secret.txt"}, ctx)
    with pytest.raises(PathRefusedError, match="src is a directory; only regular"):
        run_tool("read_file", {"path": "src"}, ctx)
    with pytest.raises(PathRefusedError, match="outside the workspace"):
        run_tool("read_file", {"path": "/dev/null"}, ctx)


def test_read_file_refuses_device_inside_workspace(ctx: ToolContext) -> None:
    try:
        os.mknod(ctx.workspace / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    with pytest.raises(PathRefusedError, match="zero is a device file"):
        run_tool("read_file", {"path": "zero"}, ctx)


def test_read_file_refuses_fifo_without_hanging(ctx: ToolContext) -> None:
    os.mkfifo(ctx.workspace / "fifo")
    with pytest.raises(PathRefusedError, match="FIFO"):
        run_tool("read_file", {"path": "fifo"}, ctx)


def test_search_skips_protected_git_and_symlinks(ctx: ToolContext) -> None:
    out = run_tool("search_files", {"query": "todo"}, ctx)
    assert out.content.splitlines() == ["notes.txt:4: TODO later", "src/app.py:3: # TODO fix"]
    assert "TOP-SECRET" not in out.content
    sensitive = run_tool("search_files", {"query": "todo", "case_sensitive": True}, ctx)
    assert sensitive.content == "no match for 'todo'"
    only_py = run_tool("search_files", {"query": "TODO", "glob": "*.py"}, ctx)
    assert only_py.content == "src/app.py:3: # TODO fix"
    capped = run_tool("search_files", {"query": "a", "max_results": 1}, ctx)
    assert capped.truncated and "[truncated results: stopped at 1 matches]" in capped.content


def test_search_rejects_empty_query(ctx: ToolContext) -> None:
    with pytest.raises(ToolValidationError, match="query: Value error, query must not be empty"):
        run_tool("search_files", {"query": "  "}, ctx)


def test_write_file_creates_replaces_and_refuses(ctx: ToolContext) -> None:
    out = run_tool("write_file", {"path": "docs/new.md", "content": "# hi\n"}, ctx)
    assert out.content == "created docs/new.md (5 bytes)" and not out.untrusted
    assert (ctx.workspace / "docs" / "new.md").read_text() == "# hi\n"
    again = run_tool("write_file", {"path": "docs/new.md", "content": "# bye\n"}, ctx)
    assert again.content == "replaced docs/new.md (6 bytes)"
    with pytest.raises(ToolError, match="no such directory"):
        run_tool("write_file", {"path": "x/y.txt", "content": "", "create_dirs": False}, ctx)
    for bad, needle in [
        (".git/hooks/post-checkout", "protected path .git/hooks"),
        (".git/config", "protected path .git/config"),
        (".keyless/memory/MEMORY.md", "protected path .keyless"),
        ("out/planted.txt", "symlink pointing outside"),
        ("../planted.txt", "'..'"),
        ("src", "directory"),
    ]:
        with pytest.raises(PathRefusedError, match=needle):
            run_tool("write_file", {"path": bad, "content": "pwned"}, ctx)
    assert not (ctx.workspace.parent / "planted.txt").exists()
    assert not (ctx.workspace / ".git" / "hooks" / "post-checkout").exists()


def test_write_file_failure_keeps_old_content(ctx: ToolContext) -> None:
    target = ctx.workspace / "keep.txt"
    target.write_text("precious")
    (ctx.workspace).chmod(0o500)
    try:
        if os.access(ctx.workspace, os.W_OK):
            pytest.skip("running as root: directory permissions do not stop writes")
        with pytest.raises(ToolError, match="cannot write"):
            run_tool("write_file", {"path": "keep.txt", "content": "new"}, ctx)
    finally:
        (ctx.workspace).chmod(0o700)
    assert target.read_text() == "precious"


def test_edit_file_exact_single_replace(ctx: ToolContext) -> None:
    out = run_tool(
        "edit_file", {"path": "src/app.py", "old_text": "return 1", "new_text": "return 2"}, ctx
    )
    assert out.content == "edited src/app.py: replaced 1 occurrence"
    assert "return 2" in (ctx.workspace / "src" / "app.py").read_text()
    with pytest.raises(ToolError, match="old_text not found in src/app.py"):
        run_tool("edit_file", {"path": "src/app.py", "old_text": "nope", "new_text": "x"}, ctx)
    (ctx.workspace / "dup.txt").write_text("a-a-a")
    with pytest.raises(ToolError, match="old_text occurs 3 times in dup.txt"):
        run_tool("edit_file", {"path": "dup.txt", "old_text": "a", "new_text": "b"}, ctx)
    assert (ctx.workspace / "dup.txt").read_text() == "a-a-a"
    all_out = run_tool(
        "edit_file", {"path": "dup.txt", "old_text": "a", "new_text": "b", "replace_all": True}, ctx
    )
    assert all_out.content == "edited dup.txt: replaced 3 occurrences"
    assert (ctx.workspace / "dup.txt").read_text() == "b-b-b"


def test_edit_file_validation_and_protected(ctx: ToolContext) -> None:
    with pytest.raises(ToolValidationError, match="old_text and new_text are the same"):
        run_tool("edit_file", {"path": "notes.txt", "old_text": "a", "new_text": "a"}, ctx)
    with pytest.raises(PathRefusedError, match="protected path .git/hooks"):
        run_tool(
            "edit_file",
            {"path": ".git/hooks/pre-commit", "old_text": "TODO", "new_text": "rm -rf ~"},
            ctx,
        )
    (ctx.workspace / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(ToolError, match="not UTF-8 text"):
        run_tool("edit_file", {"path": "latin1.txt", "old_text": "caf", "new_text": "x"}, ctx)


def test_full_disk_during_write_keeps_the_old_file(
    ctx: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    target = ctx.workspace / "keep.txt"
    target.write_text("precious")
    real_write = os.write

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(ToolError, match="keep.txt: cannot write: No space left on device; the old"):
        run_tool("write_file", {"path": "keep.txt", "content": "new content"}, ctx)
    monkeypatch.undo()
    assert target.read_text() == "precious"
    assert sorted(p.name for p in ctx.workspace.iterdir() if p.name.endswith(".tmp")) == []


def test_search_stops_at_the_file_limit(ctx: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.host.tools import search_files

    monkeypatch.setattr(search_files, "MAX_FILES", 1)
    out = run_tool("search_files", {"query": "zzz-not-there"}, ctx)
    assert out.truncated
    assert "[truncated search: stopped after 1 files" in out.content
