"""Fixtures shared by the whole suite.

Every user and workspace path points into a tmp dir, so no test can touch the
real user's vault, memory or settings.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """An empty workspace directory."""
    ws = tmp_path / "workspace"
    ws.mkdir()
    return ws
