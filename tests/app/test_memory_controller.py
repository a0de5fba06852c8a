"""MemoryController over a real MemoryService (no widgets)."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from app.controllers.memory_controller import MemoryController, MemorySnapshot, TopicText
from app.qt import QObject
from memory.frontmatter import Provenance
from memory.service import MemoryService
from memory.settings import LevelTokens, MemorySettings
from models.fake import ScriptedModel


def dispose(qtbot: QtBot, controller: QObject) -> None:
    """Let queued results arrive, then delete the controller on the GUI thread."""
    qtbot.waitUntil(lambda: not controller.busy, timeout=30_000)  # type: ignore[attr-defined]
    controller.deleteLater()


def count_tokens(text: str) -> int:
    return len(text.split())


class Factory:
    """Builds real services and records the thread each was built on."""

    def __init__(self, tmp_path: Path, workspace: Path) -> None:
        self.tmp_path = tmp_path
        self.workspace = workspace
        self.threads: list[threading.Thread] = []
        self.built: list[MemoryService] = []

    def __call__(self) -> MemoryService:
        self.threads.append(threading.current_thread())
        service = MemoryService(
            user_dir=self.tmp_path / "memory",
            workspace=self.workspace,
            db_path=self.tmp_path / "keyless.db",
            session_id="s1",
            count_tokens=count_tokens,
            scan_secrets=lambda text: [],
            settings=MemorySettings(capacities=LevelTokens(user=100, project=50, session=100)),
        )
        self.built.append(service)
        return service


@pytest.fixture
def factory(tmp_path: Path, workspace: Path) -> Iterator[Factory]:
    f = Factory(tmp_path, workspace)
    yield f
    for service in f.built:
        service.close()


def snapshot(controller: MemoryController, qtbot: QtBot) -> MemorySnapshot:
    with qtbot.wait_signal(controller.snapshot_loaded, timeout=10_000) as blocker:
        controller.refresh()
    result = blocker.args[0]
    assert isinstance(result, MemorySnapshot)
    return result


def test_service_is_built_and_used_off_the_gui_thread(
    factory: Factory, qtbot: QtBot
) -> None:
    controller = MemoryController(factory)
    snap = snapshot(controller, qtbot)
    assert factory.threads and factory.threads[0] is not threading.main_thread()
    assert [level.level for level in snap.tree] == ["user", "project", "session"]
    assert {u.level: u.capacity for u in snap.usage} == {"user": 100, "project": 50,
                                                         "session": 100}
    dispose(qtbot, controller)


def test_reset_service_builds_a_new_one(factory: Factory, qtbot: QtBot) -> None:
    controller = MemoryController(factory)
    snapshot(controller, qtbot)
    with qtbot.wait_signal(controller.snapshot_loaded, timeout=10_000):
        controller.reset_service()
    assert len(factory.built) == 2
    with pytest.raises(sqlite3.ProgrammingError):  # the old one was closed
        factory.built[0].history(1)
    dispose(qtbot, controller)


def test_save_records_user_provenance_and_history(
    factory: Factory, qtbot: QtBot, workspace: Path
) -> None:
    controller = MemoryController(factory)
    with qtbot.wait_signal(controller.topic_saved, timeout=10_000) as saved:
        controller.create_topic("project", "Deploy steps")
    assert saved.args == ["project", "deploy-steps"]
    with qtbot.wait_signal(controller.topic_saved, timeout=10_000):
        controller.save_topic("project", "deploy-steps", "Run `make deploy` from main.")
    with qtbot.wait_signal(controller.topic_loaded, timeout=10_000) as loaded:
        controller.open_topic("project", "deploy-steps")
    topic = loaded.args[0]
    assert isinstance(topic, TopicText)
    assert topic.body.strip() == "Run `make deploy` from main."
    assert "source: user via gui" in topic.summary
    snap = snapshot(controller, qtbot)
    assert [c.summary for c in snap.history][:2] == [
        "remember project topic deploy-steps",
        "remember project topic deploy-steps",
    ]
    dispose(qtbot, controller)


def test_undo_conflict_is_explained_and_file_kept(
    factory: Factory, qtbot: QtBot, workspace: Path
) -> None:
    controller = MemoryController(factory)
    with qtbot.wait_signal(controller.topic_saved, timeout=10_000):
        controller.save_topic("project", "notes", "First version.")
    snap = snapshot(controller, qtbot)
    change_id = snap.history[0].change_id
    path = workspace / ".keyless" / "memory" / "topics" / "notes.md"
    path.write_text(path.read_text() + "\nEdited by hand.\n")
    hand_edited = path.read_text()
    with qtbot.wait_signal(controller.error, timeout=10_000) as blocker:
        controller.undo(change_id)
    assert blocker.args[0].startswith("Cannot undo:")
    assert path.read_text() == hand_edited
    dispose(qtbot, controller)


def test_opening_a_topic_does_not_count_as_a_use(factory: Factory, qtbot: QtBot) -> None:
    controller = MemoryController(factory)
    with qtbot.wait_signal(controller.topic_saved, timeout=10_000):
        controller.save_topic("user", "editor", "Helix.")
    for _ in range(2):
        with qtbot.wait_signal(controller.topic_loaded, timeout=10_000) as loaded:
            controller.open_topic("user", "editor")
    assert "used" not in loaded.args[0].summary
    dispose(qtbot, controller)


def test_unknown_level_is_an_error_not_a_crash(factory: Factory, qtbot: QtBot) -> None:
    controller = MemoryController(factory)
    with qtbot.wait_signal(controller.error, timeout=10_000) as blocker:
        controller.open_topic("galaxy", "x")
    assert "galaxy" in blocker.args[0]
    dispose(qtbot, controller)


def test_hostile_distill_proposal_still_ends_under_capacity(
    factory: Factory, qtbot: QtBot
) -> None:
    # remember keeps a level within its capacity: write roomy, as before a
    # settings change lowered it to the factory's 50.
    service = factory()
    service.settings = service.settings.model_copy(
        update={"capacities": LevelTokens(user=10_000, project=10_000, session=10_000)}
    )
    words = " ".join(["word"] * 30)
    for name in ("a", "b", "c"):
        service.remember(name, words, level="project", source=Provenance(trust="user"))
    hostile = {
        "operations": [
            {"op": "ADD", "target": "huge", "content": " ".join(["spam"] * 500)},
            {"op": "ARCHIVE", "target": "does-not-exist"},
            {"op": "MERGE", "target": "a", "content": "x", "sources": ["../../etc/passwd"]},
        ]
    }
    controller = MemoryController(
        factory, model_factory=lambda: ScriptedModel([json.dumps(hostile)] * 3)
    )
    before = snapshot(controller, qtbot)
    assert next(u for u in before.usage if u.level == "project").tokens > 50
    with qtbot.wait_signal(controller.distilled, timeout=30_000) as blocker:
        controller.distill()
    assert re.search(r"\b[1-9]\d* rejected", blocker.args[0]), blocker.args[0]
    after = snapshot(controller, qtbot)
    project = next(u for u in after.usage if u.level == "project")
    assert project.tokens <= project.capacity
    # Nothing lost: the topics are archived, still listed.
    names = {f.name for level in after.tree for f in level.files if f.kind == "topic"}
    assert {"a", "b", "c"} <= names
    dispose(qtbot, controller)


def test_distill_without_model_is_refused(factory: Factory, qtbot: QtBot) -> None:
    controller = MemoryController(factory)
    assert not controller.can_distill
    with qtbot.wait_signal(controller.error, timeout=1_000) as blocker:
        controller.distill()
    assert blocker.args == ["No model is configured for distillation."]
