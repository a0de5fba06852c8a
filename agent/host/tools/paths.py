"""Confinement of file tools to the workspace.

Every path the model names goes through :meth:`Workspace.resolve`, which
refuses ``..``, absolute paths elsewhere, symlinks pointing out, device files,
FIFOs, sockets, the protected paths (the git-directory entries of
:mod:`agent.host.protected` at any depth, ``.keyless/``) and the refused
directories (Keyless's data and config dirs, the keyring's files) wherever
they lie, compared by canonical path. Resolution alone is not enough: a symlink could be swapped in
between the check and the open. So files are then opened by walking the
*canonical* path one component at a time from a directory descriptor of the
workspace with ``O_NOFOLLOW``; a component that became a symlink fails the
walk instead of being followed (no time-of-check/time-of-use gap).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agent.errors import PathRefusedError, ToolError
from agent.host.protected import GIT_DIR_NAMES, git_dir_entry, normalise_name

#: Paths inside the workspace that no tool may read or write, besides the
#: git-directory entries of :data:`agent.host.protected.GIT_DIR_ENTRIES` (at any
#: depth): ``.keyless`` holds the workspace's rules and memory.
PROTECTED: tuple[PurePosixPath, ...] = (PurePosixPath(".keyless"),)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in after the check must not hang the host on open.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a regular file"


def protected_reason(relative: PurePosixPath) -> str | None:
    """Name the protected path ``relative`` lies in, or ``None``.

    Compared after :func:`agent.host.protected.normalise_name` (case folded,
    ignorable characters removed), so ``.GIT/Hooks`` on a case-insensitive
    file system is caught as well; a git directory's entries are protected at
    any depth (a nested repository's config runs code too).
    """
    git_entry = git_dir_entry(relative.parts)
    if git_entry is not None:
        return git_entry
    parts = tuple(normalise_name(p) for p in relative.parts)
    for prot in PROTECTED:
        pp = tuple(normalise_name(p) for p in prot.parts)
        if parts[: len(pp)] == pp:
            return str(prot)
    return None


@dataclass(frozen=True)
class WorkspacePath:
    """A path resolved inside the workspace.

    Attributes:
        root: The canonical workspace directory.
        relative: The canonical path below it (``.`` for the root), free of
            symlinks as of resolution time.
        given: The path as the model wrote it (for messages).
        exists: Whether it existed at resolution time.
    """

    root: Path
    relative: PurePosixPath
    given: str
    exists: bool

    @property
    def absolute(self) -> Path:
        """The canonical absolute path."""
        return self.root / self.relative

    def __str__(self) -> str:
        return self.relative.as_posix()


class Workspace:
    """The directory file tools are confined to.

    Args:
        root: The workspace directory; it must exist.
        refused: Files and directories no tool may touch wherever they lie
            (the data dir with the vault, the config dir, the keyring's
            files); compared by canonical path, so a symlink or a second
            name for them is refused as well.

    Raises:
        ToolError: ``root`` is not a directory.
    """

    def __init__(self, root: Path | str, *, refused: Sequence[Path] = ()) -> None:
        given = Path(root)
        real = Path(os.path.realpath(given))
        if not real.is_dir():
            raise ToolError(f"workspace {given} is not a directory")
        self.root = real
        self._given = Path(os.path.abspath(given))
        self._refused = tuple(Path(os.path.realpath(p)) for p in refused)

    def refused_reason(self, relative: PurePosixPath) -> str | None:
        """Name the refused directory (or file) the workspace path lies in, or ``None``."""
        real = Path(os.path.realpath(self.root / relative))
        for refused in self._refused:
            if real == refused or refused in real.parents:
                return str(refused)
        return None

    # -- resolution ---------------------------------------------------------------------------

    def resolve(self, path: str, *, must_exist: bool = True) -> WorkspacePath:
        """Resolve ``path`` (relative to the workspace) to a canonical path inside it.

        Args:
            path: What the model wrote; relative, or absolute inside the workspace.
            must_exist: Refuse a path that does not exist (reads); writes pass False.

        Returns:
            The resolved path.

        Raises:
            PathRefusedError: The path leaves the workspace, goes through a
                symlink pointing out, is protected or is not a regular file or
                directory.
            ToolError: The path does not exist (and ``must_exist``) or a
                component is not a directory.
        """
        if "\x00" in path:
            raise PathRefusedError(f"path {path!r} contains a NUL byte")
        text = path.strip() or "."
        pure = PurePosixPath(text)
        if pure.is_absolute():
            pure = self._relative_of_absolute(pure, text)
        if ".." in pure.parts:
            raise PathRefusedError(f"path {text!r} contains '..'; name paths inside the workspace")

        root = str(self.root)
        current = root
        rel: list[str] = []
        exists = True
        parts = [p for p in pure.parts if p != "."]
        for index, part in enumerate(parts):
            candidate = os.path.join(current, part)
            try:
                st = os.lstat(candidate)
            except FileNotFoundError:
                if must_exist:
                    raise ToolError(f"{text}: no such file or directory") from None
                rel.extend(parts[index:])
                exists = False
                break
            except OSError as e:
                raise ToolError(f"{text}: {e.strerror}") from e
            last = index == len(parts) - 1
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(candidate)
                if not self._inside(target):
                    shown = "/".join([*rel, part])
                    raise PathRefusedError(
                        f"{text}: {shown} is a symlink pointing outside the workspace"
                    )
                current = target
                rel = [] if target == root else list(PurePosixPath(target).relative_to(root).parts)
                if not os.path.lexists(target):
                    if must_exist:
                        raise ToolError(f"{text}: no such file or directory (dangling symlink)")
                    rel.extend(parts[index + 1 :])
                    exists = False
                    break
                st = os.stat(target)
            else:
                current = candidate
                rel.append(part)
            if not last and not stat.S_ISDIR(st.st_mode):
                raise ToolError(f"{text}: {'/'.join(rel)} is not a directory")
            if last and not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise PathRefusedError(f"{text} is {_kind(st.st_mode)}; only files are allowed")

        relative = PurePosixPath(*rel) if rel else PurePosixPath(".")
        reason = protected_reason(relative)
        if reason is not None:
            raise PathRefusedError(f"{text} is inside the protected path {reason}")
        refused = self.refused_reason(relative)
        if refused is not None:
            raise PathRefusedError(
                f"{text} is inside {refused}, Keyless's own or the keyring's files; refused"
            )
        return WorkspacePath(root=self.root, relative=relative, given=text, exists=exists)

    def _inside(self, real: str) -> bool:
        root = str(self.root)
        return real == root or real.startswith(root.rstrip("/") + "/")

    def _relative_of_absolute(self, pure: PurePosixPath, text: str) -> PurePosixPath:
        for base in (self.root, self._given):
            try:
                return pure.relative_to(base)
            except ValueError:
                continue
        raise PathRefusedError(f"absolute path {text} is outside the workspace")

    # -- descriptor walks ---------------------------------------------------------------------

    @contextlib.contextmanager
    def open_dir(self, where: WorkspacePath, *, create: bool = False) -> Iterator[int]:
        """Open the directory ``where`` by an ``O_NOFOLLOW`` walk from the workspace root.

        Args:
            where: A resolved directory path.
            create: Create missing components (``write_file``'s parents).

        Yields:
            A directory descriptor, closed on exit.

        Raises:
            PathRefusedError: A component became a symlink or non-directory
                after resolution.
            ToolError: A component does not exist (and not ``create``).
        """
        fd = self._walk(where.relative.parts, where.given, create=create)
        try:
            yield fd
        finally:
            os.close(fd)

    def _walk(self, parts: tuple[str, ...], given: str, *, create: bool) -> int:
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts:
                if part == ".":
                    continue
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise ToolError(f"{given}: no such directory") from None
                    os.mkdir(part, 0o777, dir_fd=fd)
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise PathRefusedError(
                            f"{given}: {part} changed into a symlink or non-directory while "
                            "being opened; refused"
                        ) from e
                    raise ToolError(f"{given}: {e.strerror}") from e
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read_bytes(self, where: WorkspacePath, limit: int) -> tuple[bytes, int]:
        """Read at most ``limit`` bytes of the regular file ``where``.

        Returns:
            The bytes read and the file's full size.

        Raises:
            PathRefusedError: The file is not a regular file or became a symlink.
            ToolError: It cannot be read.
        """
        parent, name = self._split(where)
        with self.open_dir(parent) as dfd:
            fd = self.open_file_at(dfd, name, where.given)
            try:
                size = os.fstat(fd).st_size
                chunks: list[bytes] = []
                remaining = limit
                while remaining > 0:
                    chunk = os.read(fd, min(remaining, 1 << 16))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    remaining -= len(chunk)
                return b"".join(chunks), size
            finally:
                os.close(fd)

    @staticmethod
    def open_file_at(dir_fd: int, name: str, given: str) -> int:
        """Open the regular file ``name`` in ``dir_fd`` for reading, never following links.

        Raises:
            PathRefusedError: It is a symlink, device, FIFO or socket.
            ToolError: It cannot be opened.
        """
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise PathRefusedError(f"{given} is a symlink; refused") from e
            if e.errno == errno.ENOENT:
                raise ToolError(f"{given}: no such file") from e
            raise ToolError(f"{given}: {e.strerror}") from e
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise PathRefusedError(f"{given} is {_kind(mode)}; only regular files can be read")
        # Back to blocking reads now that we know it is a regular file.
        os.set_blocking(fd, True)
        return fd

    def write_atomic(self, where: WorkspacePath, data: bytes, *, create_dirs: bool) -> bool:
        """Replace (or create) the file ``where`` with ``data`` atomically.

        The data goes to a fresh temporary file in the same directory (created
        with ``O_EXCL | O_NOFOLLOW``), is synced, and renamed over the target,
        so a failure at any point leaves the old file intact.

        Args:
            where: A resolved path (``must_exist=False``).
            data: The new content.
            create_dirs: Create missing parent directories.

        Returns:
            Whether the file existed before.

        Raises:
            PathRefusedError: The target is a directory, symlink or special file.
            ToolError: Writing failed (disk full, permissions); the old file survives.
        """
        if normalise_name(where.relative.name) in GIT_DIR_NAMES:
            # A .git *file* names the git directory: writing one (here or in a
            # subdirectory) would point git at a directory the agent built,
            # with its own config and hooks.
            raise PathRefusedError(f"{where.given}: a .git file cannot be written")
        parent, name = self._split(where)
        with self.open_dir(parent, create=create_dirs) as dfd:
            mode = 0o644
            existed = False
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISREG(st.st_mode):
                    raise PathRefusedError(
                        f"{where.given} is {_kind(st.st_mode)}; only regular files can be written"
                    )
                mode = stat.S_IMODE(st.st_mode)
                existed = True
            tmp = f".{name}.keyless-{secrets.token_hex(6)}.tmp"
            try:
                fd = os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600, dir_fd=dfd,
                )
            except OSError as e:
                raise ToolError(f"{where.given}: cannot write: {e.strerror}") from e
            try:
                try:
                    view = memoryview(data)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                    os.fchmod(fd, mode)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise ToolError(
                    f"{where.given}: cannot write: {e.strerror}; the old file is unchanged"
                ) from e
            with contextlib.suppress(OSError):
                os.fsync(dfd)
            return existed

    @staticmethod
    def _split(where: WorkspacePath) -> tuple[WorkspacePath, str]:
        if where.relative == PurePosixPath("."):
            raise PathRefusedError(f"{where.given} is the workspace directory, not a file")
        parent = WorkspacePath(
            root=where.root, relative=where.relative.parent, given=where.given, exists=True
        )
        return parent, where.relative.name
