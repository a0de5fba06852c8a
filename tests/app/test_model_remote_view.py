"""The Model panel's remote backend: an OpenAI-compatible server, its key named in the vault."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from app.controllers.model_controller import ModelController
from app.qt import Qt
from app.services import AppServices
from app.settings import load_settings, model_spec_from_settings
from app.views.model_view import ModelView

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_ignore("propagateSizeHints")]

KEY_VALUE = "sk-test-" + "9f86d081884c7d659a2feaa0"


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


def _unlocked_vault_with_key(services: AppServices) -> None:
    from vault._crypto import Argon2Params
    from vault.keystore import NoKeyring
    from vault.store import Vault

    vault = Vault.create(
        services.paths.vault_file, passphrase="pw", use_keyring=False, keystore=NoKeyring(),
        kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64),
    )  # fmt: skip
    vault.add("OPENAI_KEY", KEY_VALUE.encode())
    vault.lock()
    assert services.vault is not None
    services.vault.unlock(passphrase="pw")


def test_the_remote_server_is_chosen_on_the_panel(
    qtbot: Any, view: ModelView, services: AppServices
) -> None:
    _unlocked_vault_with_key(services)
    view.show()
    # The vault's secret names are offered; the key's value never is.
    offered = [view.remote_key.itemText(i) for i in range(view.remote_key.count())]
    assert offered == ["OPENAI_KEY"]
    assert not view.remote_radio.isChecked()
    qtbot.keyClicks(view.remote_url, "http://127.0.0.1:8080/v1/")
    assert view.remote_radio.isChecked()  # typing a URL chooses the server
    view.remote_model.setText("qwen2.5-7b-instruct")
    view.remote_key.setCurrentIndex(0)
    view.remote_local.setChecked(True)
    with qtbot.wait_signal(view.controller.modelDescribed, timeout=10_000):
        qtbot.mouseClick(view.use_button, Qt.MouseButton.LeftButton)
    saved = load_settings(services.paths).model
    assert (saved.backend, saved.base_url, saved.remote_model) == (
        "openai", "http://127.0.0.1:8080/v1", "qwen2.5-7b-instruct"
    )
    assert saved.remote_key_secret == "OPENAI_KEY" and saved.allow_local_remote
    assert KEY_VALUE not in services.paths.settings_file.read_text()
    assert view.model_name.text() == "qwen2.5-7b-instruct"
    assert "vault secret 'OPENAI_KEY'" in view.model_detail.text()
    spec = model_spec_from_settings(saved, services.paths.data_dir)
    assert spec.backend == "openai"
    assert spec.settings.base_url == "http://127.0.0.1:8080/v1"


def test_a_secret_missing_from_the_unlocked_vault_is_refused(
    qtbot: Any, view: ModelView, services: AppServices
) -> None:
    _unlocked_vault_with_key(services)
    view.remote_radio.setChecked(True)
    view.remote_url.setText("http://127.0.0.1:8080/v1")
    view.remote_model.setText("m")
    view.remote_key.setEditText("NO_SUCH_KEY")
    view.remote_local.setChecked(True)
    with qtbot.wait_signal(view.controller.errorOccurred, timeout=5000) as blocker:
        view.use_selected()
    assert "no secret named 'NO_SUCH_KEY'" in blocker.args[0]
    assert load_settings(services.paths).model.backend == "llama.cpp"


@pytest.mark.parametrize(
    ("url", "allow_local", "problem"),
    [
        ("http://93.184.216.34/v1", False, "https is required"),
        ("http://127.0.0.1:8080/v1", False, "allow local server"),
        ("ftp://127.0.0.1/v1", True, "must be http(s)"),
        ("https://user:pw@93.184.216.34/v1", False, "must not carry credentials"),
    ],
)
def test_a_bad_server_url_is_refused_and_nothing_changes(
    qtbot: Any, view: ModelView, services: AppServices, url: str, allow_local: bool, problem: str
) -> None:
    view.remote_radio.setChecked(True)
    view.remote_url.setText(url)
    view.remote_model.setText("m")
    view.remote_local.setChecked(allow_local)
    with qtbot.wait_signal(view.controller.errorOccurred, timeout=5000) as blocker:
        view.use_selected()
    assert problem in blocker.args[0]
    assert "pw" not in blocker.args[0] or "credentials" in blocker.args[0]
    assert view.banner.text().startswith("Cannot use")
    assert load_settings(services.paths).model.backend == "llama.cpp"


def test_a_url_and_a_model_name_are_required(qtbot: Any, view: ModelView) -> None:
    view.remote_radio.setChecked(True)
    with qtbot.wait_signal(view.controller.errorOccurred, timeout=2000) as blocker:
        view.use_selected()
    assert blocker.args == ["give the server's base URL and the model's name"]


def test_switching_back_to_the_embedded_model_restores_its_options(
    qtbot: Any, view: ModelView, services: AppServices
) -> None:
    c = view.controller
    c.apply_runtime(n_ctx=4096, n_gpu_layers=None, n_sink=6, rope_scaling="none",
                    rope_factor=1.0, n_threads=3)  # fmt: skip
    with qtbot.wait_signal(c.settingsChanged, timeout=10_000):
        c.use_remote("http://127.0.0.1:9/v1", "m", "", allow_local=True)
    c.apply_runtime(n_ctx=32768, n_gpu_layers=None, n_sink=4, rope_scaling="none", rope_factor=1.0)
    with qtbot.wait_signal(c.settingsChanged, timeout=2000):
        view.embedded_radio.setChecked(True)
        view.use_selected()
    s = load_settings(services.paths).model
    assert (s.backend, s.n_ctx, s.n_sink, s.n_threads) == ("llama.cpp", 4096, 6, 3)
    assert view.n_threads.value() == 3 and view.embedded_radio.isChecked()
    assert s.profiles["openai:m"].n_ctx == 32768


def test_the_local_runtime_options_are_off_for_a_server_and_the_loaded_line_says_so(
    qtbot: Any, view: ModelView
) -> None:
    from models.interface import ModelInfo

    c = view.controller
    c.update_loaded(
        ModelInfo(name="tiny", backend="llama.cpp", n_ctx=256, n_layers_offloaded=0, n_layers=31)
    )
    with qtbot.wait_signal(c.modelLoaded, timeout=10_000) as blocker:
        c.use_remote("http://127.0.0.1:9/v1", "m", "", allow_local=True)
    assert blocker.args[0].endswith("the new choice loads with the next errand")
    assert view.loaded_label.text() == blocker.args[0]
    assert not any(
        w.isEnabled()
        for w in (view.gpu_auto, view.gpu_layers, view.n_sink, view.rope_combo, view.n_threads)
    )
    assert view.n_ctx.isEnabled()  # the context size is the server model's too
    with qtbot.wait_signal(c.settingsChanged, timeout=2000):
        c.use_embedded()
    assert view.gpu_auto.isEnabled() and view.n_sink.isEnabled() and view.n_threads.isEnabled()
