"""The real app, as a user starts it, on a real X server (Xvfb), driving one errand.

`python -m app` (what `keyless` runs) opens on a virtual screen with the
embedded model; the test types a task with xdotool as a user would, presses
Ctrl+Enter, waits until the audit log says the errand ended, saves a
screenshot (from the framebuffer file Xvfb keeps, no ImageMagick), quits with
Ctrl+Q and checks the app exited cleanly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.app.xwd import screenshot

pytestmark = [
    pytest.mark.gui,
    pytest.mark.model,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("Xvfb") and shutil.which("xdotool")), reason="needs Xvfb and xdotool"
    ),
]


@dataclass(frozen=True)
class Screen:
    """A running Xvfb: its display name and the folder holding its framebuffer file."""

    display: str
    fbdir: Path


@pytest.fixture
def xvfb(tmp_path: Path) -> Iterator[Screen]:
    fbdir = tmp_path / "fb"
    fbdir.mkdir()
    read, write = os.pipe()
    xvfb = subprocess.Popen(
        [
            "Xvfb", "-displayfd", str(write), "-screen", "0", "1280x860x24",
            "-fbdir", str(fbdir), "-nolisten", "tcp",
        ],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as f:
        number = f.readline().strip()
    assert number.isdigit(), "Xvfb did not report its display"
    yield Screen(f":{number}", fbdir)
    xvfb.terminate()
    xvfb.wait(timeout=10)


def _xdotool(env: dict[str, str], *args: str, timeout: float = 30) -> str:
    done = subprocess.run(
        ["xdotool", *args], env=env, capture_output=True, text=True, timeout=timeout, check=True
    )
    return done.stdout.strip()


def _audit_kinds(database: Path) -> list[str]:
    if not database.exists():
        return []
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            return [row[0] for row in db.execute("SELECT kind FROM audit_log ORDER BY id")]
    except sqlite3.Error:
        return []  # not created yet, or being written


def test_the_real_app_runs_one_errand_under_xvfb(
    xvfb: Screen, tmp_path: Path, workspace: Path
) -> None:
    data, config = Path(os.environ["KEYLESS_DATA_DIR"]), Path(os.environ["KEYLESS_CONFIG_DIR"])
    config.mkdir(parents=True, exist_ok=True)
    (workspace / "README.md").write_text("# demo\n")
    settings = {"workspace": str(workspace), "recent_workspaces": [str(workspace)]}
    (config / "settings.json").write_text(json.dumps(settings))
    env = {**os.environ, "DISPLAY": xvfb.display, "QT_QPA_PLATFORM": "xcb"}
    app = subprocess.Popen(
        [sys.executable, "-m", "app"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        window = _xdotool(env, "search", "--sync", "--onlyvisible", "--name", "Keyless", timeout=60)
        window = window.splitlines()[0]
        _xdotool(env, "windowfocus", "--sync", window)
        _xdotool(env, "type", "--delay", "20", "List the files in the workspace.")
        _xdotool(env, "key", "ctrl+Return")
        deadline = time.monotonic() + 300
        kinds: list[str] = []
        while time.monotonic() < deadline and app.poll() is None:
            kinds = _audit_kinds(data / "keyless.db")
            if "errand_finished" in kinds or "errand_failed" in kinds:
                break
            time.sleep(0.5)  # polling another process's database, not waiting for Qt
        assert "errand_started" in kinds, f"the typed task did not start an errand: {kinds}"
        assert "errand_finished" in kinds or "errand_failed" in kinds, kinds
        shot = screenshot(xvfb.fbdir, tmp_path / "e2e.png")
        assert (shot.width(), shot.height()) == (1280, 860)
        assert len({shot.pixel(x, y) for x in range(0, 1280, 40) for y in range(0, 860, 40)}) > 2
        _xdotool(env, "key", "--window", window, "ctrl+q")
        out, err = app.communicate(timeout=60)
    finally:
        if app.poll() is None:
            app.send_signal(signal.SIGTERM)
            app.communicate(timeout=30)
    text = err.decode(errors="replace")
    assert app.returncode == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
