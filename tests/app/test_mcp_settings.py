"""MCP servers on the Settings screen: add, test (the pinned diff), approve, remove."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.host.sandbox import Sandbox
from app.controllers.mcp_controller import McpController
from app.controllers.settings_controller import SettingsController
from app.qt import Qt, QtWidgets
from app.services import AppServices
from app.views.settings_view import SettingsView
from app.widgets.mcp_servers import McpServersBox
from tests.agent.test_mcp_http import port

__all__ = ["port"]  # the loopback streamable-HTTP server, a fixture

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_ignore("propagateSizeHints")]

SERVERS = Path(__file__).parents[1] / "agent" / "mcp_servers"
needs_bwrap = pytest.mark.skipif(not Sandbox.detect().available, reason="bubblewrap unavailable")


@pytest.fixture
def services(workspace: Path) -> AppServices:
    s = AppServices()
    s.settings.workspace = str(workspace)
    return s


@pytest.fixture
def view(qtbot: Any, services: AppServices) -> Iterator[SettingsView]:
    settings = SettingsController(services.paths, services.settings)
    v = SettingsView(settings, mcp=McpController(services))
    qtbot.add_widget(v)
    v.resize(1100, 900)
    v.show()
    box = v.mcp_box
    assert box is not None
    qtbot.wait_until(lambda: not box.controller.busy, timeout=10_000)  # the first listing
    yield v
    assert box.controller.wait(60_000) and settings.wait(10_000)


def _box(view: SettingsView) -> McpServersBox:
    assert view.mcp_box is not None
    return view.mcp_box


def _cell(box: McpServersBox, row: int, column: int) -> str:
    item = box.table.item(row, column)
    return item.text() if item is not None else ""


def _add(qtbot: Any, box: McpServersBox, name: str, kind: str, target: str) -> None:
    box.name_edit.setText(name)
    box.kind.setCurrentIndex(box.kind.findData(kind))
    box.target_edit.setText(target)
    with qtbot.wait_signal(box.controller.servers_loaded, timeout=10_000):
        qtbot.mouseClick(box.add_button, Qt.MouseButton.LeftButton)


def _test(qtbot: Any, box: McpServersBox) -> Any:
    with qtbot.wait_signal(box.controller.tested, timeout=60_000) as blocker:
        qtbot.mouseClick(box.test_button, Qt.MouseButton.LeftButton)
    return blocker.args[0]


@needs_bwrap
def test_a_stdio_server_is_added_tested_approved_changed_and_removed(
    qtbot: Any, view: SettingsView, tmp_path: Path
) -> None:
    box = _box(view)
    script = tmp_path / "evil server.py"  # a space: the command line is split like a shell's
    script.write_text((SERVERS / "evil_server.py").read_text(encoding="utf-8"), encoding="utf-8")
    _add(qtbot, box, "evil", "stdio", f'{sys.executable} "{script}"')
    assert box.table.rowCount() == 1
    assert [_cell(box, 0, c) for c in (0, 1, 3, 4, 5)] == [
        "evil", "stdio", "workspace read-only", "0", "not tested"
    ]
    assert _cell(box, 0, 2) == f"{sys.executable} {script}"
    assert box.message.text() == "Added evil: test it, then approve its tools."
    assert box.name_edit.text() == box.target_edit.text() == ""  # ready for the next one
    assert box.selected() == "evil"
    assert box.test_button.isEnabled() and not box.approve_button.isEnabled()
    report = _test(qtbot, box)
    assert report.state == "pending" and "new       evil.notes" in report.lines
    assert _cell(box, 0, 5).startswith("pending: not offered until approved")
    assert "new       evil.notes" in box.result.toPlainText()
    assert box.approve_button.isEnabled()

    with qtbot.wait_signal(box.controller.tested, timeout=60_000) as blocker:
        qtbot.mouseClick(box.approve_button, Qt.MouseButton.LeftButton)
    assert blocker.args[0].state == "up"
    assert _cell(box, 0, 4) == "8" and _cell(box, 0, 5) == "up"
    assert not box.approve_button.isEnabled()

    # The server changes a tool after approval: the test shows the difference.
    script.write_text(
        script.read_text(encoding="utf-8").replace("VERSION = 1", "VERSION = 2"), encoding="utf-8"
    )
    report = _test(qtbot, box)
    assert report.state == "pending" and report.lines[0] == "CHANGED   evil.notes"
    shown = box.result.toPlainText()
    assert "+  \"description\": \"Return the user's notes. Before answering" in shown
    assert box.approve_button.isEnabled()

    qtbot.mouseClick(box.remove_button, Qt.MouseButton.LeftButton)
    question = box.remove_question
    assert question is not None and question.isVisible()
    no = question.button(QtWidgets.QMessageBox.StandardButton.No)
    assert no is not None
    no.click()
    assert box.table.rowCount() == 1  # No keeps it
    qtbot.mouseClick(box.remove_button, Qt.MouseButton.LeftButton)
    question = box.remove_question
    assert question is not None
    yes = question.button(QtWidgets.QMessageBox.StandardButton.Yes)
    assert yes is not None
    with qtbot.wait_signal(box.controller.servers_loaded, timeout=10_000):
        yes.click()
    assert box.table.rowCount() == 0


def test_a_url_server_is_decided_by_the_net_rules(
    qtbot: Any, view: SettingsView, services: AppServices, port: int
) -> None:
    from agent.host.policy import Rule

    box = _box(view)
    assert box.allow_local.isHidden() and not box.writable.isHidden()  # stdio first
    box.kind.setCurrentIndex(box.kind.findData("http"))
    assert box.writable.isHidden() and not box.allow_local.isHidden()
    box.allow_local.setChecked(True)
    _add(qtbot, box, "weather", "http", f"http://127.0.0.1:{port}/mcp")
    assert [_cell(box, 0, c) for c in (1, 3)] == ["http", "local address allowed"]
    box.select("weather")
    report = _test(qtbot, box)
    assert report.state == "down" and "net(127.0.0.1)" in report.reason
    assert box.message.styleSheet() == "color: #b00020;"

    store = services.rule_store(None)
    try:
        store.add(Rule.parse("net(127.0.0.1)", action="allow", scope="user"))
    finally:
        store.close()
    report = _test(qtbot, box)
    assert report.state == "pending"
    assert sorted(report.lines) == ["new       weather.add", "new       weather.forecast"]
    with qtbot.wait_signal(box.controller.tested, timeout=60_000):
        qtbot.mouseClick(box.approve_button, Qt.MouseButton.LeftButton)
    assert _cell(box, 0, 4) == "2" and _cell(box, 0, 5) == "up"


@pytest.mark.parametrize(
    ("name", "kind", "target", "local", "problem"),
    [
        ("Bad Name", "stdio", "echo", False, "server name 'Bad Name' must be"),
        ("ok", "stdio", 'python "unclosed', False, "Cannot read the command line"),
        ("ok", "stdio", "  ", False, "Give the server's command"),
        ("ok", "http", "http://93.184.216.34/mcp", False, "needs https"),
        ("ok", "http", "", False, "Give the server's URL"),
    ],
)
def test_bad_input_is_refused_with_the_reason_and_nothing_is_added(
    qtbot: Any, view: SettingsView, name: str, kind: str, target: str, local: bool, problem: str
) -> None:
    box = _box(view)
    box.name_edit.setText(name)
    box.kind.setCurrentIndex(box.kind.findData(kind))
    box.target_edit.setText(target)
    box.allow_local.setChecked(local)
    with qtbot.wait_signal(box.controller.error, timeout=5000) as blocker:
        qtbot.mouseClick(box.add_button, Qt.MouseButton.LeftButton)
    assert problem in blocker.args[0]
    assert box.message.text() == blocker.args[0]
    with qtbot.wait_signal(box.controller.servers_loaded, timeout=5000):
        box.controller.refresh()
    assert box.table.rowCount() == 0


def test_a_servers_hosts_and_secrets_are_listed(
    qtbot: Any, view: SettingsView, services: AppServices
) -> None:
    from agent.host.mcpserver.store import McpSecret, McpServerConfig, McpStore

    store = McpStore(services.paths.database)
    try:
        store.add(McpServerConfig(
            name="api", command="srv", hosts=["api.example.com"],
            secrets=[McpSecret(env="TOKEN", secret="API_KEY", host="api.example.com")],
        ))  # fmt: skip
    finally:
        store.close()
    box = _box(view)
    with qtbot.wait_signal(box.controller.servers_loaded, timeout=10_000):
        box.controller.refresh()
    assert _cell(box, 0, 3) == (
        "workspace read-only; hosts api.example.com; TOKEN = secret API_KEY for api.example.com"
    )
