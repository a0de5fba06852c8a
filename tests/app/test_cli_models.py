"""``keyless models``: list, pull (loopback hub), use, rm, info."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main
from app.paths import default_paths
from app.settings import load_settings
from models import curated
from tests.models.test_catalog import FILENAME, REPO, Hub, hub, tiny_gguf
from tests.models.test_fit import write_model

__all__ = ["hub", "tiny_gguf"]  # pytest fixtures used below


@pytest.fixture
def tiny_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A catalog whose one entry is the loopback hub's file, with no published digest."""
    entry = curated.load_curated().models[0].model_dump() | {
        "id": "tiny", "name": "Tiny", "repo": REPO, "file": FILENAME, "quantization": "Q8_0",
        "sha256": None, "size": None,
        "provenance": "pinned on first download (trust on first use, shown to the user)",
    }
    file = tmp_path / "curated.json"
    file.write_text(json.dumps({"version": 1, "n_ctx": 2048, "models": [entry]}))
    monkeypatch.setattr(curated, "CURATED_FILE", file)
    return file


def test_list_shows_the_catalog_with_fit_and_no_installed_models(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "RAM free" in out
    for entry in curated.load_curated().models:
        assert entry.id in out
    assert "(est.)" in out  # sizes not published are labelled as estimates
    assert any(word in out for word in ("fits", "tight", "too big"))
    assert "embedded 135M demo" in out


def test_pull_pins_then_use_list_and_rm(
    hub: Hub, tiny_catalog: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "pull", "tiny", "--use"]) == 0
    out = capsys.readouterr().out
    assert f"its sha256 {hub.sha256} is now pinned" in out
    models_dir = default_paths().models_dir
    assert (models_dir / FILENAME).read_bytes() == hub.data
    assert load_settings(default_paths()).model.path == str(models_dir / FILENAME)

    assert main(["models", "pull", "tiny"]) == 0
    assert "already installed and verified" in capsys.readouterr().out

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert " * tiny" in out and "(in use)" in out

    assert main(["models", "rm", "tiny"]) == 0
    assert "embedded demo model" in capsys.readouterr().out
    assert not (models_dir / FILENAME).exists()
    assert load_settings(default_paths()).model.path is None


def test_pull_of_an_unknown_model_names_the_known_ones(
    tiny_catalog: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "pull", "nope"]) == 1
    assert "no model 'nope' in the catalog (known: tiny)" in capsys.readouterr().err


def test_use_checks_the_file_and_embedded_resets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    assert main(["models", "use", str(bad)]) == 1
    assert "not a GGUF model file" in capsys.readouterr().err
    good = write_model(tmp_path / "good.gguf", n_layer=2, n_embd=64, n_head=4, n_head_kv=2,
                       n_ff=128)
    assert main(["models", "use", str(good)]) == 0
    assert load_settings(default_paths()).model.path == str(good.resolve())
    assert main(["models", "use", "embedded"]) == 0
    assert load_settings(default_paths()).model.path is None


def test_info_reads_the_header_and_sizes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_model(tmp_path / "m.gguf", n_layer=6, n_embd=256, n_head=8, n_head_kv=2,
                       n_ff=512)
    assert main(["models", "info", str(path), "--n-ctx", "4096"]) == 0
    out = capsys.readouterr().out
    assert "6 layers, n_embd 256, 8 heads (2 KV), head size 32" in out
    assert "KV cache at n_ctx 4096: 6 MiB" in out  # 6 layers × 2 × 32 × 2 (K, V) × 2 B × 4096
    assert "on this machine:" in out
