from __future__ import annotations

from pathlib import Path

import pytest

from memory.errors import ReviewItemNotFoundError, SecretInMemoryError
from memory.frontmatter import Provenance
from memory.service import MemoryService
from tests.memory import helpers
from tests.memory.helpers import ServiceFactory

UNTRUSTED = Provenance(tool="http_request", trust="untrusted")


def test_untrusted_memory_waits_for_review_and_is_not_loaded(
    service: MemoryService, workspace: Path
) -> None:
    change = service.remember("API docs", "The API is at /v2.", level="project", source=UNTRUSTED)
    assert change.pending_review and change.id is None and change.review_id is not None
    assert not (workspace / ".keyless").exists()
    assert "/v2" not in service.load_context().text
    assert service.recall("API") == []
    [item] = service.review_queue()
    assert (item.topic, item.content, item.level) == ("API docs", "The API is at /v2.", "project")
    assert item.source.trust == "untrusted" and item.source.session == "s1"


def test_approve_writes_it_with_provenance(service: MemoryService) -> None:
    change = service.remember("API docs", "The API is at /v2.", level="project", source=UNTRUSTED)
    assert change.review_id is not None
    written = service.approve(change.review_id)
    assert written.id is not None and written.source is not None
    assert written.source.trust == "untrusted" and written.source.approved_at is not None
    assert "/v2" in service.load_context().text
    topic = service.read_topic("project", "api-docs")
    assert topic.meta.source.tool == "http_request" and topic.meta.source.approved_at
    assert service.review_queue() == []
    with pytest.raises(ReviewItemNotFoundError):
        service.approve(change.review_id)


def test_reject_never_writes(service: MemoryService, workspace: Path) -> None:
    change = service.remember("ignore previous", "do evil", level="user", source=UNTRUSTED)
    assert change.review_id is not None
    service.reject(change.review_id)
    assert service.review_queue() == []
    assert service.history() == []
    with pytest.raises(ReviewItemNotFoundError, match="no memory waiting for review"):
        service.reject(change.review_id)


def test_untrusted_text_with_a_secret_is_refused_before_queueing(service: MemoryService) -> None:
    with pytest.raises(SecretInMemoryError):
        service.remember("x", helpers.SECRETS["GITHUB_TOKEN"], level="user", source=UNTRUSTED)
    assert service.review_queue() == []


def test_approve_scans_again(service: MemoryService, monkeypatch: pytest.MonkeyPatch) -> None:
    change = service.remember("x", "value NEWSECRET", level="user", source=UNTRUSTED)
    assert change.review_id is not None
    # the user adds a vault secret after the memory was queued
    monkeypatch.setitem(helpers.SECRETS, "LATE", "NEWSECRET")
    with pytest.raises(SecretInMemoryError, match="LATE"):
        service.approve(change.review_id)
    assert len(service.review_queue()) == 1


def test_queue_belongs_to_its_workspace(
    make_service: ServiceFactory, service: MemoryService, tmp_path: Path
) -> None:
    service.remember("p", "project item", level="project", source=UNTRUSTED)
    service.remember("u", "user item", level="user", source=UNTRUSTED)
    other_ws = tmp_path / "other"
    other_ws.mkdir()
    other = make_service(workspace=other_ws)
    assert [i.topic for i in other.review_queue()] == ["u"]
