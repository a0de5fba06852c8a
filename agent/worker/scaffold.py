"""Scaffolding that keeps a small model's errand moving: no repeats, closed paths.

Small models loop: the embedded 135M model calls ``list_dir(".")``, then the
same call again until the step limit, and no message in the context talks it
out of it. :class:`StepScaffold` remembers the calls of an errand and shapes
each step so that a repeat does not come out, without making sampling slow.

Repeats are caught after the fact, not written into the grammar. A call
identical to one made since the last write (:meth:`StepScaffold.is_repeat`;
failed calls count too) is rejected and the step is sampled again under
:meth:`StepScaffold.step_schema` with that tool left out
(``exclude=...``). Excluding the exact value inside the grammar needs a
``pattern`` that matches every string but the values used (JSON schema has
no ``not``); it grows with every value excluded and is paid on every step
(up to 2x per token under load: docs/benchmarks.md, "Step grammar"), while
the rejection costs one extra generation only on the steps that repeat.

Excluding the exact value is not enough for the 135M model: it drifts to the
next string (``app.ini``, ``app.ini.txt``, ``app.ini.txt.txt`` ...). So the
scaffold also keeps the paths the errand has seen (listings, search hits,
files it wrote, files the task names: :func:`named_paths`), and with
``closed_paths`` the :data:`PATH_KINDS` tools take only those, as a short
``enum`` (cheap to sample): ``list_dir`` a directory seen and not yet listed
(at first the workspace), ``read_file`` a file seen and not yet read since
the last write (none before a listing or a search unless the task names one).
The worker closes the paths for local models (the small ones need it; a
listing costs a large one one step).

The same small model, once it has read the answer to a question, writes it
into a file instead of answering. A task that reads as a question
(:func:`is_question`) is offered only the read-only tools: when there is
nothing new left to read, only the answer is left, and the executor asks for
it as plain text from the listings and files read
(:func:`agent.worker.prompt.answer_messages`); a question that names files
is answered as soon as they are read.
With closed paths a free-text tool (``search_files``, ``recall``, ``shell``
...) is offered at most :data:`RUN_CAP` times until the next write, and a
question gets none of them once a file was read.
"""

from __future__ import annotations

import copy
import json
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any

from agent.protocol import FINISH_TOOL, ToolOffer, step_schema

PATH_KINDS = {"list_dir": "directory", "read_file": "file"}
"""Tools whose ``path`` takes only paths the errand has seen, and which kind."""

RUN_CAP = 2
"""With closed paths, calls of one free-text tool allowed until the next write."""

MAX_CHOICES = 64
"""Paths offered as an ``enum`` at most (the most recently seen); more would slow sampling."""

_CHANGE_WORDS = re.compile(
    r"\b(fix|change|edit|write|create|add|remove|delete|rename|update|set|save|replace|make|"
    r"run|move|copy|install|commit|send|post|fetch|call|remember|forget)\b",
    re.IGNORECASE,
)


_ASKING = re.compile(r"^\s*(list|name|tell|show|count|give|find|say|report)\b", re.IGNORECASE)

_NAMED_PATH = re.compile(
    r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.[A-Za-z0-9]{1,8})(?![\w/-])"
    r"|\b(?:file|directory|folder)\s+((?:[\w-]+/)*[\w.-]*\w)",
    re.IGNORECASE,
)


def is_question(task: str) -> bool:
    """Whether ``task`` asks only for an answer and names no change.

    It ends with "?" or starts with an asking verb ("List the ...", "Tell me ...").
    """
    asks = task.rstrip().endswith("?") or _ASKING.search(task) is not None
    return asks and _CHANGE_WORDS.search(task) is None


def named_paths(task: str) -> list[str]:
    """The file paths ``task`` names: ``calc.py``, ``src/app.ini``, "the file VERSION"."""
    found = [m.group(1) or m.group(2) for m in _NAMED_PATH.finditer(task)]
    return list(dict.fromkeys(_norm(p) for p in found if p))


def canonical_call(offer: ToolOffer | None, arguments: Mapping[str, Any]) -> str:
    """The call as canonical JSON, with the schema's defaults filled in.

    ``list_dir({})`` and ``list_dir({"path": "."})`` are one call.
    """
    full: dict[str, Any] = {}
    if offer is not None:
        for name, prop in offer.parameters.get("properties", {}).items():
            if "default" in prop:
                full[name] = prop["default"]
    full.update(arguments)
    if offer is not None and offer.name in PATH_KINDS and isinstance(full.get("path"), str):
        full["path"] = _norm(full["path"])
    return json.dumps(full, sort_keys=True)


class StepScaffold:
    """Remembers the calls of one errand and shapes the schema of each step.

    Args:
        offers: The tools offered in the errand (``read_only`` says which
            calls leave the workspace as it was).
        closed_paths: Path arguments of :data:`PATH_KINDS` tools take only
            the paths the errand has seen.
        answer_only: Offer only the read-only tools (and ``finish``): the
            task asks a question.
        named: Paths the task names (:func:`named_paths`): seen from the
            start; a question that names files is answered once they are read.
    """

    def __init__(
        self,
        offers: Sequence[ToolOffer],
        *,
        closed_paths: bool = False,
        answer_only: bool = False,
        named: Sequence[str] = (),
    ) -> None:
        self._closed_paths = closed_paths
        if answer_only:
            offers = [o for o in offers if o.read_only or o.name == FINISH_TOOL]
        self._offers = list(offers)
        self._by_name = {offer.name: offer for offer in self._offers}
        self._done: dict[str, list[dict[str, Any]]] = {}
        self._signatures: set[tuple[str, str]] = set()
        # Insertion-ordered: the most recently seen paths are the last ones.
        self._seen: dict[str, dict[str, None]] = {"directory": {".": None}, "file": {}}
        self._answer_only = answer_only
        self._named = [_norm(p) for p in named]
        for path in self._named:
            self._seen["file"][path] = None
        self._files_read: list[tuple[str, str]] = []
        self._read_ok: set[str] = set()

    @property
    def closed_paths(self) -> bool:
        """Whether path arguments are closed (and the answer may come as plain text)."""
        return self._closed_paths

    def is_repeat(self, tool: str, arguments: Mapping[str, Any]) -> bool:
        """Whether this call was made since the last write (it would tell nothing new)."""
        return (tool, canonical_call(self._by_name.get(tool), arguments)) in self._signatures

    def record(
        self, tool: str, arguments: Mapping[str, Any], *, ok: bool = True, content: str = ""
    ) -> None:
        """Note a call that reached the host, and whether it succeeded.

        A read-only call joins the calls not to repeat. Any other call may
        have changed what a read would show, so it starts the list afresh,
        with itself as the one call not to repeat. Failed calls count too: the
        embedded model retried a failing edit, word for word, to the step limit.
        """
        offer = self._by_name.get(tool)
        if ok:
            self._observe(tool, arguments, content)
        if offer is None or not offer.read_only:
            self._done.clear()
            self._signatures.clear()
        self._done.setdefault(tool, []).append(dict(arguments))
        self._signatures.add((tool, canonical_call(offer, arguments)))

    def step_schema(self, *, exclude: str | None = None) -> dict[str, Any]:
        """The next step's schema: :func:`agent.protocol.step_schema`, shaped.

        Args:
            exclude: Leave this tool out (the step is sampled again after
                the model repeated a call of it).
        """
        if self._closed_paths and self._answer_only and self._named_all_read():
            return step_schema([o for o in self._offers if o.name == FINISH_TOOL])
        offers = []
        for offer in self._offers:
            if offer.name == exclude:
                continue
            if offer.name == FINISH_TOOL:
                offers.append(offer)
                continue
            calls = self._done.get(offer.name, [])
            kind = PATH_KINDS.get(offer.name) if self._closed_paths else None
            # Only paths seen: the workspace and the files the task names at
            # first (a model lists a file name it made up, or one from its prompt).
            if kind is not None:
                used = {_norm(str(c.get("path", "."))) for c in calls}
                choices = [p for p in self._seen[kind] if p not in used][-MAX_CHOICES:]
                if kind == "file" and self._answer_only:
                    # A question about named files reads them first: another
                    # file's text only misleads the answer.
                    choices = [p for p in self._named if p not in used] or choices
                if choices:
                    offers.append(_with_choices(offer, "path", choices))
                continue
            if self._closed_paths and (
                len(calls) >= RUN_CAP or (self._answer_only and self._read_ok)
            ):
                continue
            offers.append(offer)
        return step_schema(offers)

    def files_read(self) -> list[tuple[str, str]]:
        """``(what, content)`` of each successful listing and read, oldest first.

        ``what`` is the file's path, or "listing of DIR" for a listing; once
        every file the task names was read, those files only.
        """
        if self._named_all_read():
            return [(p, c) for p, c in self._files_read if _norm(p) in self._named]
        return list(self._files_read)

    def _named_all_read(self) -> bool:
        return bool(self._named) and all(p in self._read_ok for p in self._named)

    @staticmethod
    def only_answer_left(schema: Mapping[str, Any]) -> bool:
        """Whether ``schema`` (from :meth:`step_schema`) offers no tool but ``finish``."""
        tools = {
            o["properties"]["tool"]["const"] for o in schema["anyOf"] if "tool" in o["properties"]
        }
        return tools <= {FINISH_TOOL}

    def _observe(self, tool: str, arguments: Mapping[str, Any], content: str) -> None:
        """Learn the paths a successful call showed or made."""
        if tool == "list_dir":
            base = _norm(str(arguments.get("path", ".")))
            self._files_read.append((f"listing of {base}", content))
            for line in content.splitlines()[1:]:
                if line.startswith("["):
                    continue
                name, _, rest = line.partition("  ")
                if " -> " in name:
                    continue  # a symlink: not followed
                if name.endswith("/") or (not rest and "/ (" in line):
                    self._seen["directory"][_join(base, name.split("/")[0])] = None
                elif rest:
                    self._seen["file"][_join(base, name)] = None
        elif tool == "read_file":
            path = str(arguments.get("path", ""))
            self._files_read.append((path, content))
            self._read_ok.add(_norm(path))
        elif tool == "search_files":
            for line in content.splitlines():
                path, sep, _ = line.partition(":")
                if sep and not line.startswith("["):
                    self._add_file(_norm(path))
        elif tool in ("write_file", "edit_file") and isinstance(arguments.get("path"), str):
            self._add_file(_norm(arguments["path"]))

    def _add_file(self, path: str) -> None:
        self._seen["file"][path] = None
        parent = posixpath.dirname(path)
        while parent:
            self._seen["directory"][parent] = None
            parent = posixpath.dirname(parent)


def _norm(path: str) -> str:
    return posixpath.normpath(path.strip() or ".")


def _join(base: str, name: str) -> str:
    return name if base == "." else _norm(posixpath.join(base, name))


def _with_choices(offer: ToolOffer, argument: str, choices: Sequence[str]) -> ToolOffer:
    """``offer`` whose ``argument`` is required and one of ``choices``."""
    parameters = copy.deepcopy(offer.parameters)
    prop = parameters["properties"][argument]
    prop.pop("default", None)
    prop["enum"] = list(choices)
    parameters["required"] = sorted({*parameters.get("required", ()), argument})
    return offer.model_copy(update={"parameters": parameters})
