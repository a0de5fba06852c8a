"""The memory service the host uses: load, remember, recall, forget, distill, undo.

One :class:`MemoryService` serves one user, workspace and session. Every
write goes through it: the text is scanned for vault secrets and canaries
(refused, naming the secret, never its value), stamped with provenance,
written atomically and recorded in the history table with a diff so it can be
undone. Writes from untrusted sources wait in the review queue. Calls are
serialised by a lock, so controllers may call from worker threads.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from memory.db import open_database
from memory.distill import DistillReport, LevelDistill, LevelDistiller, score, topic_tokens
from memory.editor import TopicCache, TopicEditor, now_utc
from memory.errors import (
    InvalidMemoryError,
    MemoryStoreError,
    SecretInMemoryError,
    SecretScanError,
)
from memory.frontmatter import Provenance
from memory.history import Change, History
from memory.index import Hit, SearchIndex
from memory.loader import LevelUsage, MemoryContext
from memory.loader import load_context as _load_context
from memory.review import ReviewItem, ReviewQueue
from memory.settings import MemorySettings
from memory.store import (
    LEVELS,
    Level,
    MemoryLayout,
    Topic,
    check_level,
    clean_stale_temps,
    topic_name,
    topic_slug,
)
from models.interface import ChatModel

__all__ = [
    "CapacityUsage",
    "Change",
    "DistillReport",
    "Hit",
    "LevelUsage",
    "MemoryContext",
    "MemoryFile",
    "MemoryService",
    "MemorySettings",
    "Provenance",
    "ReviewItem",
    "Topic",
]


class CapacityUsage(BaseModel):
    """How full a level is (active topics against its capacity), for the GUI's bars."""

    model_config = ConfigDict(frozen=True)

    level: Level
    tokens: int
    capacity: int
    topics: int = Field(description="Active topics.")
    archived: int = Field(description="Archived topics (on disk, not loaded).")

    @property
    def over(self) -> bool:
        """Whether the level holds more than its capacity."""
        return self.tokens > self.capacity


class MemoryFile(BaseModel):
    """One memory file, for the GUI's tree."""

    model_config = ConfigDict(frozen=True)

    level: Level
    kind: Literal["shared", "index", "topic"]
    path: str
    name: str
    title: str
    status: Literal["active", "archived"] = "active"
    exists: bool = True


class MemoryService:
    """Memory of one user, one workspace and one session.

    Args:
        user_dir: The user-level memory directory (``AppPaths.memory_dir``).
        workspace: The workspace the session works in.
        db_path: The shared SQLite file (``keyless.db``).
        session_id: The current session (becomes a file name).
        count_tokens: The model's tokenizer, for budgets and capacities.
        scan_secrets: Returns the names of vault secrets or canaries found in a text.
        settings: Capacities and budgets.

    Raises:
        InvalidMemoryError: The session id is not usable as a file name.
        MemoryStoreError: The database cannot be opened.
    """

    def __init__(
        self,
        *,
        user_dir: Path,
        workspace: Path,
        db_path: Path,
        session_id: str,
        count_tokens: Callable[[str], int],
        scan_secrets: Callable[[str], list[str]],
        settings: MemorySettings | None = None,
    ) -> None:
        self.layout = MemoryLayout(user_dir=user_dir, workspace=workspace, session_id=session_id)
        self.settings = settings or MemorySettings()
        self.session_id = self.layout.session_id
        # Token counts of unchanged text are asked for again and again (capacity
        # bars, distillation); the model's tokenizer is deterministic.
        self._count_tokens = functools.lru_cache(maxsize=50_000)(count_tokens)
        self._topics = TopicCache()
        self._scanner = scan_secrets
        self._lock = threading.RLock()
        self._db = open_database(db_path)
        self._history = History(self._db)
        self._review = ReviewQueue(self._db, {lv: self.layout.scope(lv) for lv in LEVELS})
        self._index = SearchIndex(self._db, self.layout, max_bytes=self.settings.max_file_bytes)
        for level in LEVELS:
            lay = self.layout.level(level)
            clean_stale_temps(lay.topics_dir)
            clean_stale_temps(lay.index_file.parent)
        self._index.refresh(force=True)

    def close(self) -> None:
        """Close the database connection. Safe to call twice."""
        with self._lock:
            self._db.conn.close()

    # -- reading -----------------------------------------------------------------

    def load_context(self) -> MemoryContext:
        """The memory text for the next prompt, user → project → session, each under budget."""
        with self._lock:
            return _load_context(
                self.layout,
                budgets=self.settings.index_budgets.of,
                count_tokens=self._count_tokens,
                max_depth=self.settings.max_import_depth,
                max_bytes=self.settings.max_file_bytes,
                scan_secrets=self._scanner,
            )

    def recall(self, query: str, *, limit: int = 5) -> list[Hit]:
        """Search every level, archived topics included; each hit names its file and level.

        Raises:
            MemoryStoreError: The search index failed.
        """
        with self._lock:
            self._index.refresh()
            return [self._screen(hit) for hit in self._index.search(query, limit=limit)]

    def _screen(self, hit: Hit) -> Hit:
        """Withhold a hit's snippet and title when they show a vault secret (hand-edited files)."""
        try:
            found = self._scanner(f"{hit.title}\n{hit.snippet}")
        except Exception as e:  # fail closed: an unchecked snippet is not shown
            return hit.model_copy(
                update={"snippet": f"[withheld: could not check for secrets ({e})]", "title": ""}
            )
        if not found:
            return hit
        names = ", ".join(sorted(set(found)))
        return hit.model_copy(
            update={"snippet": f"[withheld: contains the vault secret(s) {names}]", "title": ""}
        )

    def read_topic(self, level: str, name: str) -> Topic:
        """Read a topic and count the use (for the recency-and-use score).

        Raises:
            InvalidMemoryError: Bad level or name.
            TopicNotFoundError: No such topic.
        """
        with self._lock:
            lv = check_level(level)
            editor = self._editor()
            topic = editor.read(lv, topic_name(name))
            self._count_use(topic.path)
            return self._editor().read(lv, topic.name)  # with this use counted

    def rescan(self) -> int:
        """Re-read every file into the search index (after edits by hand)."""
        with self._lock:
            return self._index.refresh(force=True)

    def list_files(self) -> list[MemoryFile]:
        """Every memory file of every level, for the GUI's tree (missing index files too)."""
        with self._lock:
            files: list[MemoryFile] = []
            editor = self._editor()
            for level in LEVELS:
                lay = self.layout.level(level)
                for path in lay.shared_files:
                    files.append(MemoryFile(level=level, kind="shared", path=str(path),
                                            name=path.name, title=path.name, exists=path.is_file()))
                files.append(MemoryFile(level=level, kind="index", path=str(lay.index_file),
                                        name=lay.index_file.name, title=lay.index_file.name,
                                        exists=lay.index_file.is_file()))
                for topic in editor.topics(level):
                    files.append(MemoryFile(level=level, kind="topic", path=str(topic.path),
                                            name=topic.name, title=topic.meta.title,
                                            status=topic.meta.status))
            return files

    def capacity_usage(self) -> list[CapacityUsage]:
        """How full each level is against its capacity."""
        with self._lock:
            editor = self._editor()
            usages = []
            for level in LEVELS:
                topics = editor.topics(level)
                active = [t for t in topics if t.active]
                usages.append(
                    CapacityUsage(
                        level=level,
                        tokens=sum(topic_tokens(t, self._count_tokens) for t in active),
                        capacity=self.settings.capacities.of(level),
                        topics=len(active),
                        archived=len(topics) - len(active),
                    )
                )
            return usages

    # -- writing -----------------------------------------------------------------

    def remember(self, topic: str, content: str, *, level: str, source: Provenance) -> Change:
        """Add or update a topic and its index line.

        The provenance is stamped with this session when it names none. A
        write whose source is ``untrusted`` is queued for review instead
        (the returned change has ``review_id`` set and no ``id``).

        Raises:
            InvalidMemoryError: Bad level, topic or content.
            SecretInMemoryError: The text contains a vault secret or canary.
            MemoryStoreError: The write failed; the files are as before.
        """
        lv = check_level(level)
        name = topic_slug(topic)
        body = content.strip()
        if not body:
            raise InvalidMemoryError(f"nothing to remember for topic {topic!r}: content is empty")
        if len(body) > self.settings.max_content_chars:
            raise InvalidMemoryError(
                f"memory for topic {topic!r} is {len(body)} characters; the most is "
                f"{self.settings.max_content_chars}"
            )
        self._refuse_secrets(f"{topic}\n{body}")
        if source.session is None:
            source = source.model_copy(update={"session": self.session_id})
        with self._lock:
            if source.trust == "untrusted" and source.approved_at is None:
                item_id = self._review.add(
                    level=lv, topic=topic, content=body, source=source, session_id=self.session_id
                )
                return Change(
                    id=None, at=datetime.now(UTC), op="remember", level=lv, name=name,
                    summary=f"queued for review: {topic}", session_id=self.session_id,
                    source=source, review_id=item_id,
                )
            clean = " ".join(topic.split())[:120]  # a title is one line
            title = clean if clean != name else None

            def write(ed: TopicEditor) -> None:
                ed.put(lv, name, body=body, source=source, title=title)
                self._fit_capacity(ed, lv, keep=name)

            return self._change(
                "remember", lv, name, f"remember {lv} topic {name}", source, write
            )

    def _fit_capacity(self, editor: TopicEditor, level: Level, *, keep: str) -> list[str]:
        """Archive the level's lowest-scoring topics (never ``keep``) until it fits.

        Runs in the same edit as the write, so the write and what it pushed
        out are one change (one undo). Archived topics stay on disk, searchable.

        Raises:
            InvalidMemoryError: ``keep`` alone is over the level's capacity.
        """
        capacity = self.settings.capacities.of(level)
        active = editor.topics(level, active_only=True)
        sizes = {t.name: topic_tokens(t, self._count_tokens) for t in active}
        used = sum(sizes.values())
        if sizes.get(keep, 0) > capacity:
            raise InvalidMemoryError(
                f"memory topic {keep!r} is {sizes[keep]} tokens; the {level} level holds "
                f"{capacity}: write it shorter"
            )
        now = now_utc()
        archived: list[str] = []
        for topic in sorted(active, key=lambda t: (score(t, now), t.meta.updated, t.name)):
            if used <= capacity:
                break
            if topic.name == keep:
                continue
            editor.set_status(level, topic.name, archived=True, reason="over capacity")
            used -= sizes[topic.name]
            archived.append(topic.name)
        return archived

    def forget(self, level: str, name: str, *, reason: str) -> Change:
        """Archive a topic: it leaves the prompt but stays on disk, searchable.

        Raises:
            InvalidMemoryError: Bad level or name.
            TopicNotFoundError: No such topic.
            SecretInMemoryError: The reason contains a vault secret.
        """
        lv = check_level(level)
        name = topic_name(name)
        self._refuse_secrets(reason)
        with self._lock:
            return self._change(
                "forget", lv, name, f"archive {lv} topic {name}: {reason}", None,
                lambda ed: ed.set_status(lv, name, archived=True, reason=reason),
            )

    def restore(self, level: str, name: str) -> Change:
        """Make an archived topic active again, within the level's capacity.

        Like :meth:`remember`, the level's lowest-scoring other topics are
        archived in the same change when the restored one does not fit.

        Raises:
            InvalidMemoryError: Bad level or name, or the topic alone is over
                the level's capacity.
            TopicNotFoundError: No such topic.
        """
        lv = check_level(level)
        name = topic_name(name)

        def write(ed: TopicEditor) -> None:
            ed.set_status(lv, name, archived=False)
            self._fit_capacity(ed, lv, keep=name)

        with self._lock:
            return self._change("restore", lv, name, f"restore {lv} topic {name}", None, write)

    def repair(self) -> Change | None:
        """Rewrite hand-edited topic files whose front matter was missing or broken.

        Reading already works on such files (repaired in memory); this writes
        the repaired front matter back, as one undoable change. Broken YAML is
        kept in a comment at the top of the body, so nothing is lost.

        Returns:
            The change, or None when no file needed repair.
        """
        with self._lock:
            editor = self._editor()
            repaired: list[str] = []
            with self._rollback_on_error(editor):
                for level in LEVELS:
                    for topic in editor.topics(level):
                        if topic.repairs:
                            editor.save(topic)
                            repaired.append(f"{level}/{topic.name}")
                edits = editor.finish()
            if not edits:
                return None
            return self._history.record(
                op="repair", level="", name="", summary="repair front matter of "
                + ", ".join(repaired), session_id=self.session_id, source=None, edits=edits,
            )

    def undo(self, change_id: int) -> Change:
        """Put back the exact bytes a change replaced; recorded as a change itself.

        Raises:
            InvalidMemoryError: No such change, or already undone.
            UndoConflictError: A file was edited since; nothing was changed.
        """
        with self._lock:
            original = self._history.get(change_id)
            edits = self._history.undo_edits(change_id)
            self._index.refresh(force=True)  # the restored files, whatever they were
            return self._history.record(
                op="undo", level=original.level, name=original.name,
                summary=f"undo change {change_id} ({original.summary})",
                session_id=self.session_id, source=None, edits=edits, undo_of=change_id,
            )

    def history(self, limit: int = 50) -> list[Change]:
        """The latest changes, newest first, each with its diff."""
        with self._lock:
            return self._history.recent(limit)

    # -- review queue ------------------------------------------------------------

    def review_queue(self) -> list[ReviewItem]:
        """Memory from untrusted sources waiting for the user's decision."""
        with self._lock:
            return self._review.pending()

    def approve(self, item_id: int) -> Change:
        """Write a reviewed memory (scanned again: the vault may have changed).

        Raises:
            ReviewItemNotFoundError: Nothing pending with that id.
            SecretInMemoryError: It contains a vault secret now.
        """
        with self._lock:
            item = self._review.get_pending(item_id)
            source = item.source.model_copy(update={"approved_at": now_utc()})
            change = self.remember(item.topic, item.content, level=item.level, source=source)
            self._review.decide(item_id, "approved", change.id)
            return change

    def reject(self, item_id: int) -> None:
        """Refuse a queued memory; it is never written (the row is kept as a record).

        Raises:
            ReviewItemNotFoundError: Nothing pending with that id.
        """
        with self._lock:
            self._review.get_pending(item_id)
            self._review.decide(item_id, "rejected")

    # -- distillation -------------------------------------------------------------

    def over_capacity(self) -> list[Level]:
        """Levels whose active topics exceed their capacity."""
        return [u.level for u in self.capacity_usage() if u.over]

    def distill(self, model: ChatModel | None, *, level: str | None = None) -> DistillReport:
        """Consolidate memory with the model; the result always fits the capacity.

        With ``level=None``: the session's notes become project topics, then
        every level over capacity is distilled. With a level: that level only
        (``session`` promotes into ``project``). ``model=None`` skips the model
        and only enforces capacities. Each level's edits are one change in
        the history (undo it to revert the whole level).

        Raises:
            InvalidMemoryError: Bad level.
            MemoryStoreError: Files could not be written (those of the failed
                level are put back).
        """
        started = time.perf_counter()
        with self._lock:
            report = DistillReport()
            if level is not None:
                lv = check_level(level)
                report.levels.append(
                    self._distill_level(model, lv, "project" if lv == "session" else lv)
                )
            else:
                # The session pass shows the model the project topics too and
                # keeps the project's capacity; a level still over gets its own pass.
                if self._editor().topics("session", active_only=True):
                    report.levels.append(self._distill_level(model, "session", "project"))
                for lv in ("project", "user"):
                    if self._is_over(lv):
                        report.levels.append(self._distill_level(model, lv, lv))
            report.seconds = time.perf_counter() - started
            return report

    def _is_over(self, level: Level) -> bool:
        editor = self._editor()
        active = editor.topics(level, active_only=True)
        used = sum(topic_tokens(t, self._count_tokens) for t in active)
        return used > self.settings.capacities.of(level)

    def _distill_level(self, model: ChatModel | None, level: Level, into: Level) -> LevelDistill:
        editor = self._editor()
        distiller = LevelDistiller(
            editor=editor,
            level=level,
            into=into,
            capacity=self.settings.capacities.of(into),
            count_tokens=self._count_tokens,
            scan_secrets=self._scan_secrets,
            session_id=self.session_id,
            max_content_chars=self.settings.max_content_chars,
            entry_chars=self.settings.distill_entry_chars,
            max_tokens=self.settings.distill_max_tokens,
        )
        try:
            result = distiller.run(model)
            edits = editor.finish()
        except Exception:
            editor.rollback()
            raise
        if edits:
            change = self._history.record(
                op="distill", level=level, name="",
                summary=f"distill {level} into {into}: {len(result.applied)} applied, "
                f"{len(result.rejected)} rejected, {len(result.archived_for_capacity)} archived "
                "for capacity",
                session_id=self.session_id,
                source=Provenance(session=self.session_id, tool="distill", trust="model"),
                edits=edits,
            )
            result.change_id = change.id
        return result

    # -- helpers -------------------------------------------------------------------

    def _editor(self) -> TopicEditor:
        return TopicEditor(
            self.layout,
            self._index,
            max_bytes=self.settings.max_file_bytes,
            usage=self._usage_table(),
            cache=self._topics,
        )

    def _scan_secrets(self, text: str) -> list[str]:
        """Run the vault's scanner; if it cannot run, fail closed with our error."""
        try:
            return list(self._scanner(text))
        except Exception as e:  # any scanner failure means the text is unchecked
            raise SecretScanError(
                f"cannot check the memory text for vault secrets ({type(e).__name__}: {e}); "
                "nothing was written"
            ) from e

    def _refuse_secrets(self, text: str) -> None:
        found = self._scan_secrets(text)
        if found:
            raise SecretInMemoryError(found)

    def _change(
        self,
        op: str,
        level: Level,
        name: str,
        summary: str,
        source: Provenance | None,
        action: Callable[[TopicEditor], object],
    ) -> Change:
        editor = self._editor()
        with self._rollback_on_error(editor):
            action(editor)
            edits = editor.finish()
        return self._history.record(
            op=op, level=level, name=name, summary=summary,
            session_id=self.session_id, source=source, edits=edits,
        )

    @contextmanager
    def _rollback_on_error(self, editor: TopicEditor) -> Iterator[None]:
        try:
            yield
        except BaseException:
            editor.rollback()
            raise

    def _usage_table(self) -> Callable[[Path], tuple[int, datetime | None]]:
        """Use counts read once for one editor (one query, not one per topic)."""
        table = {
            str(path): (int(uses), datetime.fromisoformat(last) if last else None)
            for path, uses, last in self._db.conn.execute(
                "SELECT path, uses, last_used FROM memory_usage"
            )
        }
        return lambda path: table.get(str(path), (0, None))

    def _count_use(self, path: Path) -> None:
        try:
            with self._db.conn:
                self._db.conn.execute(
                    "INSERT INTO memory_usage (path, uses, last_used) VALUES (?, 1, ?)"
                    " ON CONFLICT(path) DO UPDATE SET uses = uses + 1,"
                    " last_used = excluded.last_used",
                    (str(path), now_utc().isoformat()),
                )
        except sqlite3.Error as e:
            raise MemoryStoreError(f"cannot record the use of {path}: {e}") from e
