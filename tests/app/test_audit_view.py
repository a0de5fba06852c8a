"""The audit screen over a real, hash-chained :class:`vault.audit.AuditLog`."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from app.controllers.audit_controller import AuditController, ChainResult
from app.qt import Qt, QtWidgets
from app.views.audit_view import COLUMNS, AuditView
from tests.app.keyboard import mnemonics, tab_sequence
from vault.audit import AuditLog

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_ignore("propagateSizeHints")]
QWidget = QtWidgets.QWidget

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


@pytest.fixture
def audit_log(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "keyless.db")
    log.record("grant", session_id="s1", reason="GITHUB_TOKEN for api.github.com", now=T0)
    log.record(
        "decision",
        session_id="s1",
        tool="shell",
        decision="deny",
        reason="rule shell(rm *)",
        now=T0 + timedelta(seconds=1),
    )
    log.record(
        "decision",
        session_id="s1",
        tool="read_file",
        decision="allow",
        reason="rule read_file(src/**)",
        now=T0 + timedelta(seconds=2),
    )
    log.record(
        "refuse",
        session_id="s2",
        tool="http_request",
        decision="deny",
        reason="host: not in scope",
        now=T0 + timedelta(seconds=3),
    )
    yield log
    log.close()


@pytest.fixture
def view(qtbot: QtBot, audit_log: AuditLog) -> Iterator[AuditView]:
    controller = AuditController(audit_log)
    with qtbot.wait_signal(controller.chain_checked, timeout=10_000):
        widget = AuditView(controller)
        qtbot.add_widget(widget)
    yield widget
    controller.wait()


def _column(view: AuditView, column: int) -> list[str]:
    proxy = view.proxy
    return [str(proxy.index(r, column).data()) for r in range(proxy.rowCount())]


def test_table_shows_every_entry_newest_first(view: AuditView) -> None:
    assert view.model.columnCount() == len(COLUMNS) == 5
    assert [view.model.headerData(i, Qt.Orientation.Horizontal) for i in range(5)] == [
        "Time",
        "Kind",
        "Tool",
        "Decision",
        "Reason",
    ]
    assert _column(view, 1) == ["refuse", "decision", "decision", "grant"]
    assert _column(view, 4)[0] == "host: not in scope"
    assert view.count_label.text() == "4 of 4 entries shown"


def test_intact_chain_is_reported(view: AuditView) -> None:
    assert view.chain_label.text().startswith("Hash chain intact: all 4 entries verified, but")
    assert "UNKEYED" in view.chain_label.text()


def test_filters_by_kind_decision_and_text(view: AuditView, qtbot: QtBot) -> None:
    view.kind_filter.setCurrentIndex(view.kind_filter.findData("decision"))
    assert _column(view, 2) == ["read_file", "shell"]
    view.decision_filter.setCurrentIndex(view.decision_filter.findData("deny"))
    assert _column(view, 2) == ["shell"]
    view.kind_filter.setCurrentIndex(0)
    assert _column(view, 2) == ["http_request", "shell"]
    view.decision_filter.setCurrentIndex(0)
    qtbot.keyClicks(view.search, "GITHUB")
    assert _column(view, 1) == ["grant"]
    assert view.count_label.text() == "1 of 4 entries shown"
    view.search.clear()
    assert view.proxy.rowCount() == 4


def test_sorting_by_time_follows_chain_order(view: AuditView) -> None:
    view.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
    assert _column(view, 1) == ["grant", "decision", "decision", "refuse"]


def test_new_entries_appear_on_refresh(view: AuditView, audit_log: AuditLog, qtbot: QtBot) -> None:
    audit_log.record("vault.add", reason="added OPENAI_KEY")
    with qtbot.wait_signal(view.controller.chain_checked, timeout=10_000):
        qtbot.mouseClick(view.refresh_button, Qt.MouseButton.LeftButton)
    assert view.model.rowCount() == 5
    assert "all 5 entries" in view.chain_label.text()
    assert view.kind_filter.findData("vault.add") >= 0


def test_coming_back_to_the_page_reloads(
    view: AuditView, audit_log: AuditLog, qtbot: QtBot
) -> None:
    view.show()
    view.hide()
    audit_log.record("decision", tool="write_file", decision="allow", reason="once")
    with qtbot.wait_signal(view.controller.chain_checked, timeout=10_000):
        view.show()
    assert view.model.rowCount() == 5


def test_tampered_row_breaks_the_chain(
    view: AuditView, audit_log: AuditLog, qtbot: QtBot
) -> None:
    # Someone with the file drops the append-only trigger and softens a denial.
    conn = sqlite3.connect(audit_log.path)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("UPDATE audit_log SET decision = 'allow' WHERE id = 2")
    conn.commit()
    conn.close()
    with qtbot.wait_signal(view.controller.chain_checked, timeout=10_000) as blocker:
        view.refresh()
    result = blocker.args[0]
    assert isinstance(result, ChainResult)
    assert not result.ok and result.first_bad_id == 2
    assert view.chain_label.text().startswith("Hash chain BROKEN at entry 2")


def test_unreadable_log_is_reported(qtbot: QtBot, tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "gone.db")
    log.close()  # every query now fails inside the log
    controller = AuditController(log)
    with qtbot.wait_signal(controller.error, timeout=10_000) as blocker:
        widget = AuditView(controller)
        qtbot.add_widget(widget)
    assert blocker.args[0].startswith("Cannot read the audit log")
    qtbot.waitUntil(lambda: widget.chain_label.text().startswith("Cannot read"))
    controller.wait()


def test_keyboard_reachability_and_labels(view: AuditView) -> None:
    expected = [
        view.refresh_button,
        view.search,
        view.kind_filter,
        view.decision_filter,
        view.table,
    ]
    assert tab_sequence(view, expected[0], len(expected)) == expected
    keys = mnemonics(view)
    assert keys and len(keys) == len(set(keys)), keys
    labelled = (view.search, view.kind_filter, view.decision_filter, view.table, view.chain_label)
    for widget in labelled:
        assert widget.accessibleName()
