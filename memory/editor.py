"""Edits to topic files and index files, collected into one undoable change.

A :class:`TopicEditor` reads and writes the topics of any level, keeps each
level's index block in step with its active topics, remembers the bytes of
every file before it first touched it, and on :meth:`TopicEditor.finish`
returns the :class:`~memory.history.FileEdit` list for the history table. If
anything fails half way, :meth:`TopicEditor.rollback` puts back the old bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from memory.errors import MemoryStoreError, TopicNotFoundError
from memory.frontmatter import Provenance, TopicMeta
from memory.history import FileEdit
from memory.index import SearchIndex
from memory.store import (
    Level,
    MemoryLayout,
    Topic,
    atomic_write,
    decode,
    index_line,
    list_topic_names,
    read_bytes,
    read_topic_file,
    remove_file,
    render_index,
)

UsageLookup = Callable[[Path], tuple[int, datetime | None]]
FileKey = tuple[int, int, int, int]


class TopicCache:
    """Parsed topics keyed by file identity, so listing a level does not re-parse YAML.

    The key is (inode, size, mtime, ctime): an atomic write makes a new inode, and
    a hand edit changes mtime/ctime. Callers get copies, never the cached object.
    """

    def __init__(self, max_entries: int = 20_000) -> None:
        self._entries: dict[Path, tuple[FileKey, Topic]] = {}
        self._max = max_entries

    @staticmethod
    def key(path: Path) -> FileKey | None:
        """The identity of the file now, or None when it does not exist."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise MemoryStoreError(f"cannot read memory file {path}: {e.strerror}") from e
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def get(self, path: Path, key: FileKey) -> Topic | None:
        """A copy of the cached topic if the file is unchanged."""
        entry = self._entries.get(path)
        if entry is None or entry[0] != key:
            return None
        return _copy(entry[1])

    def put(self, path: Path, key: FileKey, topic: Topic) -> None:
        """Remember a parsed topic for this file identity."""
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[path] = (key, _copy(topic))


def _copy(topic: Topic) -> Topic:
    # A shallow model copy gets its own field and extra dicts, which is all the
    # editor mutates (Provenance is frozen); a deep copy costs 10x more.
    return Topic(
        topic.level, topic.name, topic.path, topic.meta.model_copy(), topic.body,
        list(topic.repairs),
    )


def now_utc() -> datetime:
    """The current time, to the second (what front matter stores)."""
    return datetime.now(UTC).replace(microsecond=0)


class TopicEditor:
    """Collects the file edits of one memory operation."""

    def __init__(
        self,
        layout: MemoryLayout,
        index: SearchIndex,
        *,
        max_bytes: int,
        usage: UsageLookup,
        cache: TopicCache | None = None,
    ) -> None:
        self._layout = layout
        self._cache = cache or TopicCache()
        self._index = index
        self._max_bytes = max_bytes
        self._usage = usage
        self._before: dict[Path, bytes | None] = {}
        self._touched_levels: set[Level] = set()
        self._kinds: dict[Path, tuple[Level, str, str]] = {}

    # -- reading -----------------------------------------------------------------

    def read(self, level: Level, name: str) -> Topic:
        """Read a topic (repaired), with use counts merged from the database.

        Raises:
            TopicNotFoundError: No such topic.
        """
        layout = self._layout.level(level)
        path = layout.topic_path(name)
        key = self._cache.key(path)
        topic = self._cache.get(path, key) if key is not None else None
        if topic is None:
            topic = read_topic_file(layout, name, max_bytes=self._max_bytes)
            if key is not None:
                self._cache.put(path, key, topic)
        uses, last_used = self._usage(topic.path)
        if uses > topic.meta.uses:
            topic.meta.uses = uses
        if last_used and (topic.meta.last_used is None or last_used > topic.meta.last_used):
            topic.meta.last_used = last_used
        return topic

    def exists(self, level: Level, name: str) -> bool:
        """Whether a topic file of that name exists (active or archived)."""
        return self._layout.level(level).topic_path(name).is_file()

    def topics(self, level: Level, *, active_only: bool = False) -> list[Topic]:
        """Every topic of a level, sorted by name."""
        found = []
        for name in list_topic_names(self._layout.level(level)):
            try:
                topic = self.read(level, name)
            except TopicNotFoundError:  # deleted between listing and reading
                continue
            if topic.active or not active_only:
                found.append(topic)
        return found

    # -- writing -----------------------------------------------------------------

    def _capture(self, path: Path) -> None:
        if path not in self._before:
            self._before[path] = read_bytes(path)

    def _write(self, level: Level, name: str, path: Path, data: bytes, kind: str) -> None:
        self._capture(path)
        atomic_write(path, data)
        self._touched_levels.add(level)
        self._kinds[path] = (level, name, kind)

    def save(self, topic: Topic) -> Topic:
        """Write a topic file as it is now (front matter repaired)."""
        self._write(topic.level, topic.name, topic.path, topic.render().encode(), "topic")
        return topic

    def put(
        self,
        level: Level,
        name: str,
        *,
        body: str,
        source: Provenance,
        title: str | None = None,
        now: datetime | None = None,
    ) -> Topic:
        """Create a topic or replace its body; make it active.

        ``created``, ``uses`` and the title of an existing topic are kept.
        """
        now = now or now_utc()
        layout = self._layout.level(level)
        try:
            topic = self.read(level, name)
        except TopicNotFoundError:
            meta = TopicMeta(
                title=title or name.replace("-", " "), created=now, updated=now, source=source
            )
            topic = Topic(level, name, layout.topic_path(name), meta, body, [])
        else:
            topic.body = body
            topic.meta.updated = now
            topic.meta.source = source
            topic.meta.status = "active"
            topic.meta.replaced_by = None
            if title:
                topic.meta.title = title
        return self.save(topic)

    def set_status(
        self,
        level: Level,
        name: str,
        *,
        archived: bool,
        replaced_by: str | None = None,
        reason: str | None = None,
    ) -> Topic:
        """Archive or restore a topic (the file stays where it is).

        Raises:
            TopicNotFoundError: No such topic.
        """
        topic = self.read(level, name)
        topic.meta.status = "archived" if archived else "active"
        topic.meta.replaced_by = replaced_by if archived else None
        extra = topic.meta.model_extra if topic.meta.model_extra is not None else {}
        if archived and reason:
            extra["archived_reason"] = reason
        elif not archived:
            extra.pop("archived_reason", None)
        topic.meta.updated = now_utc()
        return self.save(topic)

    def snapshot(self, level: Level, name: str) -> str | None:
        """Keep an archived copy of a topic before it is rewritten; return its name.

        Returns None when the topic does not exist (nothing to keep).
        """
        try:
            topic = self.read(level, name)
        except TopicNotFoundError:
            return None
        layout = self._layout.level(level)
        base = name.split("~")[0]
        n = 1
        while (layout.topics_dir / f"{base}~{n}.md").exists():
            n += 1
        copy_name = f"{base}~{n}"
        meta = topic.meta.model_copy(deep=True)
        meta.status = "archived"
        meta.replaced_by = base
        copy = Topic(level, copy_name, layout.topic_path(copy_name), meta, topic.body, [])
        self.save(copy)
        return copy_name

    def _reindex(self, level: Level) -> None:
        layout = self._layout.level(level)
        lines = [index_line(layout, t) for t in self.topics(level, active_only=True)]
        current = read_bytes(layout.index_file)
        if current is None and not lines:
            return
        text = render_index(decode(current) if current is not None else "", lines)
        data = text.encode()
        if data != current:
            self._write(level, "", layout.index_file, data, "index")

    def finish(self) -> list[FileEdit]:
        """Rewrite the index of every touched level, update search, return the edits.

        Raises:
            MemoryStoreError: A file or the search index could not be written.
        """
        for level in sorted(self._touched_levels):
            self._reindex(level)
        edits = [FileEdit(path, before, read_bytes(path)) for path, before in self._before.items()]
        self._index.update_files(
            [(path, level, name, kind) for path, (level, name, kind) in self._kinds.items()]
        )
        return [e for e in edits if e.before != e.after]

    def rollback(self) -> None:
        """Put back every file this editor changed (best effort, then report)."""
        failures = []
        for path, before in self._before.items():
            try:
                if before is None:
                    remove_file(path)
                else:
                    atomic_write(path, before)
            except MemoryStoreError as e:
                failures.append(str(e))
        if failures:
            raise MemoryStoreError(
                "rolling back a failed memory write also failed: " + "; ".join(failures)
            )
