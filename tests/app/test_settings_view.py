"""The settings screen over the real rule store, settings file and sandbox detection."""

from __future__ import annotations

import os
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
from models import kvstate
from tests.app.keyboard import mnemonics, tab_sequence

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_ignore("propagateSizeHints")]
QWidget = QtWidgets.QWidget


@pytest.fixture
def settings(workspace: Path) -> AppSettings:
    return AppSettings(workspace=str(workspace))


@pytest.fixture
def view(qtbot: QtBot, settings: AppSettings) -> Iterator[SettingsView]:
    paths = default_paths().ensure()
    controller = SettingsController(paths, settings)
    signals = [controller.rules_loaded, controller.sandbox_detected, controller.kv_states_measured]
    with qtbot.wait_signals(signals, timeout=20_000):
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
        view.saved_state.cap,
        view.saved_state.apply_button,  # Delete is disabled: nothing saved yet
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


def test_the_network_section_lists_net_rules_and_pinned_hosts(
    qtbot: QtBot, workspace: Path
) -> None:
    paths = default_paths().ensure()
    controller = SettingsController(
        paths, AppSettings(workspace=str(workspace), egress_pinned_hosts=["bank.example"])
    )
    signals = [controller.rules_loaded, controller.sandbox_detected, controller.kv_states_measured]
    with qtbot.wait_signals(signals, timeout=20_000):
        view = SettingsView(controller)
        qtbot.add_widget(view)
    try:
        assert view.network_rules.rows() == []
        assert view.network_rules.empty.isVisibleTo(view)
        assert view.network_rules.pinned_hosts() == ["bank.example"]
        assert "never with a capability" in view.network_rules.pinned.text()
        for tool, pattern, action in (("net", "*.pypi.org, GET", "allow"),
                                      ("shell", "git status", "allow"),
                                      ("net", "evil.example", "deny")):
            view.tool.setCurrentText(tool)
            view.pattern.setText(pattern)
            view.action.setCurrentIndex(view.action.findData(action))
            with qtbot.wait_signal(controller.rules_loaded, timeout=10_000):
                view.add_rule()
        # Only the net rules, deny first; the shell rule stays in the editor's lists.
        assert view.network_rules.rows() == [
            ("evil.example", "any", "deny", "user"),
            ("*.pypi.org", "GET", "allow", "user"),
        ]
        assert not view.network_rules.empty.isVisibleTo(view)
    finally:
        controller.wait()


def test_a_host_is_pinned_as_the_proxy_matches_it_and_unpinned(
    view: SettingsView, qtbot: QtBot
) -> None:
    box = view.network_rules
    assert not box.pinned_list.isVisibleTo(view) and not box.pin_button.isEnabled()
    qtbot.keyClicks(box.pin_host, " Bank.Example. ")
    with qtbot.wait_signal(view.controller.settings_changed, timeout=10_000):
        qtbot.mouseClick(box.pin_button, Qt.MouseButton.LeftButton)
    # Lower case, no trailing dot: what the proxy compares a tunnel's host with.
    assert box.pinned_hosts() == ["bank.example"]
    assert box.pinned_list.isVisibleTo(view)
    assert box.pin_host.text() == ""
    qtbot.wait_until(lambda: "Pinned bank.example" in view.message.text())
    paths = view.controller.paths
    assert load_settings(paths).egress_pinned_hosts == ["bank.example"]
    # An internationalised name is stored as the proxy sees it (IDNA), once.
    both = ["bank.example", "xn--bcher-kva.example"]
    box.pin_host.setText("bücher.example")
    qtbot.keyClick(box.pin_host, Qt.Key.Key_Return)
    qtbot.wait_until(lambda: box.pinned_hosts() == both)
    box.pin_host.setText("BANK.example")
    qtbot.keyClick(box.pin_host, Qt.Key.Key_Return)
    qtbot.wait_until(lambda: "bank.example is already pinned" in view.message.text())
    assert box.pin_host.text() == "" and box.pinned_hosts() == both
    assert load_settings(paths).egress_pinned_hosts == both
    box.pinned_list.setCurrentRow(0)
    assert box.unpin_button.isEnabled()
    with qtbot.wait_signal(view.controller.settings_changed, timeout=10_000):
        qtbot.mouseClick(box.unpin_button, Qt.MouseButton.LeftButton)
    assert box.pinned_hosts() == ["xn--bcher-kva.example"]
    assert load_settings(paths).egress_pinned_hosts == ["xn--bcher-kva.example"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("https://bank.example/login", "not a URL"),
        ("*.bank.example", "not a wildcard"),
        ("bank.example:443", "without a port"),
        ("bank example", "not a valid host name"),
    ],
)
def test_a_pin_that_is_not_a_host_is_refused_with_the_reason_and_kept(
    view: SettingsView, qtbot: QtBot, text: str, reason: str
) -> None:
    box = view.network_rules
    qtbot.keyClicks(box.pin_host, text)
    qtbot.mouseClick(box.pin_button, Qt.MouseButton.LeftButton)
    view.controller.wait()
    assert reason in view.message.text() and text in view.message.text()
    assert box.pin_host.text() == text  # left to be corrected, not lost
    assert box.pinned_hosts() == []
    assert not view.controller.paths.settings_file.exists()


# -- saved model state ----------------------------------------------------------------


def _save_state(view: SettingsView, session: str, size: int, age_s: int) -> Path:
    """A real state file of about ``size`` bytes, ``age_s`` seconds old, for ``session``."""
    store = kvstate.StateStore(view.controller.paths.kvstate_dir, 0)
    path = store.path_for(session)
    binding = kvstate.Binding("ab" * 32, 2048, "rope=none", kvstate.tokens_digest([1, 2, 3]))
    kvstate.write(path, binding, {"tokens": [1, 2, 3]}, os.urandom(size))
    stamp = path.stat().st_mtime - age_s
    os.utime(path, (stamp, stamp))
    return path


def _remeasure(view: SettingsView, qtbot: QtBot) -> None:
    with qtbot.wait_signal(view.controller.kv_states_measured, timeout=10_000):
        view.controller.refresh()


def _answer(view: SettingsView, button: QtWidgets.QMessageBox.StandardButton) -> None:
    box = view.saved_state.delete_question
    assert box is not None and box.isVisible()
    assert "2 sessions" in box.text()
    found = box.button(button)
    assert found is not None
    found.click()


def test_saved_model_state_shows_the_cap_and_the_disk_used(
    view: SettingsView, qtbot: QtBot
) -> None:
    box = view.saved_state
    assert box.cap.value() == 2048 and box.cap.suffix() == " MB"
    assert box.usage.text() == "Disk used: none (no saved state)"
    assert not box.delete_button.isEnabled()
    _save_state(view, "s-old", 1024 * 1024, age_s=60)
    _save_state(view, "s-new", 512 * 1024, age_s=0)
    _remeasure(view, qtbot)
    assert box.usage.text() == "Disk used: 1.5 MB (2 sessions)"
    assert box.delete_button.isEnabled()


def test_delete_saved_states_asks_first_and_keeps_them_on_no(
    view: SettingsView, qtbot: QtBot
) -> None:
    paths = [_save_state(view, f"s{i}", 4096, age_s=i) for i in range(2)]
    _remeasure(view, qtbot)
    qtbot.mouseClick(view.saved_state.delete_button, Qt.MouseButton.LeftButton)
    _answer(view, QtWidgets.QMessageBox.StandardButton.No)
    assert view.saved_state.delete_question is None
    assert all(p.exists() for p in paths)
    assert view.controller.wait(10_000) and all(p.exists() for p in paths)

    qtbot.mouseClick(view.saved_state.delete_button, Qt.MouseButton.LeftButton)
    with qtbot.wait_signal(view.controller.kv_states_measured, timeout=10_000) as measured:
        _answer(view, QtWidgets.QMessageBox.StandardButton.Yes)
    assert measured.args is not None and measured.args[0].files == 0
    assert not any(p.parent.exists() for p in paths)  # each session's directory goes
    assert view.saved_state.usage.text() == "Disk used: none (no saved state)"
    assert not view.saved_state.delete_button.isEnabled()
    assert "Deleted the saved model state of 2 session(s)" in view.message.text()


def test_a_lower_cap_is_saved_and_deletes_the_oldest_now(view: SettingsView, qtbot: QtBot) -> None:
    old = _save_state(view, "s-old", 700 * 1024, age_s=60)
    new = _save_state(view, "s-new", 700 * 1024, age_s=0)
    _remeasure(view, qtbot)
    view.saved_state.cap.setValue(1)
    with qtbot.wait_signal(view.controller.kv_states_measured, timeout=10_000):
        qtbot.mouseClick(view.saved_state.apply_button, Qt.MouseButton.LeftButton)
    assert not old.exists() and new.exists()
    assert load_settings(view.controller.paths).kv_state_cap_mb == 1
    assert view.controller.settings.kv_state_cap_mb == 1  # the shared settings the host reads
    assert "the 1 oldest saved states were deleted" in view.message.text()
    assert view.saved_state.usage.text() == "Disk used: 0.7 MB (1 session)"


def test_cap_zero_turns_saving_off_and_leaves_the_files(view: SettingsView, qtbot: QtBot) -> None:
    kept = _save_state(view, "s1", 4096, age_s=0)
    view.saved_state.cap.setValue(0)
    assert view.saved_state.cap.text() == "Off (nothing saved)"
    with qtbot.wait_signal(view.controller.kv_states_measured, timeout=10_000):
        qtbot.keyClick(view.saved_state.apply_button, Qt.Key.Key_Space)
    assert kept.exists()
    assert load_settings(view.controller.paths).kv_state_cap_mb == 0
    assert "Saved model state is off" in view.message.text()


def test_a_short_window_does_not_squeeze_the_fields_of_the_right_column(
    view: SettingsView, qtbot: QtBot
) -> None:
    view.resize(1000, 500)  # shorter than the page: in the app its scroll area scrolls
    view.show()
    qtbot.waitExposed(view)
    for spin in view.capacity.values():
        assert spin.height() >= spin.sizeHint().height()
