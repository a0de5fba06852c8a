"""The settings screen over the real rule store, settings file and sandbox detection."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from agent.host.policy import RuleStore
from agent.host.sandbox import Sandbox
from app.controllers.settings_controller import SettingsController
from app.paths import default_paths
from app.qt import Qt, QtWidgets
from app.settings import AppSettings, load_settings
from app.views.settings_view import SettingsView
from tests.app.keyboard import mnemonics, tab_sequence

pytestmark = pytest.mark.gui
QWidget = QtWidgets.QWidget


@pytest.fixture
def settings(workspace: Path) -> AppSettings:
    return AppSettings(workspace=str(workspace))


@pytest.fixture
def view(qtbot: QtBot, settings: AppSettings) -> Iterator[SettingsView]:
    paths = default_paths().ensure()
    controller = SettingsController(paths, settings)
    with qtbot.wait_signals([controller.rules_loaded, controller.sandbox_detected], timeout=20_000):
        widget = SettingsView(controller)
        qtbot.add_widget(widget)
    yield widget
    controller.wait()


def _texts(rule_list: QtWidgets.QListWidget) -> list[str]:
    return [rule_list.item(i).text() for i in range(rule_list.count())]


def test_user_rule_is_saved_in_the_rule_store(view: SettingsView, qtbot: QtBot) -> None:
    view.tool.setCurrentText("shell")
    qtbot.keyClicks(view.pattern, "git status")
    view.action.setCurrentIndex(view.action.findData("allow"))
    with qtbot.wait_signal(view.controller.rules_loaded, timeout=10_000):
        qtbot.mouseClick(view.add_rule_button, Qt.MouseButton.LeftButton)
    assert _texts(view.rule_lists["allow"]) == ["shell(git status)"]
    assert _texts(view.rule_lists["deny"]) == []
    assert view.pattern.text() == ""
    store = RuleStore(view.controller.paths.database)
    try:
        saved = store.stored()
    finally:
        store.close()
    assert [(str(s.rule), s.rule.action, s.rule.scope, s.workspace) for s in saved] == [
        ("shell(git status)", "allow", "user", None)
    ]


def test_workspace_rule_shows_only_in_workspace_scope(
    view: SettingsView, qtbot: QtBot, workspace: Path
) -> None:
    view.scope.setCurrentIndex(view.scope.findData("workspace"))
    view.tool.setCurrentText("http_request")
    view.pattern.setText("domain:api.github.com")
    view.action.setCurrentIndex(view.action.findData("deny"))
    with qtbot.wait_signal(view.controller.rules_loaded, timeout=10_000):
        qtbot.keyClick(view.pattern, Qt.Key.Key_Return)
    assert _texts(view.rule_lists["deny"]) == ["http_request(domain:api.github.com)"]
    view.scope.setCurrentIndex(view.scope.findData("user"))
    assert _texts(view.rule_lists["deny"]) == []
    store = RuleStore(view.controller.paths.database)
    try:
        saved = store.stored(workspace)
        assert [s.workspace for s in saved] == [str(workspace.resolve())]
        assert store.stored(None) == []
    finally:
        store.close()


def test_remove_selected_rule(view: SettingsView, qtbot: QtBot) -> None:
    view.tool.setCurrentText("write_file")
    view.action.setCurrentIndex(view.action.findData("ask"))
    with qtbot.wait_signal(view.controller.rules_loaded, timeout=10_000):
        view.add_rule()
    ask = view.rule_lists["ask"]
    assert _texts(ask) == ["write_file(*)"]
    assert not view.remove_rule_button.isEnabled()
    ask.setCurrentRow(0)
    assert view.remove_rule_button.isEnabled()
    with qtbot.wait_signal(view.controller.rules_loaded, timeout=10_000):
        qtbot.mouseClick(view.remove_rule_button, Qt.MouseButton.LeftButton)
    assert _texts(ask) == []


def test_invalid_rule_is_refused_with_the_reason(view: SettingsView, qtbot: QtBot) -> None:
    view.tool.setCurrentText("http_request")
    view.pattern.setText("api.github.com")  # missing the domain: prefix
    with qtbot.wait_signal(view.controller.error, timeout=10_000):
        view.add_rule()
    assert "domain:api.example.com" in view.message.text()
    assert all(rule_list.count() == 0 for rule_list in view.rule_lists.values())


def test_capacities_persist_to_the_settings_file(view: SettingsView, qtbot: QtBot) -> None:
    view.capacity["user"].setValue(2500)
    view.capacity["session"].setValue(700)
    view.auto_lock.setValue(3)
    with qtbot.wait_signal(view.controller.settings_changed, timeout=10_000):
        qtbot.mouseClick(view.save_button, Qt.MouseButton.LeftButton)
    on_disk = load_settings(view.controller.paths)
    assert (on_disk.memory.user, on_disk.memory.project, on_disk.memory.session) == (
        2500,
        1500,
        700,
    )
    assert on_disk.auto_lock_minutes == 3
    assert on_disk.workspace == view.controller.workspace
    assert "Saved" in view.message.text()


def test_second_launch_shows_saved_capacities(
    view: SettingsView, qtbot: QtBot, settings: AppSettings
) -> None:
    view.capacity["project"].setValue(4000)
    with qtbot.wait_signal(view.controller.settings_changed, timeout=10_000):
        view.save()
    paths = view.controller.paths
    again = SettingsController(paths, load_settings(paths))
    with qtbot.wait_signal(again.sandbox_detected, timeout=20_000):
        second = SettingsView(again)
        qtbot.add_widget(second)
    assert second.capacity["project"].value() == 4000
    again.wait()


def test_sandbox_status_says_what_it_means(view: SettingsView) -> None:
    text = view.sandbox_label.text()
    if Sandbox.detect().available:
        assert text.startswith("bubblewrap found")
        assert str(shutil.which("bwrap")) in text
    else:
        assert "OS isolation is off" in text


def test_paths_are_shown(view: SettingsView) -> None:
    paths = view.controller.paths
    assert view.path_fields["vault"].text() == str(paths.vault_file)
    assert view.path_fields["database"].text() == str(paths.database)
    assert view.path_fields["config"].text() == str(paths.settings_file)
    assert view.path_fields["vault"].isReadOnly()


def test_keyboard_reachability_and_labels(view: SettingsView) -> None:
    expected = [
        view.scope,
        *view.rule_lists.values(),
        view.tool,
        view.pattern,
        view.action,
        view.add_rule_button,
        *view.capacity.values(),
        view.auto_lock,
        view.save_button,
    ]
    assert tab_sequence(view, expected[0], len(expected)) == expected
    keys = mnemonics(view)
    assert keys and len(keys) == len(set(keys)), keys
    for widget in expected:
        if not isinstance(widget, QtWidgets.QPushButton):
            assert widget.accessibleName(), widget


def test_a_net_rule_is_added_listed_and_saved(view: SettingsView, qtbot: QtBot) -> None:
    view.tool.setCurrentText("net")
    assert view.tool.currentText() == "net"
    qtbot.keyClicks(view.pattern, "github.com, GET")
    view.action.setCurrentIndex(view.action.findData("allow"))
    with qtbot.wait_signal(view.controller.rules_loaded, timeout=10_000):
        qtbot.mouseClick(view.add_rule_button, Qt.MouseButton.LeftButton)
    assert _texts(view.rule_lists["allow"]) == ["net(github.com, GET)"]
    store = RuleStore(view.controller.paths.database)
    try:
        saved = [str(s.rule) for s in store.stored()]
    finally:
        store.close()
    assert saved == ["net(github.com, GET)"]
