from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from memory.errors import (
    InvalidMemoryError,
    MemoryErrorBase,
    SecretInMemoryError,
    SecretScanError,
    TopicNotFoundError,
)
from memory.frontmatter import Provenance
from memory.service import MemoryService
from tests.memory.helpers import SECRETS, ServiceFactory

MODEL = Provenance(tool="remember", trust="model")


def front(path: Path) -> dict[str, object]:
    text = path.read_text()
    data = yaml.safe_load(text.split("---\n")[1])
    assert isinstance(data, dict)
    return data


def test_remember_writes_a_topic_with_provenance_and_an_index_line(
    service: MemoryService, workspace: Path
) -> None:
    change = service.remember("Release process", "Tag, then push.", level="project", source=MODEL)
    path = workspace / ".keyless" / "memory" / "topics" / "release-process.md"
    meta = front(path)
    assert meta["title"] == "Release process" and meta["status"] == "active"
    assert meta["source"] == {"session": "s1", "tool": "remember", "trust": "model"}
    assert path.read_text().endswith("\n\nTag, then push.\n")
    index = (workspace / ".keyless" / "memory" / "MEMORY.md").read_text()
    assert "- [Release process](topics/release-process.md): Tag, then push." in index
    assert change.id is not None and change.op == "remember" and str(path) in change.paths
    assert "+Tag, then push." in change.diff


def test_remember_again_updates_the_body_and_keeps_created(service: MemoryService) -> None:
    service.remember("Ports", "API on 8080.", level="user", source=MODEL)
    first = service.read_topic("user", "ports")
    change = service.remember("ports", "API on 9090.", level="user", source=MODEL)
    second = service.read_topic("user", "ports")
    assert second.body == "API on 9090.\n" and second.meta.title == "Ports"
    assert second.meta.created == first.meta.created
    assert "-API on 8080." in change.diff and "+API on 9090." in change.diff


def test_secrets_and_canaries_are_refused_by_name_never_value(
    service: MemoryService, workspace: Path
) -> None:
    for name, value in SECRETS.items():
        with pytest.raises(SecretInMemoryError) as info:
            service.remember("creds", f"the key is {value}", level="project", source=MODEL)
        assert info.value.names == (name,)
        assert name in str(info.value) and value not in str(info.value)
    with pytest.raises(SecretInMemoryError):
        service.remember(f"topic {SECRETS['CANARY_1']}", "x", level="user", source=MODEL)
    service.remember("keep", "fine", level="project", source=MODEL)
    with pytest.raises(SecretInMemoryError):
        service.forget("project", "keep", reason=f"leaked {SECRETS['GITHUB_TOKEN']}")
    assert not (workspace / ".keyless" / "memory" / "topics" / "creds.md").exists()
    assert service.read_topic("project", "keep").active
    assert [c.op for c in service.history()] == ["remember"]


def test_bad_input_is_refused_clearly(service: MemoryService) -> None:
    with pytest.raises(InvalidMemoryError, match="unknown memory level 'global'"):
        service.remember("x", "y", level="global", source=MODEL)
    with pytest.raises(InvalidMemoryError, match="content is empty"):
        service.remember("x", "  \n", level="user", source=MODEL)
    with pytest.raises(InvalidMemoryError, match="the most is 20000"):
        service.remember("x", "y" * 20_001, level="user", source=MODEL)
    with pytest.raises(InvalidMemoryError, match="invalid topic name"):
        service.read_topic("user", "../../etc/passwd")
    with pytest.raises(TopicNotFoundError, match="no user topic named 'nope'"):
        service.forget("user", "nope", reason="x")
    assert issubclass(SecretInMemoryError, MemoryErrorBase)


def test_forget_archives_and_restore_brings_back(service: MemoryService, workspace: Path) -> None:
    service.remember("Flaky test", "test_x flakes on CI.", level="project", source=MODEL)
    service.forget("project", "flaky-test", reason="fixed in #12")
    path = workspace / ".keyless" / "memory" / "topics" / "flaky-test.md"
    meta = front(path)
    assert meta["status"] == "archived" and meta["archived_reason"] == "fixed in #12"
    assert "flaky" not in service.load_context().text.lower()
    hits = service.recall("flakes")
    assert [(h.name, h.archived) for h in hits] == [("flaky-test", True)]
    service.restore("project", "flaky-test")
    assert "Flaky test" in service.load_context().text
    assert "archived_reason" not in front(path)


def test_hand_edited_topic_with_broken_front_matter_keeps_working(
    service: MemoryService, workspace: Path
) -> None:
    topics = workspace / ".keyless" / "memory" / "topics"
    topics.mkdir(parents=True)
    (topics / "notes.md").write_text("---\ntitle: [oops\n---\nHand written notes about CI.\n")
    (topics / "bare.md").write_bytes(b"No front matter, bad byte \xff here.\n")
    (topics / "Not A Topic.md").write_text("ignored: not a valid topic name")
    notes = service.read_topic("project", "notes")
    assert "Hand written notes about CI." in notes.body and notes.repairs
    bare = service.read_topic("project", "bare")
    assert bare.meta.title == "bare" and "bad byte \ufffd here" in bare.body
    assert {h.name for h in service.recall("CI hand written")} >= {"notes"}
    # a write through the service repairs the file and indexes it; the old text stays
    service.remember("notes", "Hand written notes about CI, tidied.", level="project", source=MODEL)
    assert service.read_topic("project", "notes").repairs == []
    names = [f.name for f in service.list_files() if f.kind == "topic"]
    assert names == ["bare", "notes"]


def test_use_counts_feed_the_front_matter_on_the_next_write(service: MemoryService) -> None:
    service.remember("Lint", "Run ruff.", level="user", source=MODEL)
    for _ in range(3):
        service.read_topic("user", "lint")
    topic = service.read_topic("user", "lint")
    assert topic.meta.uses == 4 and topic.meta.last_used is not None
    service.remember("Lint", "Run ruff check.", level="user", source=MODEL)
    assert front(topic.path)["uses"] == 4


def test_list_files_and_capacity_usage(service: MemoryService, workspace: Path) -> None:
    (workspace / "KEYLESS.md").write_text("shared\n")
    service.remember("a", "one two three", level="project", source=MODEL)
    service.remember("b", "four five", level="project", source=MODEL)
    service.forget("project", "b", reason="x")
    files = service.list_files()
    kinds = [(f.level, f.kind, f.name, f.status, f.exists) for f in files]
    assert ("project", "shared", "KEYLESS.md", "active", True) in kinds
    assert ("project", "topic", "b", "archived", True) in kinds
    assert ("user", "index", "USER.md", "active", False) in kinds
    usage = {u.level: u for u in service.capacity_usage()}
    assert usage["project"].topics == 1 and usage["project"].archived == 1
    assert usage["project"].tokens == 4  # "a" + "one two three" with the word tokenizer
    assert usage["project"].capacity == 1500 and not usage["project"].over


def test_the_service_can_be_called_from_worker_threads(service: MemoryService) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            service.remember(f"t{i}", f"body {i}", level="session", source=MODEL)
            service.recall(f"body {i}")
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len([f for f in service.list_files() if f.kind == "topic"]) == 8


def test_a_failed_write_puts_the_files_back(
    service: MemoryService, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.remember("a", "first", level="project", source=MODEL)
    topic = workspace / ".keyless" / "memory" / "topics" / "a.md"
    before = topic.read_bytes()
    index_before = (workspace / ".keyless" / "memory" / "MEMORY.md").read_bytes()
    import memory.editor

    real = memory.editor.atomic_write

    def fail_on_index(path: Path, data: bytes) -> None:
        if path.name == "MEMORY.md":
            raise memory.editor.MemoryStoreError("cannot write memory file MEMORY.md: disk full")
        real(path, data)

    monkeypatch.setattr(memory.editor, "atomic_write", fail_on_index)
    with pytest.raises(MemoryErrorBase, match="disk full"):
        service.remember("a", "second", level="project", source=MODEL)
    assert topic.read_bytes() == before
    assert (workspace / ".keyless" / "memory" / "MEMORY.md").read_bytes() == index_before
    assert len(service.history()) == 1


def test_session_ids_cannot_escape(make_service) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidMemoryError, match="invalid session id"):
        make_service(session_id="../../x")


def test_a_scanner_that_cannot_run_fails_closed(make_service: ServiceFactory) -> None:
    def locked(text: str) -> list[str]:
        raise RuntimeError("the vault is locked")  # what the broker does while locked

    svc = make_service(scan=locked)
    with pytest.raises(SecretScanError, match="the vault is locked.*nothing was written"):
        svc.remember("x", "text", level="user", source=MODEL)
    assert svc.history() == [] and svc.list_files()[0].exists is False


def test_topics_can_be_named_by_title(service: MemoryService) -> None:
    service.remember("Build steps", "make all", level="project", source=MODEL)
    assert service.read_topic("project", "Build steps").name == "build-steps"
    change = service.forget("project", "Build Steps", reason="moved to README")
    assert change.name == "build-steps"
    for bad in ("a/b", "..\\x", ".hidden"):
        with pytest.raises(InvalidMemoryError, match="not a path"):
            service.forget("project", bad, reason="x")


def test_repair_rewrites_broken_front_matter_as_one_undoable_change(
    service: MemoryService, workspace: Path
) -> None:
    topics = workspace / ".keyless" / "memory" / "topics"
    topics.mkdir(parents=True)
    broken = "---\ntitle: [oops\n---\nHand notes.\n"
    (topics / "notes.md").write_text(broken)
    (topics / "plain.md").write_text("Just text.\n")
    change = service.repair()
    assert change is not None and change.op == "repair"
    assert "project/notes" in change.summary and "project/plain" in change.summary
    assert service.read_topic("project", "notes").repairs == []
    assert "title: [oops" in (topics / "notes.md").read_text()  # kept in a comment
    assert service.repair() is None
    assert change.id is not None
    service.undo(change.id)
    assert (topics / "notes.md").read_text() == broken


def test_a_multi_line_title_cannot_break_the_index(service: MemoryService, workspace: Path) -> None:
    service.remember("evil\n---\nstatus: archived", "body", level="project", source=MODEL)
    topic = service.read_topic("project", "evil-status-archived")
    assert topic.meta.title == "evil --- status: archived" and topic.active
    index = (workspace / ".keyless" / "memory" / "MEMORY.md").read_text()
    assert "- [evil --- status: archived](topics/evil-status-archived.md): body" in index


def test_a_body_quoting_the_index_markers_cannot_break_the_index(
    service: MemoryService, workspace: Path
) -> None:
    from memory.store import INDEX_END

    service.remember("quote", f"see {INDEX_END} here", level="project", source=MODEL)
    service.remember("second", "still listed", level="project", source=MODEL)
    index = (workspace / ".keyless" / "memory" / "MEMORY.md").read_text()
    assert index.count(INDEX_END) == 1
    assert "topics/quote.md" in index and "topics/second.md" in index


def test_remember_keeps_the_level_within_capacity_at_write_time(
    make_service: ServiceFactory,
) -> None:
    """Fails before remember enforced capacity: the level grew past it until a consolidate."""
    svc = make_service(capacities=(1500, 40, 1000))
    for i in range(4):
        svc.remember(f"topic {i}", " ".join(["word"] * 15), level="project", source=MODEL)
    usage = {u.level: u for u in svc.capacity_usage()}
    assert usage["project"].tokens <= 40 and not usage["project"].over
    topics = [f for f in svc.list_files() if f.level == "project" and f.kind == "topic"]
    active = {f.name for f in topics if f.status == "active"}
    assert "topic-3" in active  # the note just written is never the one pushed out
    change = svc.history(1)[0]
    assert change.op == "remember"
    assert usage["project"].archived > 0, "older topics are archived (kept on disk), not deleted"


def test_restoring_an_archived_topic_keeps_the_level_within_capacity(
    make_service: ServiceFactory,
) -> None:
    svc = make_service(capacities=(1500, 40, 1000))
    for i in range(4):
        svc.remember(f"topic {i}", " ".join(["word"] * 15), level="project", source=MODEL)
    archived = [
        f.name for f in svc.list_files()
        if f.level == "project" and f.kind == "topic" and f.status != "active"
    ]
    assert archived
    svc.restore("project", archived[0])
    usage = {u.level: u for u in svc.capacity_usage()}
    assert usage["project"].tokens <= 40 and not usage["project"].over
    active = {
        f.name for f in svc.list_files()
        if f.level == "project" and f.kind == "topic" and f.status == "active"
    }
    assert archived[0] in active  # the restored topic is never the one pushed out
    assert svc.history(1)[0].op == "restore"  # one change: one undo


def test_remember_refuses_a_note_bigger_than_its_level(make_service: ServiceFactory) -> None:
    svc = make_service(capacities=(1500, 32, 1000))
    with pytest.raises(InvalidMemoryError, match="holds 32"):
        svc.remember("huge", " ".join(["word"] * 60), level="project", source=MODEL)
    assert not [f for f in svc.list_files() if f.level == "project" and f.kind == "topic"]
