"""Where each memory level lives on disk, and safe reads and writes of its files.

Every level has the same shape: an *index file* that loads into the prompt
(under a token budget) and a directory of *topic files* that load on demand.

- user: index ``<data>/memory/USER.md``, topics ``<data>/memory/topics/*.md``;
- project: ``<ws>/KEYLESS.md`` (shared, committed, never written by Keyless)
  and the index ``<ws>/.keyless/memory/MEMORY.md``, topics
  ``<ws>/.keyless/memory/topics/*.md``;
- session: index ``<ws>/.keyless/sessions/<id>.md``, topics
  ``<ws>/.keyless/sessions/<id>/topics/*.md``.

The index file the store writes keeps one line per *active* topic between two
marker comments; text outside the markers belongs to the person and is never
touched. Writes are atomic: a temp file in the same directory, fsync, rename,
fsync of the directory, so a crash leaves either the old or the new file.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from memory.errors import InvalidMemoryError, MemoryStoreError, TopicNotFoundError
from memory.frontmatter import ParsedTopic, TopicMeta, parse_topic, render_topic

Level = Literal["user", "project", "session"]
LEVELS: tuple[Level, ...] = get_args(Level)

INDEX_START = "<!-- keyless:topics:start (lines below are kept by Keyless) -->"
INDEX_END = "<!-- keyless:topics:end -->"
_INDEX_BLOCK = re.compile(
    r"<!-- keyless:topics:start[^\n]*-->\n?.*?<!-- keyless:topics:end -->\n?", re.S
)
_TOPIC_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}(~[0-9]{1,6})?$")
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TEMP_PREFIX = ".keyless-tmp-"


def check_level(level: str) -> Level:
    """Return ``level`` as a :data:`Level`.

    Raises:
        InvalidMemoryError: It is not one of user, project, session.
    """
    if level not in LEVELS:
        raise InvalidMemoryError(f"unknown memory level {level!r}; use one of {', '.join(LEVELS)}")
    return level


def topic_slug(topic: str) -> str:
    """Turn a topic title into its file name (without ``.md``).

    Raises:
        InvalidMemoryError: Nothing usable is left (e.g. only punctuation).
    """
    slug = re.sub(r"[^a-z0-9]+", "-", topic.strip().lower()).strip("-")[:64].rstrip("-")
    if not slug:
        raise InvalidMemoryError(f"topic {topic!r} has no letters or digits to name a file")
    return slug


def check_topic_name(name: str) -> str:
    """Validate a topic file name (as returned by :func:`topic_slug`).

    Raises:
        InvalidMemoryError: The name could escape the topics directory or is malformed.
    """
    if not _TOPIC_NAME.match(name):
        raise InvalidMemoryError(
            f"invalid topic name {name!r}: use lowercase letters, digits and '-' (64 at most)"
        )
    return name


def topic_name(name_or_title: str) -> str:
    """Accept a topic's file name or its title (as a model may give) and return the name.

    Raises:
        InvalidMemoryError: It looks like a path, or has nothing to name a file with.
    """
    if _TOPIC_NAME.match(name_or_title):
        return name_or_title
    if any(ch in name_or_title for ch in "/\\") or name_or_title.startswith("."):
        raise InvalidMemoryError(
            f"invalid topic name {name_or_title!r}: a topic name is not a path"
        )
    return topic_slug(name_or_title)


def check_session_id(session_id: str) -> str:
    """Validate a session id, which becomes a file name.

    Raises:
        InvalidMemoryError: The id is empty, too long or contains path characters.
    """
    if not _SESSION_ID.match(session_id):
        raise InvalidMemoryError(
            f"invalid session id {session_id!r}: letters, digits, '.', '_' and '-' only"
        )
    return session_id


@dataclass(frozen=True)
class LevelLayout:
    """The files of one memory level."""

    level: Level
    root: Path
    shared_files: tuple[Path, ...]
    index_file: Path
    topics_dir: Path

    def topic_path(self, name: str) -> Path:
        """Return the path of topic ``name`` (validated)."""
        return self.topics_dir / f"{check_topic_name(name)}.md"

    @property
    def load_files(self) -> tuple[Path, ...]:
        """Files that load into the prompt, in order."""
        return (*self.shared_files, self.index_file)


class MemoryLayout:
    """The memory files of one user, workspace and session."""

    def __init__(self, *, user_dir: Path, workspace: Path, session_id: str) -> None:
        self.user_dir = Path(user_dir).absolute()
        self.workspace = Path(workspace).absolute()
        self.session_id = check_session_id(session_id)
        memory = self.workspace / ".keyless" / "memory"
        sessions = self.workspace / ".keyless" / "sessions"
        self._levels: dict[Level, LevelLayout] = {
            "user": LevelLayout(
                "user", self.user_dir, (), self.user_dir / "USER.md", self.user_dir / "topics"
            ),
            "project": LevelLayout(
                "project",
                self.workspace,
                (self.workspace / "KEYLESS.md",),
                memory / "MEMORY.md",
                memory / "topics",
            ),
            "session": LevelLayout(
                "session",
                self.workspace,
                (),
                sessions / f"{self.session_id}.md",
                sessions / self.session_id / "topics",
            ),
        }

    def level(self, level: Level) -> LevelLayout:
        """Return the layout of ``level``."""
        return self._levels[check_level(level)]

    @property
    def roots(self) -> tuple[Path, ...]:
        """Directories memory files may import from (resolved)."""
        return (self.user_dir.resolve(), self.workspace.resolve())

    def is_inside_roots(self, path: Path) -> bool:
        """Whether ``path``, with symlinks resolved, lies inside a memory root."""
        resolved = path.resolve()
        return any(resolved.is_relative_to(root) for root in self.roots)

    def scope(self, level: Level) -> str:
        """A key that identifies this level's files in the shared database."""
        if level == "user":
            return str(self.user_dir)
        if level == "project":
            return str(self.workspace)
        return f"{self.workspace}#session:{self.session_id}"


def read_bytes(path: Path) -> bytes | None:
    """Return a file's bytes, or None when it does not exist.

    Raises:
        MemoryStoreError: It exists but cannot be read.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise MemoryStoreError(f"cannot read memory file {path}: {e.strerror}") from e


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file.

    Raises:
        MemoryStoreError: The write failed; the old file is untouched.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise MemoryStoreError(f"cannot write memory file {path}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise MemoryStoreError(f"cannot write memory file {path}: {e.strerror}") from e


def remove_file(path: Path) -> None:
    """Delete ``path`` if it exists (used only by undo of a creation).

    Raises:
        MemoryStoreError: The file could not be removed.
    """
    try:
        path.unlink(missing_ok=True)
        _fsync_dir(path.parent)
    except FileNotFoundError:
        return
    except OSError as e:
        raise MemoryStoreError(f"cannot remove memory file {path}: {e.strerror}") from e


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_stale_temps(directory: Path) -> None:
    """Remove temp files a crashed write left behind in ``directory``."""
    if not directory.is_dir():
        return
    for stale in directory.glob(f"{TEMP_PREFIX}*.tmp"):
        stale.unlink(missing_ok=True)


@dataclass
class Topic:
    """A topic file as read from disk."""

    level: Level
    name: str
    path: Path
    meta: TopicMeta
    body: str
    repairs: list[str]

    def render(self) -> str:
        """The file's text with repaired front matter."""
        return render_topic(self.meta, self.body)

    @property
    def active(self) -> bool:
        """Whether the topic loads (is not archived)."""
        return self.meta.status == "active"


def decode(data: bytes) -> str:
    """Decode a memory file, replacing bytes that are not UTF-8 (hand edits)."""
    return data.decode("utf-8", errors="replace")


def read_topic_file(layout: LevelLayout, name: str, *, max_bytes: int) -> Topic:
    """Read and repair topic ``name`` of a level.

    Raises:
        TopicNotFoundError: There is no such topic file.
        MemoryStoreError: It cannot be read.
    """
    path = layout.topic_path(name)
    data = read_bytes(path)
    if data is None:
        raise TopicNotFoundError(f"no {layout.level} topic named {name!r}")
    return topic_from_text(layout.level, name, path, decode(data[:max_bytes]))


def topic_from_text(level: Level, name: str, path: Path, text: str) -> Topic:
    """Build a :class:`Topic` from a file's text, repairing its front matter."""
    parsed: ParsedTopic = parse_topic(text, fallback_title=name.replace("-", " "))
    return Topic(level, name, path, parsed.meta, parsed.body, parsed.repairs)


def list_topic_names(layout: LevelLayout) -> list[str]:
    """Names of the topic files of a level (valid names only), sorted."""
    if not layout.topics_dir.is_dir():
        return []
    names = []
    for entry in layout.topics_dir.iterdir():
        if entry.suffix == ".md" and _TOPIC_NAME.match(entry.stem) and entry.is_file():
            names.append(entry.stem)
    return sorted(names)


def index_line(layout: LevelLayout, topic: Topic) -> str:
    """The index line of a topic: a link and a short summary."""
    rel = os.path.relpath(topic.path, layout.index_file.parent)
    # no comment markers: a body quoting "<!-- keyless:topics:end -->" must not end the block
    summary = " ".join(topic.body.split()).replace("<!--", "").replace("-->", "")
    if len(summary) > 90:
        summary = summary[:89].rstrip() + "…"
    # one line whatever a hand edit put in the title: it must not break the list
    title = " ".join(topic.meta.title.split()).replace("]", ")").replace("[", "(")
    title = title.replace("<!--", "").replace("-->", "")
    return f"- [{title}]({rel}): {summary}" if summary else f"- [{title}]({rel})"


def strip_index_markers(text: str) -> str:
    """Drop the marker comment lines (they mean nothing to a model or a search)."""
    return "".join(
        line
        for line in text.splitlines(keepends=True)
        if not line.startswith(("<!-- keyless:topics:start", "<!-- keyless:topics:end"))
    )


def without_index_block(text: str) -> str:
    """An index file's text without its managed topic lines (the person's own text)."""
    return _INDEX_BLOCK.sub("", text)


def render_index(existing: str, lines: list[str]) -> str:
    """Put the managed topic lines into an index file's text.

    Text outside the marker comments is kept as it is; the block is added at
    the end when the file has none.
    """
    block = INDEX_START + "\n" + "".join(line + "\n" for line in lines) + INDEX_END + "\n"
    if _INDEX_BLOCK.search(existing):
        return _INDEX_BLOCK.sub(lambda _m: block, existing, count=1)
    if existing and not existing.endswith("\n"):
        existing += "\n"
    separator = "\n" if existing else ""
    return existing + separator + block
