"""The curated catalog: the shipped file's entries, pull with published and pinned digests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from models import curated, fit
from models.curated import Curated, CuratedModel, load_curated, pull
from models.errors import CatalogError, DownloadChecksumError, PinMismatchError
from tests.models.test_catalog import FILENAME, REPO, Hub, hub, tiny_gguf, write_tiny_gguf

__all__ = ["hub", "tiny_gguf"]  # pytest fixtures used below

SHIPPED = load_curated()


# -- the shipped catalog -----------------------------------------------------------------


def test_shipped_catalog_is_valid_and_versioned() -> None:
    raw = json.loads(curated.CURATED_FILE.read_text())
    assert raw["version"] == curated.SUPPORTED_VERSION
    assert len(SHIPPED.models) >= 5
    sizes = sorted(m.params_b for m in SHIPPED.models)
    assert sizes[0] < 2 and sizes[-1] > 6, "several sizes, small to 7B"


@pytest.mark.parametrize("entry", SHIPPED.models, ids=lambda m: m.id)
def test_entry_fields_are_consistent(entry: CuratedModel) -> None:
    assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    assert entry.file.endswith(".gguf") and entry.quantization.lower() in entry.file.lower()
    assert entry.source.startswith("https://huggingface.co/" + entry.repo)
    if entry.sha256 is None:
        assert "trust on first use" in entry.provenance
    # A published size is close to what the parameter count and quantization predict.
    estimate = fit.estimate_size(entry.params_b * 1e9, entry.quantization)
    assert 0.75 < entry.download_size / estimate < 1.25
    # The stored RAM/VRAM figures are what models.fit computes at the catalog's n_ctx.
    shape = entry.shape()
    assert entry.ram_mib == -(-fit.ram_needed(shape, SHIPPED.n_ctx, 0) // fit.MIB)
    assert entry.vram_mib == -(-fit.vram_needed(shape, SHIPPED.n_ctx, entry.n_layer + 1) // fit.MIB)
    assert entry.ram_mib * fit.MIB > entry.download_size


def test_published_digests_are_distinct() -> None:
    digests = [m.sha256 for m in SHIPPED.models if m.sha256]
    assert digests and len(set(digests)) == len(digests)


def entry_doc(**changes: object) -> dict[str, object]:
    base = SHIPPED.models[0].model_dump()
    return base | changes


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"sha256": "ABC"}, "sha256"),
        ({"sha256": "g" * 64}, "sha256"),
        ({"size": 0}, "size"),
        ({"file": "model.bin"}, "file"),
        ({"repo": "no-owner"}, "repo"),
        ({"source": "http://example.com"}, "source"),
        ({"n_head_kv": 5}, "n_head_kv"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_bad_entries_are_refused_with_the_field_named(
    tmp_path: Path, changes: dict[str, object], problem: str
) -> None:
    doc = {"version": 1, "n_ctx": 2048, "models": [entry_doc(**changes)]}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(CatalogError, match=problem):
        load_curated(tmp_path / "c.json")


def test_wrong_version_and_duplicates_are_refused(tmp_path: Path) -> None:
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"version": 2, "n_ctx": 2048, "models": [entry_doc()]}))
    with pytest.raises(CatalogError, match="version 2"):
        load_curated(file)
    file.write_text(json.dumps({"version": 1, "n_ctx": 2048, "models": [entry_doc()] * 2}))
    with pytest.raises(CatalogError, match="duplicate"):
        load_curated(file)
    with pytest.raises(CatalogError, match="cannot read"):
        load_curated(tmp_path / "missing.json")


def test_lookup_by_id_or_file() -> None:
    first = SHIPPED.models[0]
    assert SHIPPED.get(first.id) is first and SHIPPED.get(first.file) is first
    with pytest.raises(CatalogError, match="no model 'nope'.*known:"):
        SHIPPED.get("nope")


# -- pull against the loopback hub ------------------------------------------------------------


def tiny_entry(sha256: str | None, size: int | None = None) -> CuratedModel:
    return CuratedModel.model_validate(
        entry_doc(
            id="tiny",
            name="Tiny",
            repo=REPO,
            file=FILENAME,
            quantization="Q8_0",
            sha256=sha256,
            size=size,
        )
    )


def test_pull_with_the_published_digest(hub: Hub, tmp_path: Path) -> None:
    tmp_path = tmp_path / "models"  # the hub fixture keeps its source in tmp_path/src
    tmp_path.mkdir()
    seen: list[tuple[int, int | None]] = []
    result = pull(tiny_entry(hub.sha256), tmp_path, progress=lambda d, t: seen.append((d, t)))
    assert result.trust == "published" and result.sha256 == hub.sha256
    assert result.model.path.read_bytes() == hub.data
    assert seen[-1] == (len(hub.data), len(hub.data))
    assert not (tmp_path / curated.PINS_FILE).exists()
    again = pull(tiny_entry(hub.sha256), tmp_path)
    assert again.already_installed


def test_a_download_not_matching_the_catalog_digest_is_refused_and_removed(
    hub: Hub, tmp_path: Path
) -> None:
    tmp_path = tmp_path / "models"  # the hub fixture keeps its source in tmp_path/src
    tmp_path.mkdir()
    with pytest.raises(DownloadChecksumError, match="expected " + "0" * 64):
        pull(tiny_entry("0" * 64), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_first_download_is_pinned_and_a_later_different_one_refused(
    hub: Hub, tmp_path: Path
) -> None:
    tmp_path = tmp_path / "models"  # the hub fixture keeps its source in tmp_path/src
    tmp_path.mkdir()
    first = pull(tiny_entry(None), tmp_path)
    assert first.trust == "first-use" and first.sha256 == hub.sha256
    assert curated.read_pins(tmp_path) == {"tiny": hub.sha256}
    # The same file again: checked against the pin.
    curated.remove(tmp_path, Curated(version=1, n_ctx=2048, models=()), FILENAME)
    assert pull(tiny_entry(None), tmp_path).trust == "pinned"
    # The hub now serves different bytes (its own etag matches them): refused, deleted.
    curated.remove(tmp_path, Curated(version=1, n_ctx=2048, models=()), FILENAME)
    other = write_tiny_gguf(tmp_path.parent / "src" / "other.gguf", n_floats=300_001)
    hub.data = other.read_bytes()
    with pytest.raises(PinMismatchError, match="pinned at its first download"):
        pull(tiny_entry(None), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [curated.PINS_FILE]


def test_a_damaged_pins_file_fails_closed(hub: Hub, tmp_path: Path) -> None:
    tmp_path = tmp_path / "models"  # the hub fixture keeps its source in tmp_path/src
    tmp_path.mkdir()
    (tmp_path / curated.PINS_FILE).write_text("{not json")
    with pytest.raises(CatalogError, match="cannot be read"):
        pull(tiny_entry(None), tmp_path)


def test_installed_and_remove(tmp_path: Path) -> None:
    entry = SHIPPED.models[0]
    write_tiny_gguf(tmp_path / entry.file)
    write_tiny_gguf(tmp_path / "mine.gguf")
    (tmp_path / "mine.gguf.abc.part").write_bytes(b"x")
    listed = curated.installed(tmp_path, SHIPPED)
    assert [(m.path.name, m.entry) for m in listed] == [
        (entry.file, entry) if entry.file < "mine.gguf" else ("mine.gguf", None),
        ("mine.gguf", None) if entry.file < "mine.gguf" else (entry.file, entry),
    ]
    assert curated.find_installed(tmp_path, SHIPPED, entry.id).entry == entry
    removed = curated.remove(tmp_path, SHIPPED, "mine")
    assert removed.path.name == "mine.gguf"
    assert sorted(p.name for p in tmp_path.iterdir()) == [entry.file]
    with pytest.raises(CatalogError, match="no installed model 'mine'"):
        curated.remove(tmp_path, SHIPPED, "mine")
