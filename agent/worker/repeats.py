"""Keep a model from repeating a tool call whose result it already has.

Small models loop: they call ``list_dir(".")``, then the same call again
until the step limit, and no message in the context talks them out of it. The
cure is in the grammar: :class:`RepeatGuard` remembers the calls made since
the last one that could change anything (a tool not offered as read-only),
and :meth:`RepeatGuard.step_schema` builds the next step's schema so those
exact calls cannot be produced.

llama.cpp's JSON-schema grammar has no ``not``, so the exclusion is written
with what it has: a tool's *main argument* (its first required string, else
its first string with a default, such as ``list_dir``'s ``path``) is made
required and given a ``pattern`` that matches every string but the values
already used (:func:`excluding_pattern`), for read-only tools (a write's
exact repeat is refused by the executor instead). That is stricter than "this exact
call": ``read_file`` of the same path with another ``start_line`` is excluded
too until something is written. A tool without a string argument is left out
of the step instead. Calls are compared with the schema's defaults filled in,
so ``list_dir({})`` and ``list_dir({"path": "."})`` are one call.

Excluding the exact value is not enough for the embedded 135M model: it
drifts to the next string (``app.ini``, ``app.ini.txt``, ``app.ini.txt.txt``
...). So the guard also keeps the paths the errand has seen (listings,
search hits, files it wrote), and with ``closed_paths`` :data:`PATH_KINDS`
tools take only those once the errand has looked around: ``list_dir`` a
directory seen and not yet listed (the workspace itself after a failed first
try), ``read_file`` a file seen once anything was listed or searched. The
worker closes the paths for local models (the small ones need it; a listing
costs a large one one step); scripted and remote models keep free paths.

The same small model, once it has read the answer to a question, writes it
into a file instead of answering. A task that reads as a question
(:func:`is_question`) is therefore offered only the read-only tools (with
closed paths): when there is nothing new left to read, the grammar leaves
only the answer. Free-text arguments drift the same way (``search_files``
for ``list_dir``, ``list_dir_2``, ``list_dir_2_2`` ...): with closed paths, a
tool other than those is offered at most :data:`RUN_CAP` times until the next
write, and a question gets none of them once a file has been read.
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

_JSON_SPECIAL = '"\\'
"""Characters a pattern-constrained value never contains (they would need JSON escapes)."""


_CHANGE_WORDS = re.compile(
    r"\b(fix|change|edit|write|create|add|remove|delete|rename|update|set|save|replace|make|"
    r"run|move|copy|install|commit|send|post|fetch|call|remember|forget)\b",
    re.IGNORECASE,
)


def is_question(task: str) -> bool:
    """Whether ``task`` asks only for an answer: it ends with "?" and names no change."""
    return task.rstrip().endswith("?") and _CHANGE_WORDS.search(task) is None


def main_argument(parameters: Mapping[str, Any]) -> str | None:
    """The argument whose value tells one call of a tool from another, or None.

    The first required string property, else the first string property with a
    default.
    """
    properties: Mapping[str, Any] = parameters.get("properties", {})
    required = parameters.get("required", ())
    strings = [
        name for name, prop in properties.items()
        if prop.get("type") == "string" and "enum" not in prop
    ]  # fmt: skip
    for name in strings:
        if name in required:
            return name
    return next((name for name in strings if "default" in properties[name]), None)


def canonical_call(offer: ToolOffer | None, arguments: Mapping[str, Any]) -> str:
    """The call as canonical JSON, with the schema's defaults filled in."""
    full: dict[str, Any] = {}
    if offer is not None:
        for name, prop in offer.parameters.get("properties", {}).items():
            if "default" in prop:
                full[name] = prop["default"]
    full.update(arguments)
    return json.dumps(full, sort_keys=True)


def excluding_pattern(values: Sequence[str]) -> str:
    """A regular expression matching every string free of quotes and backslashes but ``values``.

    Written for llama.cpp's pattern-to-grammar converter: anchors, groups,
    ``?``, ``*`` and character classes only (no lookahead, no ``.``, and
    every literal character inside a class, where GBNF accepts it).
    """
    return "^" + _node(set(values)) + "$"


def _char_class(chars: set[str], *, negate: bool = False) -> str:
    body = "".join("\\" + c if c in "]\\^-[" else c for c in sorted(chars))
    return "[" + ("^" if negate else "") + body + "]"


def _node(suffixes: set[str]) -> str:
    """The strings that differ from every one of ``suffixes`` (a trie, walked)."""
    firsts = {s[0] for s in suffixes if s}
    anything = _char_class(set(_JSON_SPECIAL), negate=True) + "*"
    alternatives = [_char_class(set(_JSON_SPECIAL) | firsts, negate=True) + anything]
    for c in sorted(firsts):
        alternatives.append(_char_class({c}) + _node({s[1:] for s in suffixes if s and s[0] == c}))
    group = "(" + "|".join(alternatives) + ")"
    # The empty rest is allowed unless it would complete one of the values.
    return group if "" in suffixes else group + "?"


class RepeatGuard:
    """Remembers the calls of one errand and excludes repeats from the next step.

    Args:
        offers: The tools offered in the errand (``read_only`` says which
            calls leave the workspace as it was).
        closed_paths: Path arguments of :data:`PATH_KINDS` tools take only
            the paths the errand has seen.
        answer_only: Offer only the read-only tools (and ``finish``): the
            task asks a question.
    """

    def __init__(
        self,
        offers: Sequence[ToolOffer],
        *,
        closed_paths: bool = False,
        answer_only: bool = False,
    ) -> None:
        self._closed_paths = closed_paths
        if answer_only:
            offers = [o for o in offers if o.read_only or o.name == FINISH_TOOL]
        self._offers = list(offers)
        self._by_name = {offer.name: offer for offer in self._offers}
        self._done: dict[str, list[dict[str, Any]]] = {}
        self._signatures: set[tuple[str, str]] = set()
        self._seen: dict[str, set[str]] = {"directory": {"."}, "file": set()}
        self._looked = False  # anything listed or searched: the files seen are all there is
        self._answer_only = answer_only
        self._files_read: list[tuple[str, str]] = []

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

    def step_schema(self) -> dict[str, Any]:
        """The next step's schema: :func:`agent.protocol.step_schema` without the repeats."""
        offers = []
        for offer in self._offers:
            calls = self._done.get(offer.name, [])
            kind = PATH_KINDS.get(offer.name) if self._closed_paths else None
            if kind is not None and (self._looked or (kind == "directory" and calls)):
                used = {_norm(str(c.get("path", "."))) for c in calls}
                choices = sorted(self._seen[kind] - used)
                if choices:
                    offers.append(_with_choices(offer, "path", choices))
                continue
            if offer.name == FINISH_TOOL:
                offers.append(offer)
                continue
            if self._closed_paths and (
                len(calls) >= RUN_CAP or (self._answer_only and self._files_read)
            ):
                continue
            if not calls:
                offers.append(offer)
                continue
            if not offer.read_only:
                # A write is told apart by more than its main argument (the content).
                offers.append(_not_this_call(offer, calls[-1]))
                continue
            narrowed = _narrowed(offer, calls)
            if narrowed is not None:
                offers.append(narrowed)
        return step_schema(offers)

    def files_read(self) -> list[tuple[str, str]]:
        """``(path, content)`` of each successful ``read_file``, oldest first."""
        return list(self._files_read)

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
            self._looked = True
            base = _norm(str(arguments.get("path", ".")))
            for line in content.splitlines()[1:]:
                if line.startswith("["):
                    continue
                name, _, rest = line.partition("  ")
                if " -> " in name:
                    continue  # a symlink: not followed
                if name.endswith("/") or (not rest and "/ (" in line):
                    self._seen["directory"].add(_join(base, name.split("/")[0]))
                elif rest:
                    self._seen["file"].add(_join(base, name))
        elif tool == "read_file":
            self._files_read.append((str(arguments.get("path", "")), content))
        elif tool == "search_files":
            self._looked = True
            for line in content.splitlines():
                path, sep, _ = line.partition(":")
                if sep and not line.startswith("["):
                    self._add_file(_norm(path))
        elif tool in ("write_file", "edit_file") and isinstance(arguments.get("path"), str):
            self._add_file(_norm(arguments["path"]))

    def _add_file(self, path: str) -> None:
        self._seen["file"].add(path)
        parent = posixpath.dirname(path)
        while parent:
            self._seen["directory"].add(parent)
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


def _not_this_call(offer: ToolOffer, call: Mapping[str, Any]) -> ToolOffer:
    """``offer`` whose arguments differ from ``call`` in at least one argument.

    One alternative per argument, each requiring it and excluding the call's
    value: a string by a pattern, a boolean by the other constant, an enum by
    the other members. Where an argument cannot be so written (a number, an
    object, a string with a quote, a backslash or a control character), the
    offer is left as it is, and :meth:`RepeatGuard.is_repeat` refuses the
    exact repeat instead.
    """
    parameters = offer.parameters
    props: Mapping[str, Any] = parameters.get("properties", {})
    if not props or "$defs" in parameters:
        return offer
    variants = []
    for name, prop in props.items():
        value = call.get(name, prop.get("default"))
        variant = copy.deepcopy(dict(parameters))
        narrowed = variant["properties"][name]
        narrowed.pop("default", None)
        if "enum" in prop:
            others = [v for v in prop["enum"] if v != value]
            if not others:
                continue
            narrowed["enum"] = others
        elif prop.get("type") == "boolean" and isinstance(value, bool):
            narrowed["const"] = not value
        elif prop.get("type") == "string" and isinstance(value, str) and not any(
            c in _JSON_SPECIAL or ord(c) < 0x20 for c in value
        ):
            narrowed["pattern"] = excluding_pattern([value])
        else:
            return offer
        variant["required"] = sorted({*variant.get("required", ()), name})
        variants.append(variant)
    if not variants:
        return offer
    arguments = variants[0] if len(variants) == 1 else {"anyOf": variants}
    return offer.model_copy(update={"parameters": arguments})


def _narrowed(offer: ToolOffer, calls: Sequence[Mapping[str, Any]]) -> ToolOffer | None:
    """``offer`` with its main argument kept from the values of ``calls``; None to drop it."""
    main = main_argument(offer.parameters)
    if main is None:
        return None
    prop = offer.parameters["properties"][main]
    used = sorted({str(call.get(main, prop.get("default", ""))) for call in calls})
    parameters = copy.deepcopy(offer.parameters)
    narrowed_prop = parameters["properties"][main]
    narrowed_prop.pop("default", None)
    narrowed_prop["pattern"] = excluding_pattern(used)
    parameters["required"] = sorted({*parameters.get("required", ()), main})
    return offer.model_copy(update={"parameters": parameters})
