"""Bubblewrap sandboxes: one per shell command, and one around the agent process.

Each ``shell`` command runs in its own sandbox: the workspace bound
read-write with the protected paths (every git directory's config, hooks and
the other entries of :data:`agent.host.protected.GIT_DIR_ENTRIES`, existing or
not, and ``.keyless``) bound read-only over it, the system read-only, no network, a
private ``/tmp`` and ``$HOME`` (size-limited tmpfs), a fresh PID namespace,
all capabilities dropped, and CPU-time, address-space, file-size,
open-file and process-count limits set *inside* the sandbox with
``prlimit`` (set outside, ``RLIMIT_NPROC`` would count every process of the
user; inside the new user namespace it counts only the sandbox's). A
wall-clock timer kills the whole process group; output is capped.

Root is exempt from ``RLIMIT_NPROC``. When the host runs as root, each
sandbox goes into its own ``pids`` cgroup (v2, or v1's ``pids`` hierarchy)
whose ``pids.max`` the kernel enforces for root too, and a watchdog also
counts the sandbox's processes and kills it past the limit; the watchdog
alone cannot outrun a fork bomb.

:meth:`Sandbox.agent_command` builds the bwrap command line for the agent
worker: read-only system and Python, no workspace, no data dir, no D-Bus
socket, no network, a scrubbed environment.

Why one module of about 1,000 lines: it is the OS boundary, read as a whole
in a security review; the bwrap argv, the limits, the cgroup and the
watchdog depend on each other's details, and splitting them would spread one
argument (what the command can reach) over several files.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import os
import secrets
import select
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.errors import SandboxError
from agent.host.protected import (
    GIT_DIR_ENTRIES,
    GitScan,
    scan_git_entries,
)

if TYPE_CHECKING:
    from agent.host.egress.proxy import EgressChannel, EgressProxy

#: ``$HOME`` inside every sandbox: an empty directory on the private tmpfs ``/tmp``.
SANDBOX_HOME = "/tmp/home"
#: ``PATH`` inside every sandbox (system directories only).
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
#: The few files of ``/etc`` programs need; never the whole directory.
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
    "/etc/alternatives",
    "/etc/mime.types",
)
_TOP_LEVEL_SYSTEM = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_TMPFS_BYTES = 64 * 1024 * 1024

LimitHit = Literal["wall-clock", "cpu", "processes", "output"]


class Limits(BaseModel):
    """Resource limits of one shell command."""

    model_config = ConfigDict(frozen=True)

    cpu_seconds: int = Field(default=30, gt=0, description="CPU time (RLIMIT_CPU).")
    memory_bytes: int = Field(
        default=2 * 1024**3, gt=0, description="Address space per process (RLIMIT_AS)."
    )
    max_processes: int = Field(
        default=128, gt=0, description="Processes in the sandbox (RLIMIT_NPROC)."
    )
    file_size_bytes: int = Field(
        default=256 * 1024**2, gt=0, description="Largest file a command may write (RLIMIT_FSIZE)."
    )
    open_files: int = Field(default=256, gt=0, description="Open descriptors (RLIMIT_NOFILE).")
    wall_seconds: float = Field(default=60.0, gt=0, description="Wall-clock time before the kill.")
    output_bytes: int = Field(default=32 * 1024, gt=0, description="Output kept for the model.")
    drain_bytes: int = Field(
        default=64 * 1024**2,
        gt=0,
        description="Output read (and dropped) past output_bytes before the command is killed.",
    )


class ShellResult(BaseModel):
    """What one shell command did."""

    model_config = ConfigDict(frozen=True)

    exit_code: int | None = Field(description="Exit status; 128+N when killed by signal N.")
    output: str = Field(description="Interleaved stdout and stderr, at most output_bytes.")
    output_bytes: int = Field(description="Bytes the command wrote in total.")
    truncated: bool = Field(description="Whether output was cut.")
    limit_hit: LimitHit | None = Field(description="The limit that stopped the command, if any.")
    duration_s: float
    sandboxed: bool
    notes: list[str] = Field(default_factory=list, description="What the host did afterwards.")

    def describe(self) -> str:
        """The result as the model sees it: a status line, then the output."""
        if self.limit_hit is not None:
            status = f"killed: {self.limit_hit} limit reached"
        else:
            status = f"exit status {self.exit_code}"
        text = self.output
        if self.truncated:
            dropped = self.output_bytes - len(self.output.encode("utf-8", errors="replace"))
            text += f"\n[truncated output: {max(dropped, 0)} more bytes not shown]"
        for note in self.notes:
            status += f"\n[{note}]"
        return f"{status}\n{text}" if text else status


def scrubbed_env(
    *, home: str = SANDBOX_HOME, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """An environment built from an allowlist, never the parent's other variables.

    Only locale and terminal variables are copied from the parent; ``PATH``,
    ``HOME`` and the Python variables are fixed values.

    Args:
        home: ``$HOME`` in the child.
        extra: Variables the caller adds deliberately (never secrets).

    Returns:
        The environment.
    """
    env = {
        "PATH": SANDBOX_PATH,
        "HOME": home,
        "TMPDIR": "/tmp",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONNOUSERSITE": "1",
        "PYTHONIOENCODING": "utf-8",
    }
    for name, value in os.environ.items():
        if name in ("LANG", "LANGUAGE", "TERM", "TZ") or name.startswith("LC_"):
            env[name] = value
    env.setdefault("LANG", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in _TOP_LEVEL_SYSTEM:
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for item in ETC_FILES:
        args += ["--ro-bind-try", item, item]
    return args


def _isolation_flags() -> list[str]:
    return [
        "--unshare-user-try",
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        # /dev and /dev/shm are RAM: the first read-only, the second small.
        "--size",
        str(_TMPFS_BYTES),
        "--tmpfs",
        "/dev/shm",
        "--size",
        str(_TMPFS_BYTES),
        "--tmpfs",
        "/tmp",
        "--dir",
        SANDBOX_HOME,
    ]


def _env_flags(env: Mapping[str, str]) -> list[str]:
    # Last of the mount steps: /dev goes read-only once device binds are in.
    args = ["--remount-ro", "/dev", "--clearenv"]
    for name, value in sorted(env.items()):
        args += ["--setenv", name, value]
    return args


def _hide_flags(
    hide: Sequence[Path], visible: Sequence[Path], writable: Sequence[Path] = ()
) -> list[str]:
    """Cover each hidden path that lies inside a bound one with an empty mount.

    A ``writable`` directory inside a hidden one is bound before the cover is
    made read-only (bwrap must create its mount point in the cover).
    """
    args: list[str] = []
    for hidden in hide:
        real = Path(os.path.realpath(hidden))
        if not real.exists() or not any(real == v or v in real.parents for v in visible):
            continue
        if real.is_dir():
            args += ["--tmpfs", str(real)]
            for path in writable:
                if real in path.parents:
                    args += ["--bind", str(path), str(path)]
            args += ["--remount-ro", str(real)]
        else:
            args += ["--ro-bind", "/dev/null", str(real)]
    return args


def _prlimit_prefix(limits: Limits, *, processes: bool) -> list[str]:
    prlimit = shutil.which("prlimit", path="/usr/bin:/bin") or "prlimit"
    args = [
        prlimit,
        f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 1}",
        f"--as={limits.memory_bytes}",
        f"--fsize={limits.file_size_bytes}",
        f"--nofile={limits.open_files}",
        "--core=0",
    ]
    if processes:
        args.append(f"--nproc={limits.max_processes}")
    return [*args, "--"]


def check_workspace(workspace: Path) -> Path:
    """Refuse a workspace that would expose the user's whole home or system.

    Returns:
        The canonical workspace path.

    Raises:
        SandboxError: The workspace is ``/``, the home directory or one of its
            ancestors, or not a directory.
    """
    real = Path(os.path.realpath(workspace))
    if not real.is_dir():
        raise SandboxError(f"workspace {workspace} is not a directory")
    home = Path(os.path.realpath(Path.home()))
    if real == Path("/") or real == home or real in home.parents:
        raise SandboxError(
            f"workspace {real} contains the home directory; choose a project directory"
        )
    return real


class Sandbox:
    """Launches commands inside bubblewrap.

    Args:
        bwrap: Path of the ``bwrap`` binary, or ``None`` when unavailable.
    """

    _detected: Sandbox | None = None

    def __init__(self, bwrap: str | None) -> None:
        self.bwrap = bwrap
        self._git_scans: dict[Path, GitScan] = {}
        self._git_scans_lock = threading.Lock()

    def last_git_scan(self, ws: Path) -> GitScan | None:
        """The last search for ``.git`` in the canonical workspace ``ws`` (None: none yet)."""
        with self._git_scans_lock:
            return self._git_scans.get(ws)

    def remember_git_scan(self, scan: GitScan | None) -> None:
        """Keep ``scan`` as the starting point of the next command's search in its workspace."""
        if scan is not None:
            with self._git_scans_lock:
                self._git_scans[scan.ws] = scan

    @classmethod
    def detect(cls) -> Sandbox:
        """Find a working ``bwrap`` (and ``prlimit``); the result is cached.

        A binary that exists but cannot create namespaces (user namespaces
        disabled, inside some containers) counts as unavailable.
        """
        if cls._detected is None:
            cls._detected = cls(cls._probe())
        return cls._detected

    @staticmethod
    def _probe() -> str | None:
        if not sys.platform.startswith("linux"):
            return None
        bwrap = shutil.which("bwrap")
        if bwrap is None or shutil.which("prlimit", path="/usr/bin:/bin") is None:
            return None
        argv = [bwrap, *_system_binds(), *_isolation_flags(), "--", "true"]
        try:
            done = subprocess.run(
                argv, env=scrubbed_env(), capture_output=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return bwrap if done.returncode == 0 else None

    @property
    def available(self) -> bool:
        """Whether commands can be sandboxed."""
        return self.bwrap is not None

    @staticmethod
    def scrubbed_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The allowlisted environment for a child process (see :func:`scrubbed_env`)."""
        return scrubbed_env(extra=extra)

    # -- shell --------------------------------------------------------------------------------

    def shell_argv(
        self,
        command: str,
        workspace: Path,
        limits: Limits,
        *,
        hide: Sequence[Path] = (),
        guard: GitGuard | None = None,
        egress: EgressChannel | None = None,
        forwarder: Path | None = None,
    ) -> list[str]:
        """The bwrap command line that runs ``command`` with ``/bin/sh -c``.

        Every git directory in the workspace (``.git`` at any depth, and one
        a ``.git`` file or symlink points to inside it) is pinned, and each of
        its entries in :data:`agent.host.protected.GIT_DIR_ENTRIES` is bound
        read-only *whether or not it exists*: a missing one gets an empty
        placeholder first (see :class:`GitGuard`), otherwise a command could
        create it. ``.keyless`` is created if missing and bound read-only.

        Args:
            command: The command line.
            workspace: The workspace, bound read-write.
            limits: Resource limits.
            hide: Paths covered with an empty mount.
            guard: The guard that made the placeholders and removes them after
                the run (:meth:`run_shell` passes one); without it one is made
                here and its placeholders stay.
            egress: The command's channel to the egress proxy: its socket, the
                CA bundle and the forwarder (``forwarder``) are bound in, the
                proxy variables set, and the forwarder starts the command.
            forwarder: The forwarder script (with ``egress``).

        Raises:
            SandboxError: No bwrap, or an unsuitable workspace.
        """
        if self.bwrap is None:
            raise SandboxError("bubblewrap is not available")
        ws = check_workspace(workspace)
        guard = guard if guard is not None else GitGuard(ws)
        args = [self.bwrap, *_system_binds(), *_isolation_flags()]
        args += ["--bind", str(ws), str(ws)]
        args += guard.bind_flags()
        keyless = ws / ".keyless"
        if not os.path.lexists(keyless):
            keyless.mkdir()
        if os.path.islink(keyless):
            # A symlink here could point anywhere; cover it with an empty file.
            args += ["--ro-bind", "/dev/null", str(keyless)]
        else:
            args += ["--ro-bind", str(keyless), str(keyless)]
        args += _hide_flags(hide, [ws])
        # Egress proxy: the only way out of the network namespace.
        start: list[str] = []
        env = scrubbed_env()
        if egress is not None and forwarder is not None:
            args += egress_binds(egress, forwarder)
            env.update(egress.env)
            start = egress_prefix()
        args += _env_flags(env)
        args += ["--chdir", str(ws), "--"]
        args += _prlimit_prefix(limits, processes=True)
        args += [*start, "/bin/sh", "-c", command]
        return args

    def run_shell(
        self,
        command: str,
        workspace: Path,
        limits: Limits,
        *,
        hide: Sequence[Path] = (),
        egress: EgressProxy | None = None,
    ) -> ShellResult:
        """Run ``command`` in a fresh sandbox and wait for it under ``limits``.

        Afterwards anything git would run code from that the command made
        anyway (a new ``.git`` anywhere, a git-directory entry that appeared)
        is moved to ``.keyless/quarantine`` and the result says so.

        Args:
            command: The command line.
            workspace: The workspace.
            limits: Resource limits.
            hide: Paths covered with an empty mount.
            egress: The session's egress proxy: the command reaches the
                network only through it. None: no network at all.

        Raises:
            SandboxError: bwrap is missing or could not start.
        """
        ws = check_workspace(workspace)
        guard = GitGuard(ws, previous=self.last_git_scan(ws))
        try:
            with contextlib.ExitStack() as stack:
                channel = None if egress is None else stack.enter_context(egress.channel(command))
                argv = self.shell_argv(
                    command, ws, limits, hide=hide, guard=guard, egress=channel,
                    forwarder=None if egress is None else egress.forwarder,
                )
                result = _supervise(argv, limits, env=scrubbed_env(), cwd=None, sandboxed=True)
        finally:
            notes = guard.finish()
            self.remember_git_scan(guard.scan_after)
        if notes:
            result = result.model_copy(update={"notes": [*result.notes, *notes]})
        return result

    # -- agent process --------------------------------------------------------------------------

    def agent_command(
        self,
        argv: Sequence[str],
        *,
        workspace: Path | None = None,
        extra_ro_binds: Sequence[Path] = (),
        hide: Sequence[Path] = (),
        extra_rw_binds: Sequence[Path] = (),
    ) -> list[str]:
        """The bwrap command line that starts the agent worker ``argv``.

        Visible: the system read-only, the Python installation
        (``sys.base_prefix``), the virtual environment (``sys.prefix``), the
        directory holding the Keyless packages, and ``extra_ro_binds`` (a
        model file, a scripted-model file), all read-only. Not visible: the
        workspace (the agent reaches files only through host-run tools; the
        ``workspace`` argument is accepted and deliberately not bound), the
        data dir and vault, ``$HOME``, ``/run`` (D-Bus, ``XDG_RUNTIME_DIR``).

        Args:
            argv: The worker's command line (``[sys.executable, "-m", "agent.worker", ...]``).
            workspace: Ignored on purpose; see above.
            extra_ro_binds: More files or directories the worker needs, read-only.
            hide: Paths covered even when inside a bound directory (data dir).
            extra_rw_binds: Directories the worker may write (its session's
                saved KV state), bound last so a hidden parent cannot cover them.

        Returns:
            The full command line.

        Raises:
            SandboxError: No bwrap, or an extra bind that is ``/`` or the home directory.
        """
        del workspace
        args, visible = self._python_sandbox(extra_ro_binds, who="the agent process")
        for device in ("/dev/dri", "/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm", "/dev/kfd"):
            args += ["--dev-bind-try", device, device]
        for path in visible:
            args += ["--ro-bind", str(path), str(path)]
        writable = [Path(os.path.realpath(p)) for p in extra_rw_binds]
        home = Path(os.path.realpath(Path.home()))
        for path in writable:
            if path == Path("/") or path == home or path in home.parents or not path.is_dir():
                raise SandboxError(f"refusing to let the agent process write {path}")
        covered = _hide_flags(hide, visible, writable)
        args += covered
        for path in writable:
            if str(path) not in covered:
                args += ["--bind", str(path), str(path)]
        args += _env_flags(scrubbed_env())
        args += ["--chdir", "/", "--", *argv]
        return args

    def server_command(
        self,
        argv: Sequence[str],
        *,
        workspace: Path,
        writable: bool = False,
        extra_ro_binds: Sequence[Path] = (),
        hide: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
        egress: EgressChannel | None = None,
        forwarder: Path | None = None,
    ) -> list[str]:
        """The bwrap command line of a long-lived tool server (an MCP stdio server).

        As :meth:`agent_command` (system, Python and Keyless read-only, no
        network, no home, no ``/run``, dies with the host), plus the workspace,
        bound read-only unless ``writable``, as the working directory. The data
        and config dirs in ``hide`` are covered even inside a bound directory.

        Args:
            argv: The server's command line.
            workspace: The errand's workspace.
            writable: Bind the workspace read-write (the user chose so).
            extra_ro_binds: More files or directories the server needs, read-only.
            hide: Paths covered even when inside a bound directory.
            env: Variables added to the scrubbed environment (never secrets;
                a ``cap_`` handle is fine).
            egress: The server's channel to the egress proxy, as for a shell
                command (:meth:`shell_argv`): the socket, CA bundle and
                forwarder bound in, the proxy variables set, the forwarder
                started first. None: no network at all.
            forwarder: The forwarder script (with ``egress``).

        Returns:
            The full command line.

        Raises:
            SandboxError: No bwrap, or an extra bind that is ``/`` or the home directory.
        """
        ws = Path(os.path.realpath(workspace))
        args, visible = self._python_sandbox(extra_ro_binds, who="a tool server")
        for path in visible:
            args += ["--ro-bind", str(path), str(path)]
        args += ["--bind" if writable else "--ro-bind", str(ws), str(ws)]
        args += _hide_flags(hide, [*visible, ws])
        variables = scrubbed_env(extra=env)
        start: list[str] = []
        if egress is not None and forwarder is not None:
            args += egress_binds(egress, forwarder)
            variables.update(egress.env)
            start = egress_prefix()
        args += _env_flags(variables)
        args += ["--chdir", str(ws), "--", *start, *argv]
        return args

    def _python_sandbox(
        self, extra_ro_binds: Sequence[Path], *, who: str
    ) -> tuple[list[str], list[Path]]:
        """The isolation flags and the paths a Python process needs to see, read-only."""
        if self.bwrap is None:
            raise SandboxError("bubblewrap is not available")
        home = Path(os.path.realpath(Path.home()))
        package_root = Path(__file__).resolve().parents[2]  # the directory holding agent/
        visible: list[Path] = []
        roots = [Path(sys.base_prefix), Path(sys.prefix), Path(sys.exec_prefix), package_root]
        if getattr(sys, "frozen", False):
            # A PyInstaller bundle: the executable sits beside its _internal dir.
            roots.append(Path(sys.executable).parent)
        for path in roots:
            real = Path(os.path.realpath(path))
            if real not in visible:
                visible.append(real)
        for extra in extra_ro_binds:
            real = Path(os.path.realpath(extra))
            if real == Path("/") or real == home or real in home.parents:
                raise SandboxError(f"refusing to expose {real} to {who}")
            if not real.exists():
                raise SandboxError(f"{extra} does not exist")
            visible.append(real)
        args = [self.bwrap, *_system_binds(), *_isolation_flags()]
        args += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
        return args, visible


def _identity(path: Path) -> tuple[int, int, int] | None:
    """Device, inode and type of ``path`` itself (not followed); None if absent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode)


#: Git-directory entries that are directories (the rest are files).
_GIT_DIR_SUBDIRS = frozenset({"hooks", "info", "modules", "worktrees", "branches", "remotes"})
#: Git config files whose ``core.hooksPath`` is honoured (besides each repository's own).
_GLOBAL_GIT_CONFIGS = ("~/.gitconfig", "~/.config/git/config")


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _hooks_paths(config_files: Sequence[Path]) -> list[str]:
    """The ``core.hooksPath`` values set in ``config_files`` (a plain reading of the format)."""
    values: list[str] = []
    for config in config_files:
        try:
            text = config.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        section = ""
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].split(";", 1)[0].strip()
            if line.startswith("["):
                section = line.strip("[]").strip().casefold()
                line = line[line.find("]") + 1 :].strip()
            key, sep, value = line.partition("=")
            if sep and section == "core" and key.strip().casefold() == "hookspath":
                values.append(value.strip().strip('"'))
    return values


class GitGuard:
    """Keeps one sandboxed command from planting code that git runs on the host.

    Made before the command: it finds every ``.git`` in the workspace (at any
    depth) and the git directory each names inside the workspace (a ``.git``
    file's ``gitdir:``, a ``.git`` symlink's target). For each git directory
    it lists binds that pin it (a mount point cannot be renamed or removed)
    and bind every entry of :data:`agent.host.protected.GIT_DIR_ENTRIES`
    read-only, with the directories on the way pinned too; an entry that does
    not exist yet gets an empty placeholder first, because only an existing
    path can be bound. ``core.hooksPath`` directories inside the workspace
    are bound read-only the same way.

    :meth:`finish`, after the command, moves to ``.keyless/quarantine``
    every ``.git`` the command created and every protected entry that
    appeared or changed all the same, and removes the placeholders that are
    still empty, so the workspace is left as it was found.

    Both searches for ``.git`` read only the directories that changed since
    the search before (:func:`agent.host.protected.scan_git_entries`): the
    search after the command starts from the one before it, and the one
    before starts from ``previous`` (the last command's search after).

    Args:
        ws: The canonical workspace.
        previous: The last search of ``ws`` (:attr:`scan_after` of the guard
            of the command before), or None to read every directory.
    """

    def __init__(self, ws: Path, *, previous: GitScan | None = None) -> None:
        self.ws = ws
        self.scan_before = scan_git_entries(ws, previous)
        #: The search after the command (set by :meth:`finish`).
        self.scan_after: GitScan | None = None
        self._before = self.scan_before.entries
        self._created: list[tuple[Path, tuple[int, int, int]]] = []
        self._binds: list[str] = []
        self._guarded: dict[Path, tuple[int, int, int] | None] = {}
        self._pinned: set[Path] = set()
        git_dirs: list[Path] = []
        for entry in self._before:
            if os.path.islink(entry):
                # Cannot be bound; a replacement is caught by finish().
                pass
            elif entry.is_file():
                self._binds += ["--ro-bind", str(entry), str(entry)]
            else:
                self._binds += ["--bind", str(entry), str(entry)]
            target = self._git_dir_of(entry)
            if target is not None and target not in git_dirs:
                git_dirs.append(target)
        for git_dir in git_dirs:
            if os.path.islink(git_dir) or git_dir != Path(os.path.realpath(git_dir)):
                continue
            if git_dir not in self._before:
                self._binds += ["--bind", str(git_dir), str(git_dir)]
            for key in GIT_DIR_ENTRIES:
                self._protect(git_dir, key)
            self._protect_hooks_path(git_dir)

    def _git_dir_of(self, entry: Path) -> Path | None:
        """The git directory ``entry`` is or names, when it lies inside the workspace."""
        if entry.is_symlink() or entry.is_file():
            if entry.is_symlink():
                target = Path(os.path.realpath(entry))
            else:
                try:
                    first = entry.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
                except OSError:
                    return None
                if not first or not first[0].startswith("gitdir:"):
                    return None
                named = Path(first[0][len("gitdir:") :].strip())
                target = Path(os.path.realpath(entry.parent / named))
            return target if _inside(target, self.ws) and target.is_dir() else None
        return entry if entry.is_dir() else None

    def _protect(self, git_dir: Path, entry: tuple[str, ...]) -> None:
        current = git_dir
        for part in entry[:-1]:
            current = current / part
            if os.path.islink(current) or not self._placeholder(current, directory=True):
                return
            if current not in self._pinned:
                # Once only: binding it again would cover the read-only binds inside.
                self._pinned.add(current)
                self._binds += ["--bind", str(current), str(current)]
        self._read_only(current / entry[-1], directory=entry[-1] in _GIT_DIR_SUBDIRS)

    def _protect_hooks_path(self, git_dir: Path) -> None:
        configs = [git_dir / "config", git_dir / "config.worktree"]
        configs += [Path(os.path.expanduser(c)) for c in _GLOBAL_GIT_CONFIGS]
        worktree = git_dir.parent
        for value in _hooks_paths(configs):
            if not value or value.startswith("~"):
                continue  # the home directory is not in the sandbox
            hooks = Path(os.path.normpath(worktree / value))
            if _inside(hooks, self.ws) and hooks != self.ws:
                parent = hooks.parent
                if self._placeholder(parent, directory=True, parents=True):
                    self._read_only(hooks, directory=True)

    def _read_only(self, path: Path, *, directory: bool) -> None:
        self._guarded[path] = _identity(path)
        if os.path.islink(path):
            # A symlink here could point anywhere; cover it with an empty file.
            self._binds += ["--ro-bind", "/dev/null", str(path)]
        elif self._placeholder(path, directory=directory):
            self._binds += ["--ro-bind", str(path), str(path)]

    def _placeholder(self, path: Path, *, directory: bool, parents: bool = False) -> bool:
        """Make ``path`` exist (remembering what was made); False where it cannot be."""
        if os.path.lexists(path):
            return True
        if parents and not self._placeholder(path.parent, directory=True, parents=True):
            return False
        try:
            if directory:
                path.mkdir()
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
        except OSError:
            # Not writable by us, so not by the command either; finish() still checks.
            return False
        ident = _identity(path)
        if ident is not None:
            self._created.append((path, ident))
        return True

    def bind_flags(self) -> list[str]:
        """The bwrap arguments that pin and protect the git directories."""
        return list(self._binds)

    def finish(self) -> list[str]:
        """Quarantine what the command planted, remove the placeholders; return notes."""
        notes: list[str] = []
        known = set(self._before.values())
        self.scan_after = scan_git_entries(self.ws, self.scan_before)
        for path, ident in self.scan_after.entries.items():
            if ident not in known:
                shown = path.relative_to(self.ws).as_posix()
                moved = self._quarantine(path, "git")
                notes.append(f"{shown} created by the command was moved to {moved}")
        placeholders = {path: ident for path, ident in self._created}
        for path, before in self._guarded.items():
            now = _identity(path)
            if now is None or now == before or placeholders.get(path) == now:
                continue
            shown = path.relative_to(self.ws).as_posix()
            moved = self._quarantine(path, path.name)
            notes.append(f"{shown} written by the command was moved to {moved}")
        for path, ident in reversed(self._created):
            if _identity(path) != ident:
                continue
            with contextlib.suppress(OSError):
                if ident[2] == stat.S_IFDIR:
                    path.rmdir()  # only when still empty
                elif os.lstat(path).st_size == 0:
                    path.unlink()
        return notes

    def _quarantine(self, path: Path, label: str) -> str:
        quarantine = self.ws / ".keyless" / "quarantine"
        if os.path.islink(self.ws / ".keyless"):
            # Never follow a symlink out of the workspace: drop the planted thing.
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            return "nowhere (removed: .keyless is a symlink)"
        quarantine.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
        moved = quarantine / f"{label.lstrip('.')}-{stamp}"
        os.replace(path, moved)
        return moved.relative_to(self.ws).as_posix()


def egress_binds(channel: EgressChannel, forwarder: Path) -> list[str]:
    """Bwrap flags binding the proxy socket, the CA bundle, the forwarder and the askpass shim."""
    from agent.host.egress.proxy import (
        SANDBOX_ASKPASS,
        SANDBOX_CA_BUNDLE,
        SANDBOX_FORWARDER,
        SANDBOX_SOCKET,
    )

    return [
        "--bind", str(channel.socket_path), SANDBOX_SOCKET,
        "--ro-bind", str(channel.ca_bundle), SANDBOX_CA_BUNDLE,
        "--ro-bind", str(forwarder), SANDBOX_FORWARDER,
        "--ro-bind", str(forwarder.with_name("askpass")), SANDBOX_ASKPASS,
    ]  # fmt: skip


def egress_prefix() -> list[str]:
    """The forwarder, started first in the sandbox; it runs the command after it."""
    from agent.host.egress.proxy import SANDBOX_FORWARDER, SANDBOX_PROXY_PORT, SANDBOX_SOCKET

    return [FORWARDER_PYTHON, "-I", "-S", SANDBOX_FORWARDER, str(SANDBOX_PROXY_PORT),
            SANDBOX_SOCKET, "--"]  # fmt: skip


#: The system Python the forwarder runs with (standard library only; /usr is bound).
FORWARDER_PYTHON = "/usr/bin/python3"


def run_unsandboxed(command: str, workspace: Path, limits: Limits) -> ShellResult:
    """Run ``command`` without OS isolation, after the user's explicit approval.

    Still a scrubbed environment, resource limits (but no process count:
    outside a user namespace it would count all the user's processes), the
    wall-clock timeout and the output cap.
    """
    argv = [*_prlimit_prefix(limits, processes=False), "/bin/sh", "-c", command]
    if shutil.which("prlimit", path="/usr/bin:/bin") is None:
        argv = ["/bin/sh", "-c", command]
    cwd = check_workspace(workspace)
    # Not SANDBOX_HOME: outside a sandbox /tmp is shared with every local user,
    # who could plant dotfiles there (a .gitconfig with core.fsmonitor).
    with tempfile.TemporaryDirectory(prefix="keyless-home-", ignore_cleanup_errors=True) as home:
        return _supervise(argv, limits, env=scrubbed_env(home=home), cwd=cwd, sandboxed=False)


def _last_pid() -> int:
    try:
        with open("/proc/sys/kernel/ns_last_pid", "rb") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return -1


def _process_tree_size(root: int, *, full_scan: bool) -> int:
    """Count ``root`` and its descendants by scanning ``/proc`` (no CONFIG_PROC_CHILDREN needed).

    Descendants were created after ``root``, so only larger pids are read,
    unless ``full_scan`` (the pid counter wrapped around since ``root`` started).
    """
    parents: dict[int, int] = {}
    try:
        pids = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return 0
    if not full_scan:
        pids = [pid for pid in pids if pid >= root]
    for pid_number in pids:
        entry = str(pid_number)
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces.
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            parents[int(entry)] = int(fields[1])
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    count, stack = 0, [root]
    while stack:
        pid = stack.pop()
        count += 1
        stack.extend(children.get(pid, ()))
    return count


_STOP_WHEN: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "keyless_sandbox_stop_when", default=None
)


@contextlib.contextmanager
def stop_when(event: threading.Event) -> Iterator[None]:
    """Kill a command this thread runs inside the block as soon as ``event`` is set.

    The command's whole process group is killed and reaped, and the run
    raises :class:`SandboxError`. The host uses it to stop a command whose
    agent process died while it ran.
    """
    token = _STOP_WHEN.set(event)
    try:
        yield
    finally:
        _STOP_WHEN.reset(token)


class _Supervisor:
    """Runs one command to completion under its limits, on the calling thread.

    One ``select`` loop watches the output pipe, the process (a pidfd where the
    kernel has them), the wall clock and, for root, the process count; no
    helper threads, so a command costs little beyond the spawn itself.
    """

    def __init__(self, proc: subprocess.Popen[bytes], limits: Limits, *, count: bool) -> None:
        self.proc = proc
        self.limits = limits
        self.count = count
        self.hit: LimitHit | None = None
        self.kept = bytearray()
        self.total = 0
        self.exited = False
        self.status = 0
        self.cpu = 0.0
        self.stop = _STOP_WHEN.get()

    def kill(self, reason: LimitHit) -> None:
        if self.hit is None:
            self.hit = reason
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def _reap(self, *, block: bool) -> None:
        if self.exited:
            return
        pid, status, usage = os.wait4(self.proc.pid, 0 if block else os.WNOHANG)
        if pid == self.proc.pid:
            self.exited = True
            self.status = status
            self.cpu = usage.ru_utime + usage.ru_stime

    def _read(self, fd: int) -> bool:
        """Read what is there; False at end of output."""
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self.total += len(chunk)
        room = self.limits.output_bytes - len(self.kept)
        if room > 0:
            self.kept.extend(chunk[:room])
        if self.total > self.limits.output_bytes + self.limits.drain_bytes:
            self.kill("output")
        return True

    def run(self, start: float) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        os.set_blocking(fd, False)
        pidfd = -1
        with contextlib.suppress(AttributeError, OSError):
            pidfd = os.pidfd_open(self.proc.pid)
        deadline = start + self.limits.wall_seconds
        interval = 0.005
        next_count = start + interval
        wrapped = False
        open_pipe = True
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(fd, selectors.EVENT_READ, "out")
                if pidfd >= 0:
                    sel.register(pidfd, selectors.EVENT_READ, "exit")
                while not self.exited:
                    now = time.monotonic()
                    if now >= deadline:
                        self.kill("wall-clock")
                        break
                    timeout = deadline - now
                    if self.count:
                        timeout = min(timeout, max(next_count - now, 0.0))
                    if pidfd < 0:
                        timeout = min(timeout, 0.01)
                    if self.stop is not None:
                        if self.stop.is_set():
                            # The caller's cleanup kills the process group and reaps it.
                            raise SandboxError("the command was stopped: its errand ended")
                        timeout = min(timeout, 0.05)
                    for key, _ in sel.select(timeout):
                        if key.data == "out" and not self._read(fd):
                            sel.unregister(fd)
                            open_pipe = False
                    self._reap(block=False)
                    if self.hit is not None:
                        break
                    if self.count and time.monotonic() >= next_count:
                        # Polls are far apart compared with a full wrap of the
                        # pid counter, so a wrap is always seen; then scan all.
                        wrapped = wrapped or _last_pid() < self.proc.pid
                        size = _process_tree_size(self.proc.pid, full_scan=wrapped)
                        if size > self.limits.max_processes + 2:
                            self.kill("processes")
                            break
                        interval = min(interval * 2, 0.05)
                        next_count = time.monotonic() + interval
            self._reap(block=True)
            # Output still in the pipe after the exit; leftovers of an
            # unsandboxed command that still hold the pipe are killed.
            if open_pipe:
                end = time.monotonic() + 1.0
                while time.monotonic() < end and self.hit != "output":
                    ready, _, _ = select.select([fd], [], [], max(end - time.monotonic(), 0))
                    if not ready or not self._read(fd):
                        break
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
        finally:
            if pidfd >= 0:
                os.close(pidfd)
            self.proc.stdout.close()


_PIDS_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/pids"))


class _PidsCgroup:
    """A throwaway ``pids`` cgroup that caps a sandbox's process count for root.

    The sandbox's first process moves itself in (``echo $$ > cgroup.procs``)
    before it execs bubblewrap, so every descendant is inside from its first
    fork; ``pids.max`` then makes fork fail with EAGAIN in the kernel.
    """

    _counter = 0

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, max_pids: int) -> _PidsCgroup | None:
        """Make the cgroup, or return None where cgroups cannot be written."""
        for root in _PIDS_ROOTS:
            if not (root / "cgroup.procs").exists():
                continue
            if root == Path("/sys/fs/cgroup") and "pids" not in _read(root / "cgroup.controllers"):
                continue
            with _CGROUPS_LOCK:  # two errands' shell calls must not share a name
                cls._counter += 1
                path = root / f"keyless-sandbox-{os.getpid()}-{cls._counter}"
            try:
                path.mkdir()
                (path / "pids.max").write_text(str(max_pids))
            except OSError:
                with contextlib.suppress(OSError):
                    path.rmdir()
                continue
            return cls(path)
        return None

    def wrap(self, argv: list[str]) -> list[str]:
        """Prefix ``argv`` so its process joins the cgroup before exec."""
        procs = str(self.path / "cgroup.procs")
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *argv]

    @property
    def hit_limit(self) -> bool:
        """Whether a fork was refused because of ``pids.max``."""
        for line in _read(self.path / "pids.events").splitlines():
            name, _, count = line.partition(" ")
            if name == "max" and count.strip() not in ("", "0"):
                return True
        return False

    def destroy(self) -> None:
        """Kill whatever is left inside and remove the cgroup.

        A cgroup whose last processes are still being reaped cannot be removed
        yet; it is retried on the next sandbox (and at exit) rather than
        waited for, which would add milliseconds to every shell call.
        """
        for pid in _read(self.path / "cgroup.procs").split():
            if pid.isdigit():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), signal.SIGKILL)
        with _CGROUPS_LOCK:
            _PENDING.append(self.path)
        _remove_pending()


_PENDING: list[Path] = []
_CGROUPS_LOCK = threading.Lock()
"""Guards :data:`_PENDING` and the cgroup counter: errands' shell calls end on their own threads."""


def _remove_pending() -> None:
    # One sweep at a time: two threads removing the same directory both
    # dropped it from the list, and the second raised (and ended its errand).
    with _CGROUPS_LOCK:
        for path in list(_PENDING):
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                continue  # still busy: next time
            _PENDING.remove(path)


atexit.register(_remove_pending)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _supervise(
    argv: list[str], limits: Limits, *, env: dict[str, str], cwd: Path | None, sandboxed: bool
) -> ShellResult:
    cgroup = None
    if sandboxed and os.geteuid() == 0:
        # bwrap, prlimit and sh are a few processes on top of the command's own.
        cgroup = _PidsCgroup.create(limits.max_processes + 4)
        if cgroup is not None:
            argv = cgroup.wrap(argv)
    try:
        result = _supervise_process(argv, limits, env=env, cwd=cwd, sandboxed=sandboxed)
        if cgroup is not None and result.limit_hit is None and cgroup.hit_limit:
            result = result.model_copy(update={"limit_hit": "processes"})
        elif cgroup is not None and result.limit_hit == "wall-clock" and cgroup.hit_limit:
            result = result.model_copy(update={"limit_hit": "processes"})
        return result
    finally:
        if cgroup is not None:
            cgroup.destroy()


def _supervise_process(
    argv: list[str], limits: Limits, *, env: dict[str, str], cwd: Path | None, sandboxed: bool
) -> ShellResult:
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as e:
        raise SandboxError(f"cannot start {argv[0]}: {e.strerror}") from e
    # Root ignores RLIMIT_NPROC, so the supervisor counts the sandbox's processes.
    sup = _Supervisor(proc, limits, count=sandboxed and os.geteuid() == 0)
    try:
        sup.run(start)
    except BaseException:
        sup.kill("wall-clock")
        with contextlib.suppress(ChildProcessError):
            os.waitpid(proc.pid, 0)
        raise
    proc.returncode = os.waitstatus_to_exitcode(sup.status)
    exit_code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    limit_hit = sup.hit
    # RLIMIT_CPU sends SIGXCPU at the soft limit and SIGKILL at the hard one.
    if limit_hit is None and (
        exit_code == 128 + signal.SIGXCPU
        or (exit_code == 128 + signal.SIGKILL and sup.cpu >= limits.cpu_seconds)
    ):
        limit_hit = "cpu"
    return ShellResult(
        exit_code=exit_code,
        output=bytes(sup.kept).decode("utf-8", errors="replace"),
        output_bytes=sup.total,
        truncated=sup.total > len(sup.kept),
        limit_hit=limit_hit,
        duration_s=time.monotonic() - start,
        sandboxed=sandboxed,
    )
