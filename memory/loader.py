"""Load memory into the prompt: user, then project, then session, each under a budget.

Each level's index files are read, their ``@path`` imports expanded, and the
result cut to the level's token budget (counted with the model's tokenizer)
at a line boundary, with a marker saying where it was cut. Nearer levels come
later and the header says they win where levels disagree.

An import is a line holding only ``@relative/path``. It is resolved relative
to the file that contains it, may nest up to ``max_import_depth`` levels, may
not form a cycle, and must resolve (symlinks included) inside a memory root:
the user's memory dir or the workspace. An import that breaks a rule is
replaced by a short bracketed note, and the note is reported in
:attr:`MemoryContext.problems`; loading never fails because of one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from memory.errors import MemoryStoreError
from memory.frontmatter import parse_topic
from memory.store import LEVELS, Level, MemoryLayout, decode, read_bytes, strip_index_markers

IMPORT_SUFFIXES = (".md", ".markdown", ".txt")
_IMPORT = re.compile(r"^[ \t]*@(?P<path>[^\s@][^\s]*)[ \t]*$")
_FENCE = re.compile(r"^[ \t]*(```|~~~)")

HEADER = (
    "# Memory\n"
    "Loaded from general to specific: user, then project, then session. "
    "Where they disagree, the later (nearer) level wins.\n"
)
LEVEL_TITLES: dict[Level, str] = {
    "user": "User memory",
    "project": "Project memory",
    "session": "Session notes",
}


class LevelUsage(BaseModel):
    """How much of a level's budget the loaded text uses."""

    model_config = ConfigDict(frozen=True)

    level: Level
    tokens: int = Field(description="Tokens of this level's text in the prompt.")
    capacity: int = Field(description="The level's index budget in tokens.")
    truncated: bool = Field(description="Whether the text was cut to fit.")


class MemoryContext(BaseModel):
    """The memory text for a prompt and what each level used."""

    model_config = ConfigDict(frozen=True)

    text: str
    levels: list[LevelUsage]
    problems: list[str] = Field(default_factory=list, description="Imports skipped and why.")


def cut_marker(level: Level, budget: int) -> str:
    """The line that replaces what did not fit in a level's budget."""
    return (
        f"[… cut here: the rest of the {level} memory did not fit its budget of "
        f"{budget} tokens; use recall to search it]\n"
    )


def fit_to_budget(
    text: str, budget: int, marker: str, count_tokens: Callable[[str], int]
) -> tuple[str, int, bool]:
    """Cut ``text`` to ``budget`` tokens, at a line boundary where possible.

    Returns:
        The text (with ``marker`` appended when cut), its token count, and
        whether it was cut.
    """
    # Tokenizing a huge index whole is the slow part; a prefix never has more
    # tokens than the text, so first find a prefix that is already over budget
    # (starting near 8 characters a token) and search for the cut inside it.
    window = max(budget * 8, 256)
    while window < len(text) and count_tokens(text[:window]) <= budget:
        window *= 2
    if window >= len(text):
        total = count_tokens(text)
        if total <= budget:
            return text, total, False
    else:
        text = text[:window]
    ends = [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    if not ends or ends[-1] != len(text):
        ends.append(len(text))

    def fits(end: int) -> int | None:
        candidate = text[:end]
        if candidate and not candidate.endswith("\n"):
            candidate += "\n"
        n = count_tokens(candidate + marker)
        return n if n <= budget else None

    best = _largest(ends, fits)
    if best is None:  # not even the first line fits: cut inside it
        first = ends[0]
        best = _largest(list(range(1, first)), fits)
    if best is None:
        return marker, count_tokens(marker), True
    end, _ = best
    kept = text[:end]
    if kept and not kept.endswith("\n"):
        kept += "\n"
    result = kept + marker
    return result, count_tokens(result), True


def _largest(cuts: list[int], fits: Callable[[int], int | None]) -> tuple[int, int] | None:
    """Binary search the largest cut point that fits (token counts grow with length)."""
    lo, hi = 0, len(cuts) - 1
    best: tuple[int, int] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        n = fits(cuts[mid])
        if n is None:
            hi = mid - 1
        else:
            best = (cuts[mid], n)
            lo = mid + 1
    return best


def expand_imports(
    path: Path,
    text: str,
    *,
    layout: MemoryLayout,
    max_depth: int,
    max_bytes: int,
    problems: list[str],
    _chain: tuple[Path, ...] = (),
) -> str:
    """Replace ``@path`` import lines in ``text`` (the content of ``path``).

    Lines inside fenced code blocks are left alone. Broken rules become
    bracketed notes in the text and entries in ``problems``.
    """
    chain = (*_chain, path.resolve())
    out: list[str] = []
    in_fence = False
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _IMPORT.match(line.rstrip("\r\n"))
        if match is None:
            out.append(line)
            continue
        target_text = match.group("path")
        note = _import_one(
            path, target_text, layout=layout, max_depth=max_depth, max_bytes=max_bytes,
            problems=problems, chain=chain,
        )
        out.append(note if note.endswith("\n") else note + "\n")
    return "".join(out)


def _import_one(
    path: Path,
    target_text: str,
    *,
    layout: MemoryLayout,
    max_depth: int,
    max_bytes: int,
    problems: list[str],
    chain: tuple[Path, ...],
) -> str:
    def refuse(reason: str) -> str:
        problems.append(f"{path}: import @{target_text} skipped: {reason}")
        return f"[import @{target_text} skipped: {reason}]"

    if target_text.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", target_text):
        return refuse("only paths relative to the file are allowed")
    if len(chain) > max_depth:
        return refuse(f"imports nest deeper than {max_depth} levels")
    target = (path.parent / target_text).resolve()
    if not layout.is_inside_roots(target):
        return refuse("outside the memory folders and the workspace")
    if target in chain:
        return refuse("import cycle")
    if target.exists() and not target.is_file():
        return refuse("not a file")
    if target.suffix.lower() not in IMPORT_SUFFIXES:
        # memory imports memory; a workspace's .env or key file is never pulled in
        return refuse(f"only {', '.join(IMPORT_SUFFIXES)} files can be imported")
    try:
        data = read_bytes(target)
    except MemoryStoreError as e:  # a bad import must not stop loading; it is reported
        return refuse(str(e))
    if data is None:
        return refuse("no such file")
    text = decode(data[:max_bytes])
    if text.startswith("---"):
        parsed = parse_topic(text, fallback_title=target.stem)
        if parsed.meta.status == "archived":
            return refuse("the topic is archived")
        text = parsed.body
    return expand_imports(
        target, text, layout=layout, max_depth=max_depth, max_bytes=max_bytes,
        problems=problems, _chain=chain,
    )


def read_level_text(
    layout: MemoryLayout,
    level: Level,
    *,
    max_depth: int,
    max_bytes: int,
    problems: list[str],
    scan_secrets: Callable[[str], list[str]] | None = None,
) -> str:
    """The full (uncut) text of a level's index files with imports expanded.

    A load file that is a symlink leading outside the memory roots is not
    read (a cloned repository's ``KEYLESS.md`` must not pull in ``~/.ssh``).
    With ``scan_secrets``, a file whose text (imports included) holds a vault
    secret or canary is withheld, and so is every file when the scan cannot
    run: secrets never reach the prompt through memory.
    """
    parts: list[str] = []
    lay = layout.level(level)
    for file in lay.load_files:
        if not file.exists():
            continue
        if not layout.is_inside_roots(file):
            problems.append(f"{file}: skipped: it leads outside the memory folders")
            continue
        data = read_bytes(file)
        if data is None:
            continue
        text = strip_index_markers(decode(data[:max_bytes]))
        text = expand_imports(
            file, text, layout=layout, max_depth=max_depth, max_bytes=max_bytes, problems=problems
        ).strip("\n")
        if not text:
            continue
        if scan_secrets is not None:
            withheld = _withheld(file, text, scan_secrets)
            if withheld:
                problems.append(withheld)
                continue
        if len(lay.load_files) > 1:
            rel = file.relative_to(lay.root) if file.is_relative_to(lay.root) else file.name
            parts.append(f"### {rel}\n{text}\n")
        else:
            parts.append(text + "\n")
    return "\n".join(parts)


UNCHECKED = "it could not be checked for vault secrets"
"""In a problem: the file was withheld because the scan could not run (the vault is locked)."""


def _withheld(file: Path, text: str, scan_secrets: Callable[[str], list[str]]) -> str | None:
    try:
        found = scan_secrets(text)
    except Exception as e:  # an unchecked text must not reach the prompt; reported instead
        return f"{file}: withheld: {UNCHECKED} ({e})"
    if found:
        names = ", ".join(sorted(set(found)))
        return f"{file}: withheld: it contains the vault secret(s) {names}; edit the file"
    return None


def load_context(
    layout: MemoryLayout,
    *,
    budgets: Callable[[Level], int],
    count_tokens: Callable[[str], int],
    max_depth: int,
    max_bytes: int,
    scan_secrets: Callable[[str], list[str]] | None = None,
) -> MemoryContext:
    """Assemble the prompt's memory text, user → project → session, each under its budget."""
    problems: list[str] = []
    sections: list[str] = []
    usages: list[LevelUsage] = []
    for level in LEVELS:
        budget = budgets(level)
        text = read_level_text(
            layout, level, max_depth=max_depth, max_bytes=max_bytes, problems=problems,
            scan_secrets=scan_secrets,
        )
        if not text.strip():
            usages.append(LevelUsage(level=level, tokens=0, capacity=budget, truncated=False))
            continue
        kept, tokens, cut = fit_to_budget(text, budget, cut_marker(level, budget), count_tokens)
        usages.append(LevelUsage(level=level, tokens=tokens, capacity=budget, truncated=cut))
        sections.append(f"## {LEVEL_TITLES[level]}\n{kept}")
    text = HEADER + "\n" + "\n".join(sections) if sections else ""
    return MemoryContext(text=text, levels=usages, problems=problems)
