"""Saved KV state: the file format, its checks, and the store that caps its disk use.

A session's KV cache (llama.cpp's sequence state plus the
:class:`~models.sinkcache.SinkCache` bookkeeping) is saved when the session
is left and restored when it is reopened, so the agent continues where it was
instead of evaluating the whole conversation again. A state is only worth
using when it is exactly the one the model would rebuild, so each file is
bound to what made it (:class:`Binding`: the model file's sha256, ``n_ctx``,
the settings that change the cache, the tokens it holds and the caller's
digest of the conversation) and is checked whole before anything is loaded.

The file::

    b"KLKV" | version u16 | header length u32 | header (JSON) |
    payload length u64 | payload | sha256 of everything before it (32 bytes)

The header holds the binding and the caller's metadata (JSON), the payload
the sequence state bytes. A missing file, another magic or version, a length
that does not match the file, a wrong checksum (:class:`StateCorruptError`)
and a binding that differs from the expected one (:class:`StateStaleError`,
naming the field) are refused before use. Files are written to a temporary
name and renamed, so a crash leaves the old file or the new one, never half.

This module is pure Python (no llama.cpp): :meth:`models.runtime.Runtime.save_state`
and :meth:`~models.runtime.Runtime.restore_state` use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from models.errors import ModelError

MAGIC = b"KLKV"
VERSION = 1
SUFFIX = ".kvstate"
_PREFIX = struct.Struct("<4sHI")
_LENGTH = struct.Struct("<Q")
_DIGEST = 32
MAX_HEADER = 64 * 1024 * 1024
"""The largest header accepted (the token history of a very long session fits)."""


class KVStateError(ModelError):
    """A saved KV state cannot be used (base class)."""


class StateMissingError(KVStateError):
    """No state was saved under that name."""


class StateCorruptError(KVStateError):
    """The file is truncated, not a KV state, of another version, or fails its checksum."""


class StateStaleError(KVStateError):
    """The state was saved for another model, other settings or another conversation."""


@dataclass(frozen=True)
class Binding:
    """What a saved state belongs to; a state is used only when all of it matches.

    Attributes:
        model_sha256: The model file's sha256.
        n_ctx: The context size the cache was laid out for.
        settings: The runtime settings that change the cache's contents
            (RoPE, KV type, sinks, eviction), as one canonical string.
        tokens_sha256: sha256 of the tokens the cache holds the state of.
        history: The caller's digest of the conversation (empty: not checked).
    """

    model_sha256: str
    n_ctx: int
    settings: str
    tokens_sha256: str
    history: str = ""

    def mismatch(self, expected: Binding) -> str | None:
        """Name the first field that differs from ``expected`` (None: it matches).

        ``tokens_sha256`` is not compared (the file's own tokens are checked
        against it); an empty expected ``history`` is not compared either.
        """
        labels = {
            "model_sha256": "model file",
            "n_ctx": "context size (n_ctx)",
            "settings": "runtime settings",
            "history": "conversation",
        }
        for name, label in labels.items():
            want, have = getattr(expected, name), getattr(self, name)
            if name == "history" and not want:
                continue
            if want != have:
                if name == "n_ctx" or name == "settings":
                    return f"{label}: saved for {have}, now {want}"
                return f"{label}: saved for {str(have)[:12]}, now {str(want)[:12]}"
        return None


@dataclass(frozen=True)
class SavedState:
    """A state file's contents, after every check passed."""

    binding: Binding
    meta: dict[str, Any]
    payload: bytes | memoryview
    """The sequence state: a view into the buffer the file was read into (not copied)."""


def tokens_digest(tokens: Sequence[int]) -> str:
    """sha256 of a token sequence (little-endian int32s)."""
    return hashlib.sha256(struct.pack(f"<{len(tokens)}i", *tokens)).hexdigest()


def file_sha256(path: Path, *, chunk: int = 4 * 1024 * 1024) -> str:
    """sha256 of a file's bytes.

    Raises:
        KVStateError: The file cannot be read.
    """
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as e:
        raise KVStateError(f"cannot read {path} to hash it: {e}") from e
    return h.hexdigest()


def encode(binding: Binding, meta: Mapping[str, Any], payload: bytes) -> bytes:
    """Serialise a state (see the module docstring for the layout)."""
    header = json.dumps(
        {"binding": asdict(binding), "meta": dict(meta)}, separators=(",", ":")
    ).encode("utf-8")
    body = b"".join(
        (
            _PREFIX.pack(MAGIC, VERSION, len(header)),
            header,
            _LENGTH.pack(len(payload)),
            payload,
        )
    )
    return body + hashlib.sha256(body).digest()


def decode(data: bytes | bytearray, *, name: str = "the state") -> SavedState:
    """Parse and check a serialised state.

    Nothing is copied: the checksum runs over a view of ``data`` and the
    payload returned is a view into it (44 MB for a 2,000-token session of
    the embedded model; each copy costs as much as the checksum itself).

    Raises:
        StateCorruptError: Truncated, another magic or version, wrong
            lengths, wrong checksum or a header that is not the expected JSON.
    """
    if len(data) < _PREFIX.size + _LENGTH.size + _DIGEST:
        raise StateCorruptError(f"{name} is truncated ({len(data)} bytes)")
    magic, version, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise StateCorruptError(f"{name} is not a saved KV state (magic {magic!r})")
    if version != VERSION:
        raise StateCorruptError(f"{name} has format version {version}, not {VERSION}")
    if header_len > MAX_HEADER:
        raise StateCorruptError(f"{name} declares a {header_len}-byte header, over the limit")
    at = _PREFIX.size + header_len
    if len(data) < at + _LENGTH.size + _DIGEST:
        raise StateCorruptError(f"{name} is truncated inside its header")
    (payload_len,) = _LENGTH.unpack_from(data, at)
    end = at + _LENGTH.size + payload_len
    if len(data) != end + _DIGEST:
        raise StateCorruptError(
            f"{name} is {len(data)} bytes but declares {end + _DIGEST} (truncated or padded)"
        )
    view = memoryview(data)
    if hashlib.sha256(view[:end]).digest() != view[end:]:
        raise StateCorruptError(f"{name} fails its checksum (corrupt)")
    try:
        header = json.loads(bytes(view[_PREFIX.size : at]).decode("utf-8"))
        binding = Binding(**header["binding"])
        meta = header["meta"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise StateCorruptError(f"{name} has an unreadable header: {e}") from e
    if not isinstance(meta, dict):
        raise StateCorruptError(f"{name} has an unreadable header: meta is not an object")
    return SavedState(binding, meta, view[at + _LENGTH.size : end])


def write(path: Path, binding: Binding, meta: Mapping[str, Any], payload: bytes) -> int:
    """Write a state file atomically (a temporary file renamed over ``path``).

    Returns:
        The file's size in bytes.

    Raises:
        KVStateError: The file cannot be written.
    """
    data = encode(binding, meta, payload)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise KVStateError(f"cannot write the KV state {path}: {e}") from e
    return len(data)


def read(path: Path, expected: Binding) -> SavedState:
    """Read a state file and check it whole against ``expected``.

    Raises:
        StateMissingError: No such file.
        StateCorruptError: See :func:`decode`; or its tokens do not hash to its binding.
        StateStaleError: Saved for another model, settings or conversation.
    """
    try:
        with path.open("rb", buffering=0) as f:
            # Read straight into one writable buffer: the payload is handed to
            # llama.cpp from it without a copy (see SinkCache.restore).
            data = bytearray(os.fstat(f.fileno()).st_size)
            view, got = memoryview(data), 0
            while got < len(data):  # one read(2) returns at most ~2 GiB
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
            view.release()
        if got != len(data):
            raise StateCorruptError(f"the KV state {path.name} changed while it was read")
    except FileNotFoundError as e:
        raise StateMissingError(f"no saved KV state at {path}") from e
    except OSError as e:
        raise StateCorruptError(f"cannot read the KV state {path}: {e}") from e
    saved = decode(data, name=f"the KV state {path.name}")
    tokens = saved.meta.get("tokens")
    if not isinstance(tokens, list) or tokens_digest(tokens) != saved.binding.tokens_sha256:
        raise StateCorruptError(f"the KV state {path.name} holds tokens that fail their digest")
    problem = saved.binding.mismatch(expected)
    if problem is not None:
        raise StateStaleError(f"the KV state {path.name} is stale: {problem}")
    return saved


@dataclass(frozen=True)
class StoredState:
    """One file in a :class:`StateStore`."""

    key: str
    path: Path
    size: int
    mtime: float


class StateStore:
    """State files, one per key (a session id) in its own directory, under a byte cap.

    Each key's file is ``<directory>/<key>/state.kvstate``: the agent process
    of one session is given only its own directory to write.

    Args:
        directory: Where the files live (created on first write).
        cap_bytes: The most bytes all files together may take; the oldest go first.
    """

    def __init__(self, directory: Path, cap_bytes: int) -> None:
        self.directory = directory
        self.cap_bytes = cap_bytes

    def path_for(self, key: str) -> Path:
        """The file of ``key``.

        Raises:
            KVStateError: The key is not a plain name (letters, digits, ``-_``).
        """
        if not key or not all(c.isalnum() or c in "-_" for c in key) or len(key) > 128:
            raise KVStateError(f"{key[:40]!r} is not a usable KV state name")
        return self.directory / key / f"state{SUFFIX}"

    def files(self) -> list[StoredState]:
        """Every state file, oldest first."""
        found: list[StoredState] = []
        try:
            entries = list(self.directory.glob(f"*/state{SUFFIX}"))
        except OSError:
            return []
        for path in entries:
            try:
                st = path.stat()
            except OSError:
                continue  # removed meanwhile
            found.append(StoredState(path.parent.name, path, st.st_size, st.st_mtime))
        found.sort(key=lambda s: (s.mtime, s.key))
        return found

    def used_bytes(self) -> int:
        """Bytes all state files take now."""
        return sum(s.size for s in self.files())

    def remove(self, key: str) -> bool:
        """Delete ``key``'s file; True when there was one."""
        path = self.path_for(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as e:
            raise KVStateError(f"cannot delete the KV state {path}: {e}") from e
        return True

    def remove_session(self, key: str) -> None:
        """Delete ``key``'s directory and everything the agent left in it."""
        directory = self.path_for(key).parent
        try:
            shutil.rmtree(directory)
        except FileNotFoundError:
            return
        except OSError as e:
            raise KVStateError(f"cannot delete {directory}: {e}") from e

    def enforce_cap(self, *, keep: str | None = None) -> list[str]:
        """Delete the oldest files until the total is within the cap.

        Args:
            keep: A key never deleted (the state just saved); if it alone is
                over the cap, it is deleted too, last.

        Returns:
            The keys deleted, oldest first.
        """
        files = self.files()
        total = sum(s.size for s in files)
        removed: list[str] = []
        order = [s for s in files if s.key != keep] + [s for s in files if s.key == keep]
        for s in order:
            if total <= self.cap_bytes:
                break
            try:
                s.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise KVStateError(f"cannot delete the KV state {s.path}: {e}") from e
            total -= s.size
            removed.append(s.key)
        return removed


class ModelHashes:
    """Model file sha256s, remembered per (path, size, mtime) in a JSON file.

    Hashing a multi-gigabyte model at every resume would cost more than the
    resume saves; a file whose size and modification time are unchanged keeps
    its digest (the rule ``make`` and git's index use).

    Args:
        path: The JSON file (None: remembered for this process only).
    """

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._memo: dict[str, dict[str, Any]] = {}
        if path is not None:
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    self._memo = {k: v for k, v in loaded.items() if isinstance(v, dict)}
            except (OSError, ValueError):
                self._memo = {}  # missing or unreadable: hashed again

    def sha256(self, model: Path) -> str:
        """The sha256 of ``model`` (hashed only when new or changed).

        Raises:
            KVStateError: The model file cannot be read.
        """
        try:
            st = model.stat()
        except OSError as e:
            raise KVStateError(f"cannot read the model file {model}: {e}") from e
        key = str(model.resolve())
        known = self._memo.get(key)
        if known and known.get("size") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns:
            digest = known.get("sha256")
            if isinstance(digest, str):
                return digest
        digest = file_sha256(model)
        self._memo[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        if self._path is not None:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self._path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self._memo), encoding="utf-8")
                os.replace(tmp, self._path)
            except OSError:
                pass  # only a cache: the next resume hashes again
        return digest
