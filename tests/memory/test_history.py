from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory.errors import InvalidMemoryError, UndoConflictError
from memory.frontmatter import Provenance
from memory.service import MemoryService
from tests.memory.helpers import ServiceFactory

MODEL = Provenance(trust="model")


def snapshot(*roots: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for root in roots:
        if root.exists():
            for p in sorted(root.rglob("*")):
                if p.is_file():
                    files[str(p)] = p.read_bytes()
    return files


def test_undo_of_a_creation_removes_the_files(service: MemoryService, workspace: Path) -> None:
    before = snapshot(workspace)
    change = service.remember("New", "text", level="project", source=MODEL)
    assert change.id is not None
    undo = service.undo(change.id)
    assert snapshot(workspace) == before
    assert undo.op == "undo" and undo.undo_of == change.id
    history = service.history()
    assert [c.op for c in history] == ["undo", "remember"]
    assert history[1].undone_by == undo.id
    assert service.recall("text") == []


def test_undo_restores_exact_bytes_including_hand_formatting(
    service: MemoryService, workspace: Path
) -> None:
    memory_md = workspace / ".keyless" / "memory" / "MEMORY.md"
    memory_md.parent.mkdir(parents=True)
    memory_md.write_bytes(b"# Mine\r\nodd   spacing\t\r\n")
    service.remember("x", "one", level="project", source=MODEL)
    before = snapshot(workspace)
    change = service.remember("x", "two", level="project", source=MODEL)
    assert change.id is not None
    service.undo(change.id)
    assert snapshot(workspace) == before


def test_undo_refuses_when_a_file_changed_since(service: MemoryService, workspace: Path) -> None:
    change = service.remember("x", "one", level="project", source=MODEL)
    assert change.id is not None
    topic = workspace / ".keyless" / "memory" / "topics" / "x.md"
    topic.write_text(topic.read_text() + "edited by hand\n")
    edited = snapshot(workspace)
    with pytest.raises(UndoConflictError, match=r"x\.md has changed since"):
        service.undo(change.id)
    assert snapshot(workspace) == edited  # nothing touched


def test_undo_twice_or_unknown_is_refused(service: MemoryService) -> None:
    change = service.remember("x", "one", level="user", source=MODEL)
    assert change.id is not None
    service.undo(change.id)
    with pytest.raises(InvalidMemoryError, match="already undone"):
        service.undo(change.id)
    with pytest.raises(InvalidMemoryError, match="no memory change with id 999"):
        service.undo(999)


def test_undo_of_an_undo_redoes(service: MemoryService, workspace: Path) -> None:
    change = service.remember("x", "one", level="project", source=MODEL)
    assert change.id is not None
    after = snapshot(workspace)
    undo = service.undo(change.id)
    assert undo.id is not None
    service.undo(undo.id)
    assert snapshot(workspace) == after


ops = st.lists(
    st.tuples(
        st.sampled_from(["remember", "forget", "restore"]),
        st.sampled_from(["user", "project", "session"]),
        st.sampled_from(["alpha", "beta", "gamma"]),
        st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40),
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=ops)
def test_undoing_every_change_newest_first_restores_exact_bytes(
    make_service: ServiceFactory, tmp_path_factory: pytest.TempPathFactory, steps: list
) -> None:
    root = tmp_path_factory.mktemp("h")
    svc = make_service(user_dir=root / "u", workspace=root / "ws", db_path=root / "k.db")
    states = [snapshot(root / "u", root / "ws")]
    ids = []
    for op, level, name, text in steps:
        try:
            if op == "remember":
                change = svc.remember(name, text, level=level, source=MODEL)
            elif op == "forget":
                change = svc.forget(level, name, reason="test")
            else:
                change = svc.restore(level, name)
        except InvalidMemoryError:  # empty content, or no such topic yet
            continue
        assert change.id is not None
        ids.append(change.id)
        states.append(snapshot(root / "u", root / "ws"))
    for change_id, expected in zip(reversed(ids), reversed(states[:-1]), strict=True):
        svc.undo(change_id)
        assert snapshot(root / "u", root / "ws") == expected
