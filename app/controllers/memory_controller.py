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
from typing import TYPE_CHECKING, Any

from app.controllers.jobs import SerialWorker
from app.qt import QObject, Signal

if TYPE_CHECKING:
    from memory.service import MemoryService
    from models.interface import ChatModel

LEVELS = ("user", "project", "session")


@dataclass(frozen=True)
class TopicNode:
    """One memory file in the tree."""

    level: str
    name: str
    title: str
    status: str
    trust: str


@dataclass(frozen=True)
class LevelNode:
    """One level of the tree with its files."""

    level: str
    topics: tuple[TopicNode, ...]


@dataclass(frozen=True)
class UsageRow:
    """How full one level is."""

    level: str
    tokens: int
    capacity: int
    truncated: bool


@dataclass(frozen=True)
class TopicText:
    """A topic loaded into the editor."""

    level: str
    name: str
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


class MemoryController(QObject):
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
    busy_changed = Signal(bool)

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
        self._worker = SerialWorker(self)
        self._worker.busy_changed.connect(self.busy_changed)

    @property
    def can_distill(self) -> bool:
        """Whether a model is available for "distill now"."""
        return self._model_factory is not None

    @property
    def busy(self) -> bool:
        """Whether work is in flight."""
        return self._worker.busy

    def wait(self, msecs: int = -1) -> bool:
        """Block until queued work ran (shutdown and tests)."""
        return self._worker.wait(msecs)

    def _svc(self) -> MemoryService:
        if self._service is None:
            self._service = self._factory()
        return self._service

    def reset_service(self) -> None:
        """Build the service again on next use (another workspace or session)."""

        def work() -> None:
            self._service = None

        self._worker.submit(work, lambda _: self.refresh(), self._report)

    # -- actions ------------------------------------------------------------------------

    def refresh(self) -> None:
        """Reload the tree, the capacity per level, the history and the review queue."""
        self._worker.submit(self._snapshot, self.snapshot_loaded.emit, self._report)

    def open_topic(self, level: str, name: str) -> None:
        """Load one topic for the editor."""

        def work() -> TopicText:
            topic = self._svc().read_topic(level, name)
            return _topic_text(level, name, topic)

        self._worker.submit(work, self.topic_loaded.emit, self._report)

    def save_topic(self, level: str, name: str, body: str) -> None:
        """Write a topic the user edited (provenance: the user), recorded in history."""

        def work() -> MemorySnapshot:
            from memory.service import Provenance

            self._svc().remember(name, body, level=level, source=Provenance.user_edit())
            return self._snapshot()

        def done(snapshot: MemorySnapshot) -> None:
            self.topic_saved.emit(level, name)
            self.snapshot_loaded.emit(snapshot)

        self._worker.submit(work, done, self._report)

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

    def _snapshot(self) -> MemorySnapshot:
        service = self._svc()
        context = service.load_context()
        usage = tuple(
            UsageRow(
                level=str(u.level),
                tokens=int(u.tokens),
                capacity=int(u.capacity),
                truncated=bool(u.truncated),
            )
            for u in context.levels
        )
        tree = tuple(
            LevelNode(level, tuple(_topic_node(level, t) for t in service.topics(level)))
            for level in LEVELS
        )
        history = tuple(_change_row(c) for c in service.history(self._history_limit))
        review = tuple(_review_row(r) for r in service.review_queue())
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


def _topic_node(level: str, topic: Any) -> TopicNode:
    source = getattr(topic, "source", None)
    return TopicNode(
        level=level,
        name=str(topic.name),
        title=str(getattr(topic, "title", "") or topic.name),
        status=str(getattr(topic, "status", "active")),
        trust=str(getattr(source, "trust", "") or ""),
    )


def _topic_text(level: str, name: str, topic: Any) -> TopicText:
    body = topic if isinstance(topic, str) else str(getattr(topic, "body", ""))
    parts = []
    for attr in ("status", "updated"):
        value = getattr(topic, attr, None)
        if value:
            parts.append(f"{attr}: {value}")
    source = getattr(topic, "source", None)
    if source is not None:
        parts.append(f"source: {getattr(source, 'trust', source)}")
    return TopicText(level=level, name=name, body=body, summary=" · ".join(parts))


def _change_row(change: Any) -> ChangeRow:
    return ChangeRow(
        change_id=int(change.id),
        time=getattr(change, "at", None) or getattr(change, "time", None),
        summary=str(getattr(change, "summary", "") or getattr(change, "action", "")),
        diff=str(getattr(change, "diff", "")),
        undone=bool(getattr(change, "undone", False)),
    )


def _review_row(item: Any) -> ReviewRow:
    return ReviewRow(
        item_id=int(item.id),
        level=str(item.level),
        topic=str(item.topic),
        content=str(item.content),
        source=str(getattr(item, "source", "")),
    )


def _report_summary(report: Any) -> str:
    summary = getattr(report, "summary", None)
    if callable(summary):
        return str(summary())
    return str(summary or report)
