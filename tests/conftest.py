"""Fixtures shared by the whole suite.

Every user and workspace path points into a tmp dir, so no test can touch the
real user's vault, memory or settings.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import ci_programs

# GUI tests never need a display: a plain `pytest` on a headless box works too.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def isolated_user_dirs(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Point Keyless's data and config dirs at fresh tmp dirs for each test."""
    root = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("KEYLESS_DATA_DIR", str(root / "data"))
    monkeypatch.setenv("KEYLESS_CONFIG_DIR", str(root / "config"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(root / "xdg-config"))
    yield root


@pytest.fixture(autouse=True)
def qt_garbage_on_the_gui_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    """Collect a Qt test's reference cycles on the GUI thread when it ends.

    Widgets caught in cycles (a lambda slot holding its view) otherwise wait for
    a later automatic collection, which may run on whatever thread allocates
    next: an errand's QThread deleting a widget is a segfault (seen in CI-like
    runs of tests/app).
    """
    yield
    if "qtbot" in request.fixturenames:
        gc.collect()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """An empty workspace directory."""
    ws = tmp_path / "workspace"
    ws.mkdir()
    return ws


# Every program the suite starts must come from .ci/run's packages or the venv
# (see tests/ci_programs.py): record them all, check them when the run ends.
_unprovided: list[ci_programs.Unprovided] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    if not getattr(sys, "_keyless_program_hook", False):
        sys.addaudithook(ci_programs.RECORDER)
        sys._keyless_program_hook = True  # type: ignore[attr-defined]
    ci_programs.RECORDER.active = True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    ci_programs.RECORDER.active = False
    if not ci_programs.dpkg_available() or not ci_programs.RECORDER.started:
        return
    _unprovided[:] = ci_programs.check(
        dict(ci_programs.RECORDER.started), ci_programs.ci_packages()
    )
    if _unprovided:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _unprovided:
        return
    terminalreporter.section("programs a fresh machine would not have", red=True)
    for problem in _unprovided:
        terminalreporter.line(f"the suite started {problem}", red=True)
