from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory.distill import DistillPlan, parse_plan, plan_schema
from memory.frontmatter import Provenance, parse_topic
from memory.service import MemoryService
from models.errors import GenerationError
from models.fake import ScriptedModel
from models.interface import (
    CancelToken,
    ContextState,
    Finished,
    GenerationStats,
    Message,
    ModelInfo,
    StreamEvent,
)
from tests.memory.helpers import SECRETS, ServiceFactory, all_topic_bodies, count_words

MODEL = Provenance(trust="model")
USER = Provenance(trust="user")


def plan(*ops: dict[str, Any]) -> str:
    return json.dumps({"operations": list(ops)})


def usage(svc: MemoryService, level: str) -> int:
    return next(u.tokens for u in svc.capacity_usage() if u.level == level)


def topic_files(root: Path) -> dict[str, str]:
    return {p.stem: p.read_text() for p in sorted(root.glob("*.md"))}


class UngrammaticalModel:
    """A model that ignores the grammar (a remote backend without json_schema support)."""

    def __init__(self, text: str) -> None:
        self.text = text

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(name="ungrammatical", backend="fake", n_ctx=4096)

    def stream_chat(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        json_schema: Mapping[str, Any] | None = None,
        temperature: float = 0.0,
        ignore_eos: bool = False,
        cancel: CancelToken | None = None,
    ) -> Iterator[StreamEvent]:
        stats = GenerationStats(
            n_prompt_tokens=1, n_generated=1, time_to_first_token_s=0.0,
            tokens_per_second=1.0, stop_reason="eos",
        )
        yield Finished(text=self.text, stats=stats)

    def count_tokens(self, text: str) -> int:
        return count_words(text)

    def context_state(self) -> ContextState:
        return ContextState(n_ctx=4096, n_sink=0, n_window=0, n_evicted=0, n_shifts=0,
                            shift_supported=True)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def crowded(make_service: ServiceFactory) -> MemoryService:
    """A project level over its capacity of 40 tokens, with near-duplicates.

    Written while the capacity was larger (``remember`` keeps a level within
    its capacity), then opened with the capacity lowered to 40, as after a
    change of the setting.
    """
    writer = make_service(capacities=(1500, 1500, 1000))
    writer.remember("Python style", "Use ruff. Line length 100.", level="project", source=USER)
    writer.remember("Code style", "Lint with ruff; lines up to 100 chars.", level="project",
                 source=MODEL)
    writer.remember("Old CI", "CI used Travis until 2019, replaced later by other things.",
                 level="project", source=MODEL)
    writer.remember("Deploy", "Deploy with the release script from the main branch only.",
                 level="project", source=USER)
    svc = make_service(capacities=(1500, 40, 1000))
    assert usage(svc, "project") > 40
    return svc


def test_a_sensible_proposal_is_applied_and_fits(crowded: MemoryService, workspace: Path) -> None:
    topics = workspace / ".keyless" / "memory" / "topics"
    before = all_topic_bodies(topics)
    model = ScriptedModel([plan(
        {"op": "MERGE", "target": "python-style", "sources": ["python-style", "code-style"],
         "content": "Lint with ruff; lines up to 100 characters."},
        {"op": "ARCHIVE", "target": "old-ci"},
        {"op": "NONE", "target": "deploy"},
    )])
    report = crowded.distill(model, level="project")
    [lv] = report.levels
    applied = [(a.op, a.target) for a in lv.applied]
    assert applied == [("MERGE", "python-style"), ("ARCHIVE", "old-ci")]
    assert lv.rejected == [] and lv.archived_for_capacity == [] and lv.model_error is None
    assert lv.tokens_after <= 40 == lv.capacity and usage(crowded, "project") == lv.tokens_after
    merged = crowded.read_topic("project", "python-style")
    assert merged.body == "Lint with ruff; lines up to 100 characters.\n"
    assert merged.meta.source.tool == "distill"
    assert merged.meta.source.derived_from == ["project/python-style", "project/code-style"]
    assert merged.meta.source.trust == "model"  # lowest trust of what it came from
    code = crowded.read_topic("project", "code-style")
    assert not code.active and code.meta.replaced_by == "python-style"
    kept = crowded.read_topic("project", "python-style~1")
    assert kept.body == "Use ruff. Line length 100.\n" and kept.meta.replaced_by == "python-style"
    # nothing lost: every earlier body is still on disk, and archived text is searchable
    after = all_topic_bodies(topics)
    assert all(body in after for body in before)
    assert {h.name for h in crowded.recall("Travis")} == {"old-ci"}
    # the model saw the topics and was constrained to the plan schema
    [messages] = model.calls
    assert "python-style" in messages[-1].content and "Travis" in messages[-1].content
    # one history entry; undoing it restores every file exactly
    assert lv.change_id is not None and report.change_ids == [lv.change_id]
    crowded.undo(lv.change_id)
    assert sorted(all_topic_bodies(topics)) == sorted(before)
    assert crowded.read_topic("project", "code-style").active


def test_a_hostile_proposal_cannot_break_the_guarantees(
    crowded: MemoryService, workspace: Path, tmp_path: Path
) -> None:
    topics = workspace / ".keyless" / "memory" / "topics"
    before = all_topic_bodies(topics)
    files_before = set(tmp_path.rglob("*"))
    huge = "word " * 300  # two of these stay under distill_max_tokens
    model = ScriptedModel([plan(
        {"op": "ADD", "target": "../../../etc/passwd", "content": huge},
        {"op": "ADD", "target": "filler-1", "content": huge},
        {"op": "UPDATE", "target": "does-not-exist", "content": "x"},
        {"op": "ARCHIVE", "target": "nope"},
        {"op": "MERGE", "target": "deploy", "sources": ["ghost"], "content": "y"},
        {"op": "MERGE", "target": "deploy", "sources": [], "content": "y"},
        {"op": "UPDATE", "target": "deploy", "content": f"token {SECRETS['GITHUB_TOKEN']}"},
        {"op": "UPDATE", "target": "deploy", "content": ""},
        {"op": "UPDATE", "target": "filler-1", "content": "second touch of one target"},
        {"op": "ADD", "target": "!!!", "content": "no usable name"},
    )])
    report = crowded.distill(model, level="project")
    [lv] = report.levels
    reasons = [r.reason for r in lv.rejected]
    assert lv.model_error is None and len(reasons) == 8, reasons
    assert any("no active project topic" in r for r in reasons)
    assert any("GITHUB_TOKEN" in r for r in reasons)
    assert any("already changed by an earlier operation" in r for r in reasons)
    assert any("no letters or digits" in r for r in reasons)
    # capacity kept by archiving the lowest-scoring topics
    assert usage(crowded, "project") <= 40 and lv.archived_for_capacity
    # new files only inside the topics dir (and the index); the traversal became a plain name
    new = {p for p in set(tmp_path.rglob("*")) - files_before if p.is_file()}
    assert new and all(p.parent == topics for p in new)
    assert (topics / "etc-passwd.md").exists()
    # the secret reached no file
    for p in tmp_path.rglob("*"):
        if p.is_file() and p.suffix == ".md":
            assert SECRETS["GITHUB_TOKEN"] not in p.read_text()
    after = all_topic_bodies(topics)
    assert all(body in after for body in before)
    assert all(parse_topic(p.read_text(), fallback_title="x").repairs == []
               for p in topics.glob("*.md"))


def test_output_that_ignores_the_grammar_still_ends_within_capacity(
    crowded: MemoryService,
) -> None:
    for text in ("I think you should merge them!", '{"operations": "all"}',
                 '{"operations": [{"op": "EXPLODE", "target": "deploy"}, '
                 '{"op": "ARCHIVE", "target": "old-ci"}]}'):
        report = crowded.distill(UngrammaticalModel(text), level="project")
        assert usage(crowded, "project") <= 40
    assert report.levels[0].rejected[0].proposal == {"op": "EXPLODE", "target": "deploy"}
    first_error = parse_plan("I think you should merge them!")[2]
    assert first_error is not None and "not JSON" in first_error


def test_a_model_failure_is_reported_and_capacity_still_kept(crowded: MemoryService) -> None:
    report = crowded.distill(ScriptedModel([]), level="project")  # no response left: it raises
    [lv] = report.levels
    assert lv.model_error is not None and "the model failed" in lv.model_error
    assert usage(crowded, "project") <= 40 and lv.archived_for_capacity


def test_capacity_archives_least_used_and_oldest_first(make_service: ServiceFactory) -> None:
    writer = make_service(capacities=(1500, 1500, 1000))  # remember keeps within capacity
    for name in ("alpha", "beta", "gamma"):
        writer.remember(name, f"{name} " * 15, level="project", source=MODEL)
    svc = make_service(capacities=(1500, 40, 1000))
    for _ in range(3):
        svc.read_topic("project", "alpha")
    svc.read_topic("project", "gamma")
    report = svc.distill(None, level="project")
    assert report.levels[0].archived_for_capacity == ["beta"]
    assert usage(svc, "project") <= 40


def test_session_notes_become_project_topics(make_service: ServiceFactory, workspace: Path) -> None:
    svc = make_service()
    svc.remember("Build quirk", "make needs GNU make 4.", level="session", source=MODEL)
    svc.remember("Port", "The dev server uses port 5173.", level="session", source=MODEL)
    svc.remember("Ports", "Backend on 8000.", level="project", source=USER)
    model = ScriptedModel([plan(
        {"op": "MERGE", "target": "ports", "sources": ["port", "ports"],
         "content": "Backend on 8000; dev server on 5173."},
    )])
    report = svc.distill(model)
    [lv] = report.levels
    assert (lv.level, lv.into) == ("session", "project")
    assert {(a.op, a.target) for a in lv.applied} == {("MERGE", "ports"), ("ADD", "build-quirk")}
    assert svc.read_topic("project", "ports").body == "Backend on 8000; dev server on 5173.\n"
    promoted = svc.read_topic("project", "build-quirk")
    assert promoted.body == "make needs GNU make 4.\n" and promoted.meta.title == "Build quirk"
    assert promoted.meta.source.derived_from == ["session/build-quirk"]
    for name, where in (("build-quirk", "project/build-quirk"), ("port", "project/ports")):
        note = svc.read_topic("session", name)
        assert not note.active and note.meta.replaced_by == where
    text = svc.load_context().text
    assert "Session notes" not in text and "build-quirk" in text


def test_distill_none_only_touches_levels_over_capacity(make_service: ServiceFactory) -> None:
    writer = make_service(capacities=(1500, 1500, 1000))  # remember keeps within capacity
    writer.remember("pref one", "word " * 30, level="user", source=USER)
    writer.remember("pref two", "word " * 30, level="user", source=USER)
    writer.remember("proj", "small", level="project", source=USER)
    svc = make_service(capacities=(40, 1500, 1000))
    model = ScriptedModel([plan({"op": "NONE", "target": "x"})])
    report = svc.distill(model)
    # no session notes and the project fits: only the user level is distilled
    assert [(lv.level, lv.into) for lv in report.levels] == [("user", "user")]
    assert usage(svc, "user") <= 40
    assert svc.read_topic("project", "proj").active


def test_the_schema_is_the_plan_model() -> None:
    schema = plan_schema()
    op = schema["$defs"]["DistillOp"]
    assert op["properties"]["op"]["enum"] == ["ADD", "UPDATE", "MERGE", "ARCHIVE", "NONE"]
    assert schema["required"] == ["operations"]
    DistillPlan.model_validate_json(plan({"op": "NONE", "target": "x"}))


names = st.sampled_from(["python-style", "code-style", "old-ci", "deploy", "new", "New Topic",
                         "ghost", "../x"])
op_strategy = st.fixed_dictionaries(
    {
        "op": st.sampled_from(["ADD", "UPDATE", "MERGE", "ARCHIVE", "NONE"]),
        "target": names,
        "content": st.one_of(st.just(""), st.text(max_size=60),
                             st.integers(0, 500).map(lambda n: "tok " * n)),
        "sources": st.lists(names, max_size=3),
    }
)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op_strategy, max_size=10), capacity=st.integers(32, 200),
       level=st.sampled_from(["project", "session"]))
def test_capacity_holds_whatever_the_model_proposes(
    make_service: ServiceFactory, tmp_path_factory: pytest.TempPathFactory,
    ops: list[dict[str, Any]], capacity: int, level: str,
) -> None:
    root = tmp_path_factory.mktemp("d")
    where = {"user_dir": root / "u", "workspace": root / "ws", "db_path": root / "k.db"}
    writer = make_service(**where, capacities=(1500, 1500, 1000))  # type: ignore[arg-type]
    writer.remember("Python style", "Use ruff. Line length 100.", level="project", source=USER)
    writer.remember("Code style", "Lint with ruff.", level="project", source=MODEL)
    writer.remember("Old CI", "Travis " * 40, level="project", source=MODEL)
    writer.remember("Deploy", "Release script.", level="project", source=USER)
    writer.remember("New", "A session finding " * 5, level="session", source=MODEL)
    writer.remember("Ghost", "Another note.", level="session", source=MODEL)
    svc = make_service(**where, capacities=(1500, capacity, 1000))  # type: ignore[arg-type]
    before = all_topic_bodies(root / "ws")
    report = svc.distill(ScriptedModel([plan(*ops)]), level=level)
    assert usage(svc, "project") <= capacity
    assert report.levels[0].tokens_after <= capacity
    if level == "session":
        assert usage(svc, "session") == 0  # every note went to the project or the archive
    after = all_topic_bodies(root / "ws")
    assert all(body in after for body in before)
    for path in (root / "ws").rglob("topics/*.md"):
        assert parse_topic(path.read_text(), fallback_title="x").repairs == []


def test_generation_error_type_is_a_model_error() -> None:
    # distill relies on every backend failure being a ModelError
    from models.errors import ModelError

    assert issubclass(GenerationError, ModelError)


def test_writing_over_an_archived_namesake_keeps_its_text(make_service: ServiceFactory) -> None:
    svc = make_service()
    svc.remember("Cache", "Old cache notes.", level="project", source=USER)
    svc.forget("project", "cache", reason="stale")
    svc.remember("Cache", "Session finding about the cache.", level="session", source=MODEL)
    model = ScriptedModel([plan({"op": "ADD", "target": "cache", "content": "New cache notes."})])
    report = svc.distill(model)
    [lv] = report.levels
    assert lv.applied[0].note == "previous text kept as cache~1"
    assert svc.read_topic("project", "cache~1").body == "Old cache notes.\n"
    assert svc.read_topic("project", "cache").body == "New cache notes.\n"
    assert svc.read_topic("session", "cache").meta.replaced_by == "project/cache"


def test_an_answer_cut_off_by_max_tokens_keeps_its_complete_operations() -> None:
    whole = plan({"op": "ARCHIVE", "target": "a"}, {"op": "UPDATE", "target": "b", "content": "x"})
    ops, rejected, error = parse_plan(whole[:-25])
    assert error is None and rejected == []
    assert [(o.op, o.target) for o in ops] == [("ARCHIVE", "a")]
    assert parse_plan('{"operations": [{"op": "AR')[2] == (
        "the model's answer was cut off before its first complete operation"
    )
    assert parse_plan('{"plan": [')[2] is not None
