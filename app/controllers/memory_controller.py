"""The memory screen's controller: browse, edit, undo, review and distill memory.

The :class:`memory.service.MemoryService` is built by the factory on the
controller's worker thread (its SQLite connection then belongs to that thread)
and used only there. Distillation needs a model: ``model_factory`` opens one
on the worker thread when the user asks, and it is closed afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.controllers.jobs import WorkerController
from app.qt import QObject, Signal

if TYPE_CHECKING:
    from memory.distill import DistillReport
    from memory.frontmatter import Provenance
    from memory.service import MemoryService
    from memory.store import Level, Topic
    from models.interface import ChatModel

LEVELS = ("user", "project", "session")


@dataclass(frozen=True)
class TopicNode:
    """One memory file in the tree."""

    level: str
    kind: str  # "shared" (KEYLESS.md), "index" (MEMORY.md, USER.md) or "topic"
    name: str
    title: str
    status: str
    exists: bool = True

    @property
    def editable(self) -> bool:
        """Topics are edited here (with history); index and shared files by hand."""
        return self.kind == "topic"


@dataclass(frozen=True)
class LevelNode:
    """One level of the tree with its files."""

    level: str
    files: tuple[TopicNode, ...]


@dataclass(frozen=True)
class UsageRow:
    """How full one level is: active topic tokens against the capacity."""

    level: str
    tokens: int
    capacity: int
    topics: int
    archived: int
    truncated: bool


@dataclass(frozen=True)
class TopicText:
    """A memory file loaded into the editor."""

    level: str
    name: str
    kind: str
    body: str
    summary: str


@dataclass(frozen=True)
class ChangeRow:
    """One entry of the memory history."""

    change_id: int
    time: datetime | None
    summary: str
    diff: str
    undone: bool
    is_undo: bool


@dataclass(frozen=True)
class ReviewRow:
    """One write waiting for the user's approval."""

    item_id: int
    level: str
    topic: str
    content: str
    source: str


@dataclass(frozen=True)
class MemorySnapshot:
    """Everything the screen shows, loaded in one go."""

    tree: tuple[LevelNode, ...]
    usage: tuple[UsageRow, ...]
    history: tuple[ChangeRow, ...]
    review: tuple[ReviewRow, ...] = field(default=())


class MemoryController(WorkerController):
    """Drives :class:`app.views.memory_view.MemoryView`.

    Signals:
        snapshot_loaded: A :class:`MemorySnapshot` (tree, capacity, history, review queue).
        topic_loaded: A :class:`TopicText`.
        topic_saved: ``(level, name)`` after a save.
        distilled: A one-line summary of the distillation report.
        error: A sentence for the user.
        busy_changed: Whether work is in flight.
    """

    snapshot_loaded = Signal(object)
    topic_loaded = Signal(object)
    topic_saved = Signal(str, str)
    distilled = Signal(str)
    error = Signal(str)

    def __init__(
        self,
        memory_service_factory: Callable[[], MemoryService],
        *,
        model_factory: Callable[[], ChatModel] | None = None,
        history_limit: int = 200,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._factory = memory_service_factory
        self._model_factory = model_factory
        self._history_limit = history_limit
        self._service: MemoryService | None = None  # worker thread only
    @property
    def can_distill(self) -> bool:
        """Whether a model is available for "distill now"."""
        return self._model_factory is not None

    def _svc(self) -> MemoryService:
        if self._service is None:
            self._service = self._factory()
        return self._service

    def reset_service(self) -> None:
        """Build the service again on next use (another workspace or session)."""

        def work() -> None:
            old, self._service = self._service, None
            if old is not None:
                old.close()

        self._worker.submit(work, lambda _: self.refresh(), self._report)

    # -- actions ------------------------------------------------------------------------

    def refresh(self) -> None:
        """Reload the tree, the capacity per level, the history and the review queue."""
        self._worker.submit(self._snapshot, self.snapshot_loaded.emit, self._report)

    def open_topic(self, level: str, name: str, kind: str = "topic") -> None:
        """Load one file for the editor (reading it here is not a "use" of the topic)."""

        def work() -> TopicText:
            service = self._svc()
            if kind == "topic":
                from memory.store import read_topic_file

                topic = read_topic_file(
                    service.layout.level(check_level(level)),
                    name,
                    max_bytes=service.settings.max_file_bytes,
                )
                return _topic_text(topic)
            path = self._file_path(service, level, kind, name)
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                text = ""
            note = f"{path} (edit by hand; read-only here)"
            return TopicText(level=level, name=name, kind=kind, body=text, summary=note)

        self._worker.submit(work, self.topic_loaded.emit, self._report)

    def save_topic(self, level: str, name: str, body: str) -> None:
        """Write a topic the user edited (provenance: the user), recorded in history."""

        def work() -> MemorySnapshot:
            from memory.frontmatter import Provenance

            source = Provenance(trust="user", tool="gui")
            self._svc().remember(name, body, level=level, source=source)
            return self._snapshot()

        def done(snapshot: MemorySnapshot) -> None:
            self.topic_saved.emit(level, name)
            self.snapshot_loaded.emit(snapshot)

        self._worker.submit(work, done, self._report)

    def create_topic(self, level: str, title: str) -> None:
        """Create a topic titled ``title``; :attr:`topic_saved` names its file."""

        def work() -> tuple[str, MemorySnapshot]:
            from memory.frontmatter import Provenance

            change = self._svc().remember(
                title, f"# {title}\n", level=level, source=Provenance(trust="user", tool="gui")
            )
            return change.name, self._snapshot()

        def done(result: tuple[str, MemorySnapshot]) -> None:
            name, snapshot = result
            self.snapshot_loaded.emit(snapshot)
            self.topic_saved.emit(level, name)

        self._worker.submit(work, done, self._report)

    def forget(self, level: str, name: str) -> None:
        """Archive a topic: out of the prompt, still on disk and searchable."""
        self._mutate(lambda s: s.forget(level, name, reason="archived by the user"))

    def restore(self, level: str, name: str) -> None:
        """Make an archived topic active again."""
        self._mutate(lambda s: s.restore(level, name))

    def undo(self, change_id: int) -> None:
        """Undo one change (a new history entry records the undo)."""
        self._mutate(lambda s: s.undo(change_id))

    def approve(self, item_id: int) -> None:
        """Apply a reviewed write."""
        self._mutate(lambda s: s.approve(item_id))

    def reject(self, item_id: int) -> None:
        """Drop a reviewed write."""
        self._mutate(lambda s: s.reject(item_id))

    def distill(self, level: str | None = None) -> None:
        """Let the model distill (all levels, or ``level``) now."""
        factory = self._model_factory
        if factory is None:
            self.error.emit("No model is configured for distillation.")
            return

        def work() -> tuple[str, MemorySnapshot]:
            model = factory()
            try:
                report = self._svc().distill(model, level=level)
            finally:
                model.close()
            return _report_summary(report), self._snapshot()

        def done(result: tuple[str, MemorySnapshot]) -> None:
            summary, snapshot = result
            self.distilled.emit(summary)
            self.snapshot_loaded.emit(snapshot)

        self._worker.submit(work, done, self._report)

    # -- worker-thread helpers ----------------------------------------------------------

    def _mutate(self, op: Callable[[MemoryService], Any]) -> None:
        def work() -> MemorySnapshot:
            op(self._svc())
            return self._snapshot()

        self._worker.submit(work, self.snapshot_loaded.emit, self._report)

    @staticmethod
    def _file_path(service: MemoryService, level: str, kind: str, name: str) -> Path:
        layout = service.layout.level(check_level(level))
        for path in (*layout.shared_files, layout.index_file):
            if path.name == name:
                return path
        raise ValueError(f"no {kind} file {name!r} at the {level} level")

    def _snapshot(self) -> MemorySnapshot:
        service = self._svc()
        truncated = {u.level: u.truncated for u in service.load_context().levels}
        usage = tuple(
            UsageRow(
                level=u.level,
                tokens=u.tokens,
                capacity=u.capacity,
                topics=u.topics,
                archived=u.archived,
                truncated=bool(truncated.get(u.level, False)),
            )
            for u in service.capacity_usage()
        )
        files = service.list_files()
        tree = tuple(
            LevelNode(
                level,
                tuple(
                    TopicNode(
                        level=f.level,
                        kind=f.kind,
                        name=f.name,
                        title=f.title,
                        status=f.status,
                        exists=f.exists,
                    )
                    for f in files
                    if f.level == level
                ),
            )
            for level in LEVELS
        )
        history = tuple(
            ChangeRow(
                change_id=c.id,
                time=c.at,
                summary=c.summary,
                diff=c.diff,
                undone=c.undone_by is not None,
                is_undo=c.undo_of is not None,
            )
            for c in service.history(self._history_limit)
            if c.id is not None
        )
        review = tuple(
            ReviewRow(
                item_id=r.id,
                level=r.level,
                topic=r.topic,
                content=r.content,
                source=_describe_source(r.source),
            )
            for r in service.review_queue()
        )
        return MemorySnapshot(tree=tree, usage=usage, history=history, review=review)

    def _report(self, error: Exception) -> None:
        from memory import errors

        match error:
            case errors.SecretInMemoryError():
                text = f"Not saved: {error}."
            case errors.UndoConflictError():
                text = f"Cannot undo: {error}"
            case errors.MemoryErrorBase():
                text = str(error)
            case _:
                text = f"Memory error ({type(error).__name__}): {error}"
        self.error.emit(text)


def check_level(level: str) -> Level:
    """The level, validated by the memory package."""
    from memory.store import check_level as check

    return check(level)


def _describe_source(source: Provenance) -> str:
    parts: list[str] = [source.trust]
    if source.tool:
        parts.append(f"via {source.tool}")
    if source.session:
        parts.append(f"in session {source.session}")
    return " ".join(parts)


def _topic_text(topic: Topic) -> TopicText:
    meta = topic.meta
    parts = [f"{meta.status}", f"source: {_describe_source(meta.source)}"]
    parts.append(f"updated {meta.updated.astimezone().strftime('%Y-%m-%d %H:%M')}")
    if meta.uses:
        parts.append(f"used {meta.uses}×")
    if topic.repairs:
        parts.append("front matter repaired: " + "; ".join(topic.repairs))
    return TopicText(
        level=topic.level, name=topic.name, kind="topic", body=topic.body, summary=" · ".join(parts)
    )


def _report_summary(report: DistillReport) -> str:
    if not report.levels:
        return "nothing to do: every level fits its capacity and the session has no notes."
    parts = []
    for lv in report.levels:
        text = (
            f"{lv.level}→{lv.into}: {lv.tokens_before}→{lv.tokens_after} tokens "
            f"(capacity {lv.capacity}), {len(lv.applied)} applied, {len(lv.rejected)} rejected"
        )
        if lv.archived_for_capacity:
            text += f", {len(lv.archived_for_capacity)} archived to fit"
        if lv.model_error:
            text += f"; model: {lv.model_error}"
        parts.append(text)
    return "; ".join(parts) + f" ({report.seconds:.1f} s)"
