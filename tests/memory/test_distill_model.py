"""Distillation with the real embedded model (SmolLM2-135M): the guarantees must hold."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from memory.frontmatter import Provenance, parse_topic
from memory.service import MemoryService
from tests.memory.helpers import ServiceFactory, all_topic_bodies

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def runtime() -> Iterator[object]:
    try:
        from models.catalog import embedded_default
        from models.runtime import Runtime, RuntimeConfig
    except ImportError as e:
        pytest.skip(f"models.runtime is not importable: {e}")
    from models.errors import ModelError

    try:
        model = Runtime(RuntimeConfig(model_path=embedded_default().path, n_ctx=4096))
    except ModelError as e:
        pytest.skip(f"the embedded model cannot be loaded: {e}")
    yield model
    model.close()


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_real_model_distillation_keeps_every_guarantee(
    runtime: object, make_service: ServiceFactory, workspace: Path
) -> None:
    from models.interface import ChatModel

    assert isinstance(runtime, ChatModel)
    # a short answer keeps the test quick on a busy CPU; a cut-off answer keeps
    # its complete operations, so the guarantees are tested on what it proposed
    svc: MemoryService = make_service(capacities=(1500, 80, 1000), distill_max_tokens=160)
    notes = {
        "Build": "Run `make build` before testing; it needs GNU make 4.",
        "Ports": "The dev server listens on port 5173, the API on 8000.",
        "Style": "Format with ruff; line length is 100.",
    }
    for title, body in notes.items():
        svc.remember(title, body, level="session", source=Provenance(trust="model"))
    svc.remember("Deploy", "Deploy from main with the release script.", level="project",
                 source=Provenance(trust="user"))
    svc.remember("Lint", "ruff check and mypy --strict on every package.", level="project",
                 source=Provenance(trust="user"))
    before_bytes = snapshot(workspace)
    before = all_topic_bodies(workspace)

    runtime.reset()
    report = svc.distill(runtime)
    # the model really ran under the plan grammar (a grammar llama.cpp refuses, or a
    # crash, would show here) and the host validated what it proposed
    assert report.levels and all(
        lv.model_error is None or "the model failed" not in lv.model_error
        for lv in report.levels
    ), [lv.model_error for lv in report.levels]

    # capacity respected, whatever the 135M model proposed
    project = next(u for u in svc.capacity_usage() if u.level == "project")
    assert project.tokens <= project.capacity == 80
    # nothing lost: every earlier body is still on disk, and every file is valid
    after = all_topic_bodies(workspace)
    assert all(body in after for body in before)
    for path in workspace.rglob("topics/*.md"):
        assert parse_topic(path.read_text(), fallback_title="x").repairs == []
    # session notes left the prompt; provenance kept on what was written
    files = [f for f in svc.list_files() if f.kind == "topic"]
    assert all(f.status == "archived" for f in files if f.level == "session")
    for f in files:
        if f.level == "project" and f.status == "active":
            assert svc.read_topic("project", f.name).meta.source.session == "s1"
    # the whole pass is undoable, byte for byte
    for change_id in reversed(report.change_ids):
        svc.undo(change_id)
    assert snapshot(workspace) == before_bytes
