"""SettingsController over the real RuleStore and settings file (no widgets)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from pytestqt.qtbot import QtBot

from agent.host.policy import RuleStore
from app.controllers.settings_controller import SettingsController
from app.paths import AppPaths, default_paths
from app.qt import QObject
from app.settings import AppSettings, load_settings, save_settings


def dispose(qtbot: QtBot, controller: QObject) -> None:
    """Let queued results arrive, then delete the controller on the GUI thread."""
    qtbot.waitUntil(lambda: not controller.busy, timeout=30_000)  # type: ignore[attr-defined]
    controller.deleteLater()


@pytest.fixture
def paths() -> AppPaths:
    return default_paths().ensure()


def test_rule_store_is_opened_on_the_worker_thread(paths: AppPaths, qtbot: QtBot) -> None:
    threads: list[threading.Thread] = []

    def store() -> RuleStore:
        threads.append(threading.current_thread())
        return RuleStore(paths.database)

    controller = SettingsController(paths, AppSettings(), rule_store_factory=store)
    with qtbot.wait_signal(controller.rules_loaded, timeout=10_000) as blocker:
        controller.refresh()
    assert blocker.args == [[]]
    assert threads and threads[0] is not threading.main_thread()
    # sqlite3 refuses a connection used from another thread: reuse proves one thread.
    with qtbot.wait_signal(controller.rules_loaded, timeout=10_000):
        controller.add_rule("read_file", "src/**", "allow", "user")
    assert len(threads) == 1
    dispose(qtbot, controller)


def test_workspace_rule_without_workspace_is_refused(paths: AppPaths, qtbot: QtBot) -> None:
    controller = SettingsController(paths, AppSettings(workspace=None))
    with qtbot.wait_signal(controller.error, timeout=1_000) as blocker:
        controller.add_rule("shell", "make", "allow", "workspace")
    assert "workspace" in blocker.args[0]
    dispose(qtbot, controller)


def test_invalid_capacity_is_refused_and_file_untouched(
    paths: AppPaths, qtbot: QtBot
) -> None:
    save_settings(paths, AppSettings())
    before = paths.settings_file.read_bytes()
    controller = SettingsController(paths, AppSettings())
    with qtbot.wait_signal(controller.error, timeout=1_000) as blocker:
        controller.save_preferences(user=5, project=1500, session=1000, auto_lock_minutes=10)
    assert blocker.args[0].startswith("Invalid setting")
    assert paths.settings_file.read_bytes() == before
    dispose(qtbot, controller)


def test_unwritable_settings_are_reported(tmp_path: Path, qtbot: QtBot) -> None:
    paths = AppPaths(data_dir=tmp_path / "data", config_dir=tmp_path / "config").ensure()
    paths.settings_file.mkdir()  # something that is not a file is in the way
    controller = SettingsController(paths, AppSettings())
    with qtbot.wait_signal(controller.error, timeout=10_000) as blocker:
        controller.save_preferences(user=900, project=900, session=900, auto_lock_minutes=5)
    assert blocker.args[0].startswith("cannot write settings")
    assert controller.settings.memory.user == 1500  # not updated in memory either
    assert paths.settings_file.is_dir()
    dispose(qtbot, controller)


def test_saved_settings_keep_other_fields(paths: AppPaths, qtbot: QtBot) -> None:
    start = AppSettings(workspace="/tmp/ws", recent_workspaces=["/tmp/ws"])
    controller = SettingsController(paths, start)
    with qtbot.wait_signal(controller.settings_changed, timeout=10_000) as blocker:
        controller.save_preferences(user=900, project=800, session=700, auto_lock_minutes=2)
    saved = load_settings(paths)
    assert blocker.args[0] == saved
    assert (saved.memory.user, saved.memory.project, saved.memory.session) == (900, 800, 700)
    assert saved.workspace == "/tmp/ws" and saved.recent_workspaces == ["/tmp/ws"]
    assert saved.model == start.model
    dispose(qtbot, controller)


def test_a_pinned_host_saved_here_makes_the_next_errand_use_a_new_host(
    paths: AppPaths, qtbot: QtBot, tmp_path: Path, workspace: Path
) -> None:
    import json

    from app.controllers.agent_runner import agent_host_factory
    from app.controllers.errand_controller import RunnerContext
    from app.services import AppServices

    services = AppServices()
    script = tmp_path / "script.json"
    script.write_text(json.dumps([json.dumps({"final": "ok"})]))
    factory = agent_host_factory(services, lambda: None, scripted_model=script)
    runner: Any = factory(RunnerContext("s1", workspace, Any, Any))  # type: ignore[arg-type]
    try:
        assert not runner.outdated()
        # The settings screen and the errands share the services' settings object.
        controller = SettingsController(services.paths, services.settings)
        with qtbot.wait_signal(controller.settings_changed, timeout=10_000):
            assert controller.pin_host("bank.example")
        assert runner.outdated()  # a running errand keeps its proxy; the next one gets the pin
        assert services.egress_settings().pinned_hosts == ("bank.example",)
        dispose(qtbot, controller)
    finally:
        runner.close()
