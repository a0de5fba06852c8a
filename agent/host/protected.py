"""Workspace paths that make the user's own tools run code on the host.

Two lists, both data, so the sandbox, the file tools, the permission prompt
and docs/DESIGN.md agree on one set:

- :data:`GIT_DIR_ENTRIES`: entries inside a git directory (``.git`` at any
  depth, and what a ``.git`` file points to) that make git run code or change
  where it reads config, hooks or objects from. No tool may read or write
  them, and the shell sandbox binds them read-only *whether or not they
  exist yet*.
- :data:`HOST_CODE_FILES`: ordinary workspace files that a tool the user runs
  anyway (git, direnv, an editor opening the folder) executes. Writing them is
  allowed, but the permission prompt says "runs code on your machine".

Names are compared after :func:`normalise_name` (Unicode NFC, case folded,
characters that HFS+ ignores removed, trailing dots and spaces dropped), so
``.GIT/Config`` or ``.g\u200cit/config`` is caught as ``.git/config``.

:func:`scan_git_entries` finds every ``.git`` in a workspace for the shell
sandbox's git guard, listing again only the directories that changed since
the previous scan.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

#: Entries of a git directory that run code or redirect git, with why.
#: A tuple key is a path of several components below the git directory.
GIT_DIR_ENTRIES: Mapping[tuple[str, ...], str] = {
    ("config",): "git config (core.fsmonitor, core.hooksPath, aliases, filters run commands)",
    ("config.worktree",): "per-worktree git config (same power as config)",
    ("hooks",): "git hooks run on commit, checkout, merge",
    ("info",): "info/attributes selects filter and diff drivers; info/exclude, sparse-checkout",
    ("commondir",): "moves where git reads config and hooks from",
    ("gitdir",): "points a worktree at its git directory",
    ("modules",): "git directories of submodules (their config and hooks)",
    ("worktrees",): "git directories of linked worktrees (their config, gitdir, commondir)",
    ("branches",): "legacy remote definitions (fetch URLs)",
    ("remotes",): "legacy remote definitions (fetch URLs)",
    ("objects", "info", "alternates"): "makes git read objects from another directory",
    ("objects", "info", "http-alternates"): "makes git fetch objects from other URLs",
}

#: Names a git directory goes by: ``.git`` and its 8.3 short name on NTFS.
GIT_DIR_NAMES = frozenset({".git", "git~1"})

#: Workspace files the user's routine tools execute, as case-insensitive
#: globs on the path (``*`` spans directories), matched at any depth (a
#: nested project is opened too), with why.
#: Files the user runs on purpose (Makefile, package.json scripts, setup.py)
#: are not listed: running them is the user's own act, and marking them would
#: make the warning noise.
HOST_CODE_FILES: Mapping[str, str] = {
    ".envrc": "direnv runs it when you enter the directory",
    ".mise.toml": "mise runs its hooks and tasks when you enter the directory",
    "mise.toml": "mise runs its hooks and tasks when you enter the directory",
    ".vscode/*": "VS Code runs tasks and uses interpreters and shells named there",
    ".idea/*": "JetBrains IDEs run configurations and tools named there",
    ".gitattributes": "selects git filter and diff drivers (run by git status, diff, checkout)",
    ".gitmodules": "submodule URLs and paths git fetches on update",
    ".git": "a .git file or directory decides which git config and hooks run",
    ".git/*": "git's own directory: config and hooks run on your next git command",
    ".husky/*": "husky git hooks run on commit",
    ".githooks/*": "a common core.hooksPath: git hooks run on commit",
    ".pre-commit-config.yaml": "pre-commit runs the hooks it names on commit",
    ".npmrc": "npm reads shells and programs to run from it",
}

# Code points HFS+ ignores in names (git refuses ".g\u200cit" for that reason).
_IGNORABLE = dict.fromkeys(
    [
        *range(0x200C, 0x2010),
        *range(0x202A, 0x202F),
        *range(0x206A, 0x2070),
        0xFEFF,
    ]
)


def normalise_name(name: str) -> str:
    """The form a path component is compared in (see the module docstring)."""
    text = unicodedata.normalize("NFC", name).translate(_IGNORABLE).casefold()
    stripped = text.rstrip(". ")
    # "." and ".." stay themselves; ".git." and ".git " (Windows) become ".git".
    return stripped if stripped else text


def git_dir_entry(parts: tuple[str, ...]) -> str | None:
    """Name the dangerous git-directory entry a relative path lies in, or ``None``.

    Any component named ``.git`` (at any depth) starts a git directory; the
    path is dangerous when what follows is one of :data:`GIT_DIR_ENTRIES`.

    Args:
        parts: The components of a workspace-relative path.

    Returns:
        The entry as ``.git/...`` (with the path up to it), or None.
    """
    names = [normalise_name(p) for p in parts]
    for index, name in enumerate(names):
        if name not in GIT_DIR_NAMES:
            continue
        rest = tuple(names[index + 1 :])
        for entry in GIT_DIR_ENTRIES:
            if rest[: len(entry)] == entry:
                return "/".join([*parts[:index], ".git", *entry])
    return None


def host_code_reasons(relative: PurePosixPath | str) -> list[str]:
    """Why writing the workspace file ``relative`` would run code on the host.

    Returns:
        One line per matching entry of :data:`HOST_CODE_FILES` ("PATH: why"),
        empty when the file is ordinary.
    """
    parts = [normalise_name(p) for p in PurePosixPath(relative).parts if p not in ("/", ".")]
    suffixes = ["/".join(parts[start:]) for start in range(len(parts))]
    reasons: list[str] = []
    for pattern, why in HOST_CODE_FILES.items():
        if why not in reasons and any(fnmatch.fnmatchcase(s, pattern) for s in suffixes):
            reasons.append(why)
    return [f"{PurePosixPath(relative).as_posix()}: {why}" for why in reasons]


def command_host_code_reasons(command: str) -> list[str]:
    """Name the host-code files a shell command line mentions (a hint, not a proof).

    A command can write any file, so this only catches the obvious cases
    (``echo ... > .envrc``); the sandbox still protects the git directory.
    """
    words = {w.strip("'\"`;&|<>(){}") for w in command.replace("=", " ").split()}
    reasons: list[str] = []
    for word in sorted(w for w in words if w):
        for line in host_code_reasons(word):
            if line not in reasons:
                reasons.append(line)
    return reasons


def request_host_code_reasons(tool: str, arguments: Mapping[str, Any]) -> list[str]:
    """The "runs code on your machine" lines for one tool call (empty for most).

    ``write_file`` and ``edit_file`` are judged by their path, ``shell`` by
    the file names its command mentions.
    """
    if tool in ("write_file", "edit_file"):
        path = arguments.get("path")
        return host_code_reasons(path) if isinstance(path, str) and path.strip() else []
    if tool == "shell":
        command = arguments.get("command")
        return command_host_code_reasons(command) if isinstance(command, str) else []
    return []


#: Device, inode and type of a path itself (not followed): what "the same entry" means.
Identity = tuple[int, int, int]

#: A directory is trusted unchanged only when its ctime is older than the
#: previous scan's start by this much: a change during that scan could
#: otherwise leave the same (coarse-clock) ctime.
CTIME_MARGIN_NS = 2_000_000_000


@dataclass(frozen=True)
class _Listing:
    """What a scan needs of one directory, and the stat that says it is still true."""

    dev: int
    ino: int
    ctime_ns: int
    subdirs: tuple[str, ...]
    git: tuple[tuple[str, Identity], ...]


@dataclass(frozen=True)
class GitScan:
    """Every entry named ``.git`` in a workspace, and the listings it was found in.

    Attributes:
        ws: The workspace scanned.
        started_ns: The wall clock when the scan began.
        entries: Each ``.git`` (directory, file or symlink) and its identity.
        listed: How many directories this scan read (the others were unchanged).
    """

    ws: Path
    started_ns: int
    entries: Mapping[Path, Identity]
    listed: int
    _dirs: Mapping[Path, _Listing] = field(repr=False)


def scan_git_entries(
    ws: Path, previous: GitScan | None = None, *, now_ns: int | None = None
) -> GitScan:
    """Find every entry named ``.git`` in ``ws`` (at any depth), like a walk of the whole tree.

    Git directories are not descended into, nor is ``ws/.keyless`` (the
    quarantine), nor symlinks. With ``previous`` (a scan of the same
    workspace), a directory whose inode and ctime are what that scan saw is
    not read again: any entry created, removed or renamed in it would have
    set its ctime to the time of the change, which a command cannot set back
    (``touch`` sets mtime; ctime follows the clock). Only directories whose
    ctime was :data:`CTIME_MARGIN_NS` older than the previous scan's start are
    trusted so, so a change in the same clock tick as that scan is read.

    Args:
        ws: The canonical workspace.
        previous: An earlier scan of ``ws``, or None to read every directory.
        now_ns: The wall clock now (tests); default :func:`time.time_ns`.
    """
    started = time.time_ns() if now_ns is None else now_ns
    usable = previous if previous is not None and previous.ws == ws else None
    trusted_before = usable.started_ns - CTIME_MARGIN_NS if usable is not None else 0
    dirs: dict[Path, _Listing] = {}
    entries: dict[Path, Identity] = {}
    listed = 0
    pending = [ws]
    while pending:
        here = pending.pop()
        try:
            st = os.lstat(here)  # before reading: a change after this shows next time
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        old = usable._dirs.get(here) if usable is not None else None
        if (
            old is not None
            and (old.dev, old.ino, old.ctime_ns) == (st.st_dev, st.st_ino, st.st_ctime_ns)
            and old.ctime_ns < trusted_before
        ):
            listing = old
        else:
            found = _list_directory(here, st, top=here == ws)
            if found is None:
                continue  # unreadable (as os.walk skips it); tried again next time
            listing = found
            listed += 1
        dirs[here] = listing
        entries.update((here / name, ident) for name, ident in listing.git)
        pending.extend(here / name for name in listing.subdirs)
    return GitScan(ws=ws, started_ns=started, entries=entries, listed=listed, _dirs=dirs)


def _list_directory(here: Path, st: os.stat_result, *, top: bool) -> _Listing | None:
    subdirs: list[str] = []
    git: list[tuple[str, Identity]] = []
    try:
        with os.scandir(here) as it:
            for entry in it:
                if normalise_name(entry.name) in GIT_DIR_NAMES:
                    try:
                        est = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    git.append((entry.name, (est.st_dev, est.st_ino, stat.S_IFMT(est.st_mode))))
                elif entry.is_dir(follow_symlinks=False) and not (top and entry.name == ".keyless"):
                    subdirs.append(entry.name)
    except OSError:
        return None
    return _Listing(st.st_dev, st.st_ino, st.st_ctime_ns, tuple(subdirs), tuple(git))
