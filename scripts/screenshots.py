"""Drive the chat, permission and model screens and save screenshots (screenshots.sh).

Everything shown is produced by the real components: errands run through the
real agent host and agent process with the scripted fake model (so the run is
reproducible), the model panel's figures come from a real generation with the
embedded model, and every user path points into a throwaway directory.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots"

tmp = Path(tempfile.mkdtemp(prefix="keyless-shots-"))
os.environ["KEYLESS_DATA_DIR"] = str(tmp / "data")
os.environ["KEYLESS_CONFIG_DIR"] = str(tmp / "config")
sys.path.insert(0, str(ROOT))

from app.controllers.agent_runner import agent_host_factory  # noqa: E402
from app.controllers.errand_controller import PermissionQuestion, PermissionReply  # noqa: E402
from app.dialogs.permission import UnsandboxedDialog  # noqa: E402
from app.gui import app_icon, build_main_window  # noqa: E402
from app.qt import QtWidgets  # noqa: E402
from app.services import AppServices  # noqa: E402

SCRIPT = [
    {"tool": "list_dir", "arguments": {"path": "."}},
    {"tool": "read_file", "arguments": {"path": "README.md"}},
    {
        "tool": "write_file",
        "arguments": {
            "path": "SUMMARY.md",
            "content": "# Summary\n\nA tiny project with a greeting script and its notes.\n",
        },
    },
    {"final": "I listed the project, read README.md and wrote SUMMARY.md with a short summary."},
]


def pump(until: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise TimeoutError("the screen did not reach the expected state")
        QtWidgets.QApplication.processEvents()
        time.sleep(0.01)


def settle(seconds: float = 0.6) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QtWidgets.QApplication.processEvents()
        time.sleep(0.01)


def save(widget: QtWidgets.QWidget, name: str) -> None:
    path = OUT / f"{name}.png"
    if not widget.grab().save(str(path)):
        raise OSError(f"could not write {path}")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def real_model_figures() -> tuple[dict[str, object], dict[str, object]] | None:
    """Generate past n_ctx with the embedded model: real tok/s, TTFT and cache figures."""
    try:
        from models.catalog import embedded_default
        from models.interface import Finished, Message
        from models.runtime import Runtime, RuntimeConfig
    except ImportError as e:
        print(f"no model figures: {e}")
        return None
    runtime = Runtime(RuntimeConfig(model_path=embedded_default().path, n_ctx=256))
    try:
        stats: dict[str, object] = {}
        for event in runtime.stream_chat(
            [Message(role="user", content="Tell a very long story about a lighthouse.")],
            max_tokens=500,
            ignore_eos=True,
        ):
            if isinstance(event, Finished):
                stats = event.stats.model_dump()
        return stats, runtime.context_state().model_dump()
    finally:
        runtime.close()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    app = QtWidgets.QApplication(sys.argv[:1])
    app.setApplicationName("Keyless")
    app.setWindowIcon(app_icon())
    app.setStyle("Fusion")

    workspace = tmp / "greeter"
    workspace.mkdir()
    (workspace / "README.md").write_text("# greeter\n\nPrints a greeting. Run `python hello.py`.\n")
    (workspace / "hello.py").write_text('print("hello, world")\n')
    script = tmp / "script.json"
    script.write_text(json.dumps([json.dumps(step) for step in SCRIPT]))

    services = AppServices()
    services.set_workspace(workspace)
    factory = agent_host_factory(services, lambda: None, scripted_model=script)
    window = build_main_window(services, factory)
    window.resize(1280, 820)
    window.show()
    settle(1.0)

    # Chat: an errand with a permission prompt for the write.
    window.chat_view.task_edit.setPlainText(
        "Look at this project and write a short summary into SUMMARY.md"
    )
    window.chat_view.run_task()
    pump(lambda: window.permission_dialog is not None)
    dialog = window.permission_dialog
    assert dialog is not None
    dialog.resize(720, 520)
    settle()
    save(dialog, "permission")
    dialog.answered.emit(PermissionReply("once"))  # the same path the Allow once button takes
    dialog.accept()
    pump(lambda: not window.errands.busy)
    settle()
    save(window, "chat")

    unsandboxed = UnsandboxedDialog(
        PermissionQuestion(
            "demo", "shell", {"command": "make install PREFIX=$HOME/.local"}, "unsandboxed"
        ),
        window,
    )
    unsandboxed.resize(720, 420)
    unsandboxed.show()
    settle()
    save(unsandboxed, "unsandboxed")
    unsandboxed.done(0)

    figures = real_model_figures()
    if figures is not None:
        stats, context = figures
        # Show the settings the figures were measured with.
        window.model.apply_runtime(
            n_ctx=int(context["n_ctx"]), n_gpu_layers=None, n_sink=4, rope_scaling="none",
            rope_factor=1.0,
        )
        window.model.update_stats(stats)
        window.model.update_context(context)
    window.show_tab(1)
    pump(lambda: window.model_view.model_name.text() != "…", timeout=120)
    pump(lambda: "checking" not in window.model_view.gpu_label.text(), timeout=120)
    settle()
    save(window, "model")

    # The vault, memory, audit and settings screens are shot with demo data by
    # scripts/screens_demo.py; here only the screens this script drives.
    window.shutdown()
    services.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
