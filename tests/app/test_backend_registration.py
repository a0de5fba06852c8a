"""Adding a model backend is one module plus one registration: the CLI follows the registry.

The ``echo`` backend lives in the test tree (:mod:`tests.models.echo_backend`).
``keyless chat`` opens it in the model process and ``keyless run`` in the
agent process (under bubblewrap where available): both children load its
file because the host names it on their command line.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from app.cli import build_parser, main
from app.cli_run import EXIT_OK, run_errand_cli
from app.paths import default_paths
from app.settings import AppSettings, ModelSettings, load_settings, save_settings
from models.builtin_backends import LlamaSettings, OpenAISettings
from tests.agent.hostkit import call, final
from tests.models.echo_backend import ECHO, EchoSettings


def test_keyless_chat_runs_a_backend_from_the_test_tree(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert ECHO.name == "echo"
    status = main(["chat", "--backend", "echo", "--prompt", "the sea"])
    out, _err = capsys.readouterr()
    assert status == 0
    assert out == "echo: the sea\n"


def test_keyless_run_runs_a_backend_from_the_test_tree(workspace: Path) -> None:
    (workspace / "notes.txt").write_text("buy milk\n")
    replies = [call("read_file", path="notes.txt"), final("Read it with echo.")]
    model = ModelSettings(backend="echo", n_ctx=4096, backend_options={"replies": replies})
    save_settings(default_paths().ensure(), AppSettings(model=model))
    args = build_parser().parse_args(["run", "read my notes", "--workspace", str(workspace)])
    out, err = io.StringIO(), io.StringIO()
    status = run_errand_cli(args, stdin=io.StringIO(""), out=out, err=err)
    assert status == EXIT_OK, err.getvalue()
    assert out.getvalue().startswith("Read it with echo.\n")
    assert "read_file" in out.getvalue()


def test_an_unknown_backend_in_the_settings_is_a_clear_error(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_settings(default_paths().ensure(), AppSettings(model=ModelSettings(backend="gone")))
    status = main(["run", "x", "--workspace", str(workspace)])
    assert status != 0
    assert "unknown model backend 'gone'" in capsys.readouterr().err


def test_settings_files_written_before_the_registry_give_the_same_spec() -> None:
    paths = default_paths().ensure()
    old = {
        "model": {
            "backend": "llama.cpp", "path": "/m/q.gguf", "n_ctx": 8192, "n_gpu_layers": 12,
            "n_sink": 8, "rope_scaling": "linear", "rope_factor": 2.0, "eviction": "h2o",
            "base_url": "https://x.test/v1", "remote_model": "big", "remote_key_secret": None,
            "allow_local_remote": False, "profiles": {},
        },
    }  # fmt: skip
    paths.settings_file.write_text(json.dumps(old), encoding="utf-8")
    from app.services import AppServices

    services = AppServices()
    try:
        spec = services.model_spec()
        assert spec.backend == "llama.cpp"
        assert spec.settings == LlamaSettings(
            path=Path("/m/q.gguf"), n_ctx=8192, n_gpu_layers=12, n_sink=8,
            rope_scaling="linear", rope_factor=2.0, eviction="h2o",
            verified_cache=paths.data_dir / "verified-models.json",
        )  # fmt: skip
        old["model"]["backend"] = "openai"
        paths.settings_file.write_text(json.dumps(old), encoding="utf-8")
        remote = AppServices().model_spec()
        assert remote.settings == OpenAISettings(
            base_url="https://x.test/v1", model_name="big", n_ctx=8192
        )
    finally:
        services.close()
    assert load_settings(paths).model.backend_options == {}
    assert EchoSettings().prefix == "echo: "
