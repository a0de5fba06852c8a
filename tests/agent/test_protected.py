"""The search for ``.git`` entries the shell sandbox's git guard runs before and after a command."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent.host.protected import CTIME_MARGIN_NS, scan_git_entries

# A previous scan dated this far ahead trusts every directory made by the test
# (their ctime is then older than its start minus the margin).
LATER = 10 * CTIME_MARGIN_NS


def _tree(ws: Path) -> None:
    (ws / ".git" / "hooks").mkdir(parents=True)
    (ws / "src" / "pkg").mkdir(parents=True)
    (ws / "src" / "pkg" / "mod.py").write_text("")
    (ws / "vendor" / "lib" / ".git").mkdir(parents=True)
    (ws / "docs").mkdir()
    (ws / ".keyless" / "quarantine" / "git-old").mkdir(parents=True)


def _changed(directory: Path, ctime_ns: int) -> None:
    """Make sure ``directory``'s ctime moved past ``ctime_ns`` (a coarse clock may not have yet)."""
    probe = directory / ".probe"
    while os.lstat(directory).st_ctime_ns == ctime_ns:
        probe.touch()
        probe.unlink()


def _names(ws: Path, entries: object) -> set[str]:
    assert isinstance(entries, dict)
    return {p.relative_to(ws).as_posix() for p in entries}


def test_every_git_entry_is_found_but_not_inside_git_dirs_or_the_quarantine(
    workspace: Path,
) -> None:
    _tree(workspace)
    (workspace / "docs" / ".GIT").write_text("gitdir: ../.git\n")
    scan = scan_git_entries(workspace)
    assert _names(workspace, dict(scan.entries)) == {".git", "vendor/lib/.git", "docs/.GIT"}
    assert scan.listed == 6  # ws, src, src/pkg, vendor, vendor/lib, docs


def test_unchanged_directories_are_not_read_again(workspace: Path) -> None:
    _tree(workspace)
    first = scan_git_entries(workspace, now_ns=time.time_ns() + LATER)
    again = scan_git_entries(workspace, first)
    assert again.listed == 0
    assert dict(again.entries) == dict(first.entries)


def test_recently_changed_directories_are_read_again(workspace: Path) -> None:
    _tree(workspace)
    first = scan_git_entries(workspace)  # every directory changed just now
    again = scan_git_entries(workspace, first)
    assert again.listed == first.listed


def test_a_git_made_in_a_trusted_directory_is_found_even_with_its_mtime_put_back(
    workspace: Path,
) -> None:
    _tree(workspace)
    pkg = workspace / "src" / "pkg"
    before = os.lstat(pkg)
    first = scan_git_entries(workspace, now_ns=time.time_ns() + LATER)
    (pkg / ".git").mkdir()
    _changed(pkg, before.st_ctime_ns)
    os.utime(pkg, ns=(before.st_atime_ns, before.st_mtime_ns))  # `touch -d` cannot set ctime
    again = scan_git_entries(workspace, first)
    assert "src/pkg/.git" in _names(workspace, dict(again.entries))
    assert again.listed == 1


def test_a_directory_swapped_for_another_is_read_again(workspace: Path) -> None:
    _tree(workspace)
    (workspace / "src" / "other" / ".git").mkdir(parents=True)
    first = scan_git_entries(workspace, now_ns=time.time_ns() + LATER)
    src = workspace / "src"
    ctime = os.lstat(src).st_ctime_ns
    os.rename(src / "pkg", src / "tmp")
    os.rename(src / "other", src / "pkg")
    os.rename(src / "tmp", src / "other")
    _changed(src, ctime)
    again = scan_git_entries(workspace, first)
    assert _names(workspace, dict(again.entries)) == {
        ".git",
        "vendor/lib/.git",
        "src/pkg/.git",
    }


def test_a_scan_of_another_workspace_is_not_used(workspace: Path, tmp_path: Path) -> None:
    _tree(workspace)
    other = tmp_path / "other"
    other.mkdir()
    first = scan_git_entries(other, now_ns=time.time_ns() + LATER)
    again = scan_git_entries(workspace, first)
    assert again.listed > 0 and len(again.entries) == 2
