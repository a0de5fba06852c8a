"""Workspace confinement of the file tools (agent/host/tools/paths.py)."""

from __future__ import annotations

import os
import string
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import PathRefusedError, ToolError
from agent.host.tools.paths import Workspace, protected_reason


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace with files, an inside symlink, and an outside dir with a secret."""
    ws = tmp_path / "ws"
    outside = tmp_path / "outside"
    (ws / "src" / "pkg").mkdir(parents=True)
    (ws / "src" / "pkg" / "mod.py").write_text("print('hi')\n")
    (ws / "README.md").write_text("readme\n")
    (ws / ".git" / "hooks").mkdir(parents=True)
    (ws / ".git" / "config").write_text("[core]\n")
    (ws / ".keyless").mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("TOP-SECRET\n")
    os.symlink(outside, ws / "escape")
    os.symlink(outside / "secret.txt", ws / "secret-link")
    os.symlink("src/pkg", ws / "inside-link")
    os.symlink(".git/hooks", ws / "hooks-link")
    return ws, outside


def test_resolves_plain_and_inside_symlink(tree: tuple[Path, Path]) -> None:
    ws, _ = tree
    w = Workspace(ws)
    assert w.resolve("src/pkg/mod.py").relative == PurePosixPath("src/pkg/mod.py")
    assert w.resolve("./README.md").relative == PurePosixPath("README.md")
    assert w.resolve("inside-link/mod.py").relative == PurePosixPath("src/pkg/mod.py")
    assert w.resolve(str(ws / "README.md")).relative == PurePosixPath("README.md")
    assert w.resolve(".").relative == PurePosixPath(".")


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("../outside/secret.txt", "'..'"),
        ("src/../../outside/secret.txt", "'..'"),
        ("/etc/passwd", "outside the workspace"),
        ("escape/secret.txt", "symlink pointing outside"),
        ("secret-link", "symlink pointing outside"),
        (".git/hooks/pre-commit", "protected path .git/hooks"),
        (".git/config", "protected path .git/config"),
        (".keyless/rules.toml", "protected path .keyless"),
        (".GIT/Hooks/x", "protected"),
        ("hooks-link/pre-commit", "protected path .git/hooks"),
        (".git/modules/sub/config", "protected path .git/modules"),
        ("a\x00b", "NUL"),
    ],
)
def test_refuses_escapes_and_protected_paths(
    tree: tuple[Path, Path], path: str, needle: str
) -> None:
    ws, _ = tree
    with pytest.raises(PathRefusedError, match=needle):
        Workspace(ws).resolve(path, must_exist=False)


def test_refuses_fifo_and_device(tree: tuple[Path, Path]) -> None:
    ws, _ = tree
    os.mkfifo(ws / "pipe")
    with pytest.raises(PathRefusedError, match="a FIFO"):
        Workspace(ws).resolve("pipe")
    os.symlink("/dev/zero", ws / "zero")
    with pytest.raises(PathRefusedError, match="outside the workspace"):
        Workspace(ws).resolve("zero")


def test_missing_path_is_a_clear_error(tree: tuple[Path, Path]) -> None:
    ws, _ = tree
    with pytest.raises(ToolError, match="no such file"):
        Workspace(ws).resolve("nope.txt")
    where = Workspace(ws).resolve("new/dir/file.txt", must_exist=False)
    assert where.relative == PurePosixPath("new/dir/file.txt") and not where.exists


def test_swapped_symlink_after_resolution_is_not_followed(tree: tuple[Path, Path]) -> None:
    ws, outside = tree
    w = Workspace(ws)
    where = w.resolve("src/pkg/mod.py")
    # Time of check passed; now an attacker swaps the directory for a symlink out.
    os.rename(ws / "src" / "pkg", ws / "src" / "pkg-old")
    os.symlink(outside, ws / "src" / "pkg")
    (outside / "mod.py").write_text("OUTSIDE\n")
    with pytest.raises(PathRefusedError, match="changed into a symlink"):
        w.read_bytes(where, 1000)


def test_swapped_final_symlink_is_refused_on_read_and_write(tree: tuple[Path, Path]) -> None:
    ws, outside = tree
    w = Workspace(ws)
    where = w.resolve("README.md")
    (ws / "README.md").unlink()
    os.symlink(outside / "secret.txt", ws / "README.md")
    with pytest.raises(PathRefusedError, match="symlink"):
        w.read_bytes(where, 1000)
    with pytest.raises(PathRefusedError, match="symlink"):
        w.write_atomic(where, b"x", create_dirs=False)
    assert (outside / "secret.txt").read_text() == "TOP-SECRET\n"


def test_write_atomic_keeps_mode_and_leaves_no_temp(tree: tuple[Path, Path]) -> None:
    ws, _ = tree
    w = Workspace(ws)
    target = ws / "script.sh"
    target.write_text("old")
    target.chmod(0o750)
    assert w.write_atomic(w.resolve("script.sh"), b"new", create_dirs=False) is True
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o750
    assert sorted(p.name for p in ws.iterdir() if "keyless-" in p.name) == []


def test_protected_reason() -> None:
    assert protected_reason(PurePosixPath(".git/hooks/x")) == ".git/hooks"
    assert protected_reason(PurePosixPath(".git/HEAD")) is None
    assert protected_reason(PurePosixPath("src/.keyless")) is None


# -- property tests ------------------------------------------------------------------------------

_FIXTURE_OK = [HealthCheck.function_scoped_fixture]
_segment = st.sampled_from(["..", ".", "src", "pkg", "escape", "inside-link", "new", "mod.py", ""])


@settings(max_examples=300, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(parts=st.lists(_segment, min_size=1, max_size=6), absolute=st.booleans())
def test_property_resolution_never_leaves_workspace(
    tree: tuple[Path, Path], parts: list[str], absolute: bool
) -> None:
    ws, outside = tree
    text = "/".join(parts)
    if absolute:
        text = "/" + text
    w = Workspace(ws)
    try:
        where = w.resolve(text, must_exist=False)
    except ToolError:
        return  # refused (PathRefusedError is a ToolError) or missing: fine
    real = os.path.realpath(where.absolute)
    assert real == str(w.root) or real.startswith(str(w.root) + "/"), (text, real)
    assert ".." not in where.relative.parts
    if where.exists and os.path.isfile(real):
        data, _ = w.read_bytes(where, 1000)
        assert b"TOP-SECRET" not in data


@settings(max_examples=150, deadline=None, suppress_health_check=_FIXTURE_OK)
@given(
    links=st.lists(
        st.tuples(
            st.text(string.ascii_lowercase, min_size=1, max_size=3),
            st.sampled_from(["..", "../..", "/", "/tmp", "src", ".", "../outside", "x/../.."]),
        ),
        min_size=1,
        max_size=4,
    ),
    probe=st.lists(st.text(string.ascii_lowercase + ".", min_size=1, max_size=3), max_size=3),
)
def test_property_random_symlinks_never_escape(
    tmp_path_factory: pytest.TempPathFactory, links: list[tuple[str, str]], probe: list[str]
) -> None:
    base = tmp_path_factory.mktemp("prop")
    ws = base / "ws"
    (ws / "src").mkdir(parents=True)
    (base / "outside").mkdir()
    (base / "outside" / "s").write_text("TOP-SECRET")
    for name, target in links:
        if not os.path.lexists(ws / name):
            os.symlink(target, ws / name)
    w = Workspace(ws)
    for first, _ in links:
        text = "/".join([first, *probe])
        try:
            where = w.resolve(text, must_exist=False)
        except ToolError:
            continue
        real = os.path.realpath(where.absolute)
        assert real == str(w.root) or real.startswith(str(w.root) + "/"), (text, real)
        if where.exists and os.path.isfile(real):
            assert b"TOP-SECRET" not in w.read_bytes(where, 100)[0]
        elif not where.exists:
            try:
                w.write_atomic(where, b"written", create_dirs=True)
            except ToolError:
                continue
            assert (base / "outside" / "s").read_text() == "TOP-SECRET"
            assert sorted(p.name for p in (base / "outside").iterdir()) == ["s"]


def test_git_commondir_is_protected(tree: tuple[Path, Path]) -> None:
    # .git/commondir moves where git reads its config and hooks from: a
    # core.fsmonitor there runs on the user's next `git status`.
    ws, _ = tree
    with pytest.raises(PathRefusedError, match=r"protected path \.git/commondir"):
        Workspace(ws).resolve(".git/commondir", must_exist=False)


def test_a_git_file_at_the_root_cannot_be_written(tmp_path: Path) -> None:
    # In a worktree or submodule .git is a file naming the git dir: rewriting it
    # points git at a directory the agent built (with its own config and hooks).
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".git").write_text("gitdir: /somewhere/real\n")
    w = Workspace(ws)
    with pytest.raises(PathRefusedError, match=r"\.git"):
        w.write_atomic(w.resolve(".git", must_exist=False), b"gitdir: evil\n", create_dirs=False)
    with pytest.raises(PathRefusedError, match=r"\.git"):
        w.write_atomic(w.resolve(".GIT", must_exist=False), b"gitdir: evil\n", create_dirs=False)
    assert (ws / ".git").read_text() == "gitdir: /somewhere/real\n"


# -- git directories at any depth, and names in disguise -----------------------------------------


@pytest.mark.parametrize(
    ("path", "entry"),
    [
        (".git/config", ".git/config"),
        (".git/config.worktree", ".git/config.worktree"),
        (".git/info/attributes", ".git/info"),
        (".git/objects/info/alternates", ".git/objects/info/alternates"),
        (".git/worktrees/w/gitdir", ".git/worktrees"),
        ("vendor/lib/.git/config", "vendor/lib/.git/config"),
        ("new/repo/.git/hooks/pre-commit", "new/repo/.git/hooks"),
        (".GIT/Config", ".git/config"),
        (".g\u200cit/config", ".git/config"),
        (".git./config", ".git/config"),
        ("GIT~1/config", ".git/config"),
    ],
)
def test_code_running_git_entries_are_refused_existing_or_not(
    tmp_path: Path, path: str, entry: str
) -> None:
    # A .git without a config (or no .git yet): writing one with
    # core.fsmonitor would run code on the user's next `git status`.
    ws = tmp_path / "ws"
    (ws / ".git").mkdir(parents=True)
    w = Workspace(ws)
    with pytest.raises(PathRefusedError, match=rf"protected path {entry}"):
        w.resolve(path, must_exist=False)
    assert sorted(p.name for p in (ws / ".git").iterdir()) == []


def test_ordinary_git_data_is_not_protected() -> None:
    for path in (".git/HEAD", ".git/objects/ab/cdef", ".git/refs/heads/main", ".github/x.yml"):
        assert protected_reason(PurePosixPath(path)) is None, path


def test_a_git_file_cannot_be_written_in_a_subdirectory(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    w = Workspace(ws)
    for name in ("sub/.git", "sub/.Git"):
        with pytest.raises(PathRefusedError, match="a .git file cannot be written"):
            w.write_atomic(w.resolve(name, must_exist=False), b"gitdir: /x\n", create_dirs=True)
    assert list((ws / "sub").iterdir()) == []


# -- Keyless's own files and the keyring's, wherever they lie ------------------------------------


@pytest.fixture
def data_inside(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace that contains the data dir (as one containing ~/.local/share would)."""
    ws = tmp_path / "ws"
    data = ws / "kdata"
    (data / "memory").mkdir(parents=True)
    (data / "vault.kls").write_bytes(b"KLS1 vault bytes")
    (data / "memory" / "USER.md").write_text("the user's memory\n")
    (ws / "notes.txt").write_text("notes\n")
    os.symlink("kdata", ws / "alias")
    return ws, data


@pytest.mark.parametrize(
    "path",
    ["kdata", "kdata/vault.kls", "kdata/memory/USER.md", "./kdata/memory", "alias/vault.kls"],
)
def test_refused_dirs_inside_the_workspace_are_refused(
    data_inside: tuple[Path, Path], path: str
) -> None:
    ws, data = data_inside
    w = Workspace(ws, refused=[data])
    with pytest.raises(PathRefusedError, match="Keyless's own or the keyring's files"):
        w.resolve(path, must_exist=False)
    with pytest.raises(PathRefusedError, match="Keyless's own or the keyring's files"):
        w.resolve(str(ws / path), must_exist=False)
    assert w.resolve("notes.txt").exists


def test_a_refused_file_is_refused_by_any_name(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "keyrings").mkdir(parents=True)
    (ws / "keyrings" / "login.keyring").write_bytes(b"keyring")
    w = Workspace(ws, refused=[ws / "keyrings" / "login.keyring"])
    with pytest.raises(PathRefusedError):
        w.resolve("keyrings/login.keyring")
    assert w.resolve("keyrings").exists  # the directory around it is not refused
