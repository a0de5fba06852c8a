r"""Redaction of secrets from text that flows back to the agent.

A :class:`Redactor` knows, for each secret, every textual form in which it is
likely to come back: raw, standard and URL-safe base64 (with and without
padding, and the part of the encoding that is fixed whatever bytes precede the
secret, at each of the three alignments), URL-encoding, hexadecimal in both
cases, JSON string escaping and HTML character references. Combinations
(base64 then URL-encoded, ...) are not covered. Every character covered by
an occurrence of any form is replaced; a run of overlapping occurrences
becomes one ``[REDACTED:NAME]`` marker.

Beyond these exact forms the redactor matches *variants* over a folded view of
the text (see :func:`fold`): whitespace removed, JSON ``\uXXXX`` escapes
decoded, letters lower-cased. So a secret copied in another case, wrapped over
lines, spaced out or escaped character by character is found, and the span it
occupies in the original text is replaced. It also redacts *near-copies*: any
run of at least ``max(NEAR_COPY_MIN, ceil(NEAR_COPY_FRACTION * n))``
consecutive characters of the folded secret (``n`` characters long), of its hex
or of its base64, so a long prefix or suffix of a secret is itself secret.

:class:`StreamRedactor` gives the same output as :meth:`Redactor.redact` on the
concatenated text, however the text is cut into chunks: it holds back the last
``max_pattern_length - 1`` undecided characters, and as many folded
characters as the longest folded pattern needs, until more text or the end
arrives.

Redaction fails closed: any internal failure raises
:class:`vault.errors.RedactionError` and produces no output.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import html
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol
from urllib.parse import quote, quote_from_bytes, quote_plus

import ahocorasick  # type: ignore[import-not-found]  # pyahocorasick ships no stubs
import ahocorasick_rs

from vault.errors import RedactionError

__all__ = [
    "MARKER",
    "MIN_DERIVED_LENGTH",
    "NEAR_COPY_FRACTION",
    "NEAR_COPY_MIN",
    "FoldedText",
    "Redactor",
    "StreamRedactor",
    "fold",
    "secret_forms",
    "variant_patterns",
]

MARKER = "[REDACTED:{name}]"
MIN_DERIVED_LENGTH = 6
"""Encoded forms shorter than this are not redacted: they would match ordinary
text everywhere. The raw form is always redacted, whatever its length."""

NEAR_COPY_MIN = 10
"""A near-copy is at least this many consecutive characters of a secret's form."""
NEAR_COPY_FRACTION = 0.4
"""... and at least this fraction of the form's (folded) length."""

SecretValue = bytes | bytearray | str


def _b64_cores(value: bytes) -> list[str]:
    """The base64 characters fixed by ``value`` alone, at alignments 0, 1 and 2.

    An encoded character covers 6 bits; it depends only on the secret when all
    6 bits fall inside the secret's bytes, whatever precedes or follows it.
    """
    cores = []
    n = len(value)
    for k in range(3):
        encoded = base64.b64encode(bytes(k) + value).decode("ascii")
        start = (8 * k + 5) // 6
        end = (8 * k + 8 * n) // 6
        cores.append(encoded[start:end])
    return cores


def secret_forms(value: SecretValue) -> set[str]:
    """Every textual form of ``value`` that redaction replaces.

    Args:
        value: The secret, as bytes or text (text is taken as UTF-8).

    Returns:
        The set of non-empty forms; derived forms shorter than
        :data:`MIN_DERIVED_LENGTH` are left out. Percent-escapes are matched
        all upper case or all lower case (what encoders produce), not mixed.

    Raises:
        TypeError: ``value`` is not bytes or text.
    """
    if isinstance(value, str):
        raw_bytes = value.encode("utf-8")
    elif isinstance(value, bytes | bytearray):
        raw_bytes = bytes(value)
    else:
        raise TypeError(f"a secret is bytes, bytearray or str, not {type(value).__name__}")
    if not raw_bytes:
        return set()
    derived: set[str] = set()
    try:
        text: str | None = raw_bytes.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        for safe in ("", "/"):
            encoded = quote(text, safe=safe)
            derived.add(encoded)
            derived.add(_lower_escapes(encoded))
        derived.add(quote_plus(text, safe=""))
        # Inside a JSON string ("/" escaped by some encoders, non-ASCII as \uXXXX).
        for ascii_only in (True, False):
            escaped = json.dumps(text, ensure_ascii=ascii_only)[1:-1]
            derived.update((escaped, escaped.replace("/", "\\/")))
        derived.update(_html_forms(text))
    else:
        derived.add(quote_from_bytes(raw_bytes, safe=""))
        derived.add(_lower_escapes(quote_from_bytes(raw_bytes, safe="")))
    hex_lower = raw_bytes.hex()
    derived.update((hex_lower, hex_lower.upper()))
    std = base64.b64encode(raw_bytes).decode("ascii")
    std_forms = {std, std.rstrip("=")} | set(_b64_cores(raw_bytes))
    for form in std_forms:
        derived.add(form)
        derived.add(form.replace("+", "-").replace("/", "_"))
    forms = {f for f in derived if len(f) >= MIN_DERIVED_LENGTH}
    if text is not None:
        forms.add(text)
    return forms


def _html_forms(text: str) -> set[str]:
    """HTML character-reference forms an error page or attribute may echo."""

    def every(fmt: str) -> str:
        return "".join(ch if ch.isalnum() else fmt.format(ord(ch)) for ch in text)

    return {
        html.escape(text),
        html.escape(text, quote=False),
        every("&#{};"),
        every("&#x{:x};"),
        every("&#x{:X};"),
        # Go's html/template in attribute values: these characters, decimal.
        "".join(f"&#{ord(ch)};" if ch in "\"&'+<=>`" else ch for ch in text),
    }


def _lower_escapes(encoded: str) -> str:
    parts = encoded.split("%")
    return parts[0] + "".join("%" + p[:2].lower() + p[2:] for p in parts[1:])


# ------------------------------------------------------------------ folding

# A folded unit: a run of whitespace (dropped) or a JSON \uXXXX escape (one
# character). Everything else is kept, one character for one.
_UNIT = re.compile(r"\s+|\\u[0-9a-fA-F]{4}")
_ESCAPE_WIDTH = 6
_ESCAPE = re.compile(r"\\u[0-9a-fA-F]{4}")
_ESCAPE_BYTES = re.compile(rb"\\u[0-9a-fA-F]{4}")
_ESCAPE_START = ahocorasick_rs.BytesAhoCorasick([b"\\u"])
# The str.isspace() characters (what \s means), deleted by str.translate. None
# lies above U+3000 (a test checks it against every code point).
_DROP_SPACE: dict[int, None] = {c: None for c in range(0x3001) if chr(c).isspace()}
# The only characters whose str.lower() is not one context-free character:
# U+0130 lowers to two characters (it is kept), U+03A3 by its context (σ always).
_DOTTED_I = "\u0130"
_SIGMA = "\u03a3"
_BLOCK = 2048
"""Original characters per block of the position map (built only where asked)."""


@lru_cache(maxsize=4096)
def _fold_char(ch: str) -> str:
    low = ch.lower()
    return low if len(low) == 1 else ch


def _lower(segment: str) -> str:
    # Per character, as _fold_char, never context-dependent: the result must
    # not depend on where a stream was cut. str.lower() is exactly that but
    # for the two characters handled here.
    if segment.isascii():
        return segment.lower()
    if _SIGMA in segment:
        segment = segment.replace(_SIGMA, "\u03c3")
    if _DOTTED_I in segment:
        return _DOTTED_I.join(part.lower() for part in segment.split(_DOTTED_I))
    return segment.lower()


def _drop_space(text: str) -> str:
    if text.isascii():  # bytes.translate deletes faster than str.translate
        return text.encode("ascii").translate(None, _ASCII_SPACE_BYTES).decode("ascii")
    try:  # latin-1 text (the egress proxy's bytes): bytes.translate too, ~50x faster
        raw = text.encode("latin-1")
    except UnicodeEncodeError:
        return text.translate(_DROP_SPACE)
    return raw.translate(None, _LATIN1_SPACE_BYTES).decode("latin-1")


def _fold_text(text: str) -> str:
    """The folded text alone, with C-speed string operations (no position map)."""
    if "\\u" not in text:
        return _lower(_drop_space(text))
    pieces: list[str] = []
    last = 0
    for m in _ESCAPE.finditer(text):
        s, e = m.span()
        pieces.append(_lower(_drop_space(text[last:s])))
        pieces.append(_fold_char(chr(int(text[s + 2 : e], 16))))
        last = e
    pieces.append(_lower(_drop_space(text[last:])))
    return "".join(pieces)


_ASCII_SPACE = tuple(chr(c) for c in _DROP_SPACE if c < 128)
_ASCII_SPACE_BYTES = "".join(_ASCII_SPACE).encode("ascii")
_LATIN1_SPACE_BYTES = bytes(c for c in _DROP_SPACE if c < 256)


def _folded_length(text: str, spaces: tuple[str, ...] = _ASCII_SPACE) -> int:
    """``len(_fold_text(text))``, without building it.

    ``spaces``: the ASCII whitespace characters that may occur in ``text``.
    """
    if text.isascii():
        n = len(text) - sum([text.count(c) for c in spaces])
    else:
        n = sum(map(len, text.split()))
    if "\\u" in text:
        n -= (_ESCAPE_WIDTH - 1) * len(_ESCAPE.findall(text))
    return n


class _Segments:
    """The position map of one block: kept runs and decoded escapes."""

    def __init__(self, text: str) -> None:
        self.starts: list[int] = []  # first folded index of each segment
        self.origins: list[int] = []  # its first original index
        self.widths: list[int] = []  # 1 (kept, one for one) or 6 (an escape)
        n = last = 0
        for m in _UNIT.finditer(text):
            s, e = m.span()
            if s > last:
                self._add(n, last, 1)
                n += s - last
            if text[s] == "\\":
                self._add(n, s, _ESCAPE_WIDTH)
                n += 1
            last = e
        if last < len(text):
            self._add(n, last, 1)
            n += len(text) - last
        self.length = n

    def _add(self, start: int, origin: int, width: int) -> None:
        self.starts.append(start)
        self.origins.append(origin)
        self.widths.append(width)

    def origin(self, j: int) -> int:
        i = bisect.bisect_right(self.starts, j) - 1
        if self.widths[i] == 1:
            return self.origins[i] + (j - self.starts[i])
        return self.origins[i]

    def end(self, j: int) -> int:
        """Original index just past folded character ``j``."""
        i = bisect.bisect_right(self.starts, j) - 1
        if self.widths[i] == 1:
            return self.origins[i] + (j - self.starts[i]) + 1
        return self.origins[i] + self.widths[i]

    def count_before(self, limit: int) -> int:
        i = bisect.bisect_left(self.origins, limit) - 1
        if i < 0:
            return 0
        if self.widths[i] == 1:
            seg_end = self.starts[i + 1] if i + 1 < len(self.starts) else self.length
            return min(self.starts[i] + (limit - self.origins[i]), seg_end)
        return self.starts[i] + 1


class FoldedText:
    r"""The folded view of a text and the way back to the original's positions.

    The folded text is built at once with string operations; the map back to
    the original is built only when a position is asked for, and then only
    for the blocks of :data:`_BLOCK` original characters that hold it (most
    texts hold no secret and never need it).

    Attributes:
        text: The folded text.
        length: The original text's length.
    """

    def __init__(self, source: str) -> None:
        """Fold ``source`` (see :func:`fold`)."""
        self.text = _fold_text(source)
        self.length = len(source)
        self._source = source
        self._bounds: list[int] = []  # original index where each block starts
        self._firsts: list[int] = []  # folded index where each block starts
        self._blocks: dict[int, _Segments] = {}
        # Nothing dropped or decoded: every position maps to itself.
        self._identity = len(self.text) == self.length

    def _index(self) -> None:
        if self._bounds:
            return
        src, b, f = self._source, 0, 0
        spaces = tuple(c for c in _ASCII_SPACE if c in src)
        while True:
            self._bounds.append(b)
            self._firsts.append(f)
            if b >= self.length:
                break
            # Never cut an escape: its halves would fold differently.
            nxt = self.length if b + _BLOCK >= self.length else _unit_start(src, b + _BLOCK)
            if nxt <= b:  # a block narrower than the escape that starts it
                nxt = b + _ESCAPE_WIDTH
            f += _folded_length(src[b:nxt], spaces)
            b = nxt

    def _block(self, i: int) -> _Segments:
        seg = self._blocks.get(i)
        if seg is None:
            seg = _Segments(self._source[self._bounds[i] : self._bounds[i + 1]])
            self._blocks[i] = seg
        return seg

    def _locate(self, j: int) -> tuple[int, int]:
        """The block holding folded character ``j`` and ``j`` within it."""
        self._index()
        i = bisect.bisect_right(self._firsts, j) - 1
        return i, j - self._firsts[i]

    def origin(self, j: int) -> int:
        """Original index where folded character ``j`` starts (``length`` past the end)."""
        if j >= len(self.text):
            return self.length
        if self._identity:
            return j
        i, k = self._locate(j)
        return self._bounds[i] + self._block(i).origin(k)

    def span(self, a: int, b: int) -> tuple[int, int]:
        """The original span that folded characters ``a`` to ``b`` (exclusive) come from."""
        if self._identity:
            return a, b
        i, k = self._locate(b - 1)
        return self.origin(a), self._bounds[i] + self._block(i).end(k)

    def count_before(self, limit: int) -> int:
        """Number of folded characters whose original start is before ``limit``."""
        if limit <= 0:
            return 0
        if limit >= self.length:
            return len(self.text)
        if self._identity:
            return limit
        self._index()
        i = bisect.bisect_right(self._bounds, limit - 1) - 1
        return self._firsts[i] + self._block(i).count_before(limit - self._bounds[i])


def fold(text: str) -> FoldedText:
    r"""Fold ``text``: whitespace dropped, ``\uXXXX`` decoded, letters lower-cased.

    Lower-casing is per character and only where it keeps one character
    (``str.lower`` of it); the mapping back to the original is exact.
    """
    return FoldedText(text)


def _near_copy_length(n: int) -> int:
    return max(NEAR_COPY_MIN, math.ceil(NEAR_COPY_FRACTION * n))


def variant_patterns(value: SecretValue) -> set[str]:
    """The folded patterns that find variants and near-copies of ``value``.

    Every form of :func:`secret_forms`, folded (those of at least
    :data:`MIN_DERIVED_LENGTH` characters), and every window of
    ``max(NEAR_COPY_MIN, ceil(NEAR_COPY_FRACTION * n))`` characters of the
    folded raw text, hex and base64 cores (``n`` their folded length).

    Raises:
        TypeError: ``value`` is not bytes or text.
    """
    forms, bases = _variants(value, secret_forms(value))
    return forms | {w for base, width in bases for w in _windows(base, width)}


def _windows(base: str, width: int) -> list[str]:
    return [base[i : i + width] for i in range(len(base) - width + 1)]


def _variants(value: SecretValue, forms: set[str]) -> tuple[set[str], list[tuple[str, int]]]:
    """The folded forms of ``value`` and its folded bases whose windows are near-copies.

    Returns:
        The folded forms (:data:`MIN_DERIVED_LENGTH` characters or more) and
        ``(base, width)`` for each base longer than its near-copy width.
    """
    folded = {f for f in (_fold_text(form) for form in forms) if len(f) >= MIN_DERIVED_LENGTH}
    raw_bytes = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    bases = [raw_bytes.hex(), *_b64_cores(raw_bytes)]
    if isinstance(value, str) or _utf8_or_none(raw_bytes) is not None:
        bases.append(raw_bytes.decode("utf-8"))
    windowed: list[tuple[str, int]] = []
    for base in dict.fromkeys(_fold_text(b) for b in bases):
        width = _near_copy_length(len(base))
        if len(base) > width:
            windowed.append((base, width))
    return folded, windowed


_PROBE_MAX = 16
"""The longest probe: longer needles skip no faster and match fewer patterns."""


def _form_probe(form: str) -> str:
    return form[:_PROBE_MAX]


def _base_probes(base: str, width: int) -> list[tuple[str, int]]:
    """Probes ``(text, offset)`` of a base such that every window holds one whole.

    They are ``q = min(_PROBE_MAX, width // 2)`` characters long, every
    ``width - q + 1`` characters: a window starting at ``i`` holds the first
    probe at or after ``i``.
    """
    q = min(_PROBE_MAX, width // 2)
    step = width - q + 1
    last = len(base) - width  # the last window's offset
    return [(base[k : k + q], k) for k in range(0, last + step, step)]


def _variant_table(value: SecretValue) -> tuple[set[str], set[str]]:
    """:func:`variant_patterns` and its *probes*: every pattern holds one of them."""
    forms, bases = _variants(value, secret_forms(value))
    probes = {_form_probe(f) for f in forms}
    probes.update(p for base, width in bases for p, _ in _base_probes(base, width))
    return variant_patterns(value), probes


def _common_prefix(a: str, i: int, b: str, j: int) -> int:
    """Length of the longest common prefix of ``a[i:]`` and ``b[j:]`` (slice compares)."""
    lo, hi = 0, min(len(a) - i, len(b) - j)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[i : i + mid] == b[j : j + mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: str, i: int, b: str, j: int) -> int:
    """Length of the longest common suffix of ``a[:i]`` and ``b[:j]``."""
    lo, hi = 0, min(i, j)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[i - mid : i] == b[j - mid : j]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _utf8_or_none(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


# ----------------------------------------------------------------- matching


@dataclass(frozen=True)
class _Interval:
    start: int
    end: int
    name: str


class _Matcher(Protocol):
    """What a :class:`StreamRedactor` needs of the table it redacts with."""

    max_pattern_length: int
    max_folded_length: int
    aligned: bool
    """Whether matches depend on the folded offset of the text (see ``origin``)."""

    def _intervals(
        self, text: str, origin: int = 0, view: FoldedText | None = None
    ) -> list[_Interval]: ...

    def _marker(self, name: str) -> str: ...


def _merge(found: list[tuple[int, int, str, int]]) -> list[_Interval]:
    """Merge (start, -length, name, end) occurrences into runs; earliest, longest names a run."""
    if not found:
        return []
    found.sort()
    merged: list[_Interval] = []
    start, _, name, end = found[0]
    for s, _, n, e in found[1:]:
        if s < end:
            end = max(end, e)
        else:
            merged.append(_Interval(start, end, name))
            start, name, end = s, n, e
    merged.append(_Interval(start, end, name))
    return merged


_MAX_PROBES = 256
"""Past this many probes one automaton pass over the text costs less than the
probes' ``str.find`` passes: the table is then an Aho-Corasick automaton of
every pattern instead."""


_LATIN_MIN = 4096
"""Once a redactor has searched this many characters, each latin-1 text it
searches (the egress proxy's bytes) is first checked by a
:class:`_LatinPrefilter`: building one (~0.1 ms) costs more than the probes'
``str.find`` passes over a few short texts, and less than over a few KiB."""

_TEDDY_MAX = 64
"""The most needles one prefilter automaton holds (see :class:`_LatinPrefilter`)."""

# Folding of latin-1 text as bytes: each character lowers to one latin-1
# character (a test checks it), whitespace is deleted.
_LATIN1_LOWER = bytes(ord(_fold_char(chr(c))) for c in range(256))


class _LatinPrefilter:
    """Proves, in one C pass over the fold of a latin-1 text, that nothing occurs in it.

    It searches the folded text (as bytes) for every variant probe (each
    variant pattern holds one) and for the fold of the first characters of
    every exact form (what ``str.find`` probes in :meth:`Redactor._intervals`):
    in a text without JSON escapes folding is per character, so an exact
    form's occurrence leaves its fold in the folded text. A text where no
    needle occurs holds no occurrence at all. Any hit, or an escape, answers
    "maybe", and the caller runs the full search.
    """

    def __init__(self, exact: Iterable[str], folded: Iterable[str]) -> None:
        needles = {_fold_text(probe) for probe in exact} | set(folded)
        # An empty needle occurs everywhere: then nothing is ever cleared.
        self._never = "" in needles
        # A needle that is not latin-1 never occurs in the fold of latin-1 text.
        encoded = set()
        for needle in needles - {""}:
            with contextlib.suppress(UnicodeEncodeError):
                encoded.add(needle.encode("latin-1"))
        # Leftmost-first (any match answers "maybe") lets the library use its
        # SIMD searcher (Teddy, ~10 GB/s), which takes at most 64 needles: so
        # one automaton per 64 (a DFA, ~0.5 GB/s, would take them all at once).
        ordered = sorted(encoded)
        self._automata = [
            ahocorasick_rs.BytesAhoCorasick(
                ordered[i : i + _TEDDY_MAX],
                matchkind=ahocorasick_rs.MatchKind.LeftmostFirst,
                implementation=ahocorasick_rs.Implementation.DFA,
            )
            for i in range(0, len(ordered), _TEDDY_MAX)
        ]

    def clear(self, text: str) -> bool:
        """True when ``text`` is latin-1 and holds no occurrence; False: maybe (search it)."""
        if self._never:
            return False
        try:
            raw = text.encode("latin-1")
        except UnicodeEncodeError:
            return False
        # Rare in most bodies, so each is checked alone (this search is SIMD).
        for _, at, _ in _ESCAPE_START.find_matches_as_indexes(raw):
            if _ESCAPE_BYTES.match(raw, at):
                return False
        folded = raw.translate(_LATIN1_LOWER, _LATIN1_SPACE_BYTES)
        return not any(a.find_matches_as_indexes(folded) for a in self._automata)


class Redactor:
    """Replaces every form, variant and near-copy of a set of named secrets.

    The redactor holds the secrets' encoded forms for its lifetime; create one
    per call (or per scan) and drop it, rather than keeping one around.
    """

    def __init__(
        self,
        secrets: Mapping[str, SecretValue] | Iterable[tuple[str, SecretValue]],
        *,
        variants: bool = True,
    ):
        """Build the pattern table.

        Args:
            secrets: ``name -> value`` (or pairs). Names appear in markers, so
                they must not themselves be secret. When two secrets share a
                form, the first one's name is used.
            variants: Also match folded variants and near-copies (the
                default); False matches the exact forms only.

        Raises:
            RedactionError: The table could not be built.
        """
        patterns: dict[str, str] = {}
        folded: dict[str, str] = {}
        bases: list[tuple[str, int, str]] = []
        failure = None
        try:
            items = secrets.items() if isinstance(secrets, Mapping) else secrets
            for name, value in items:
                if not isinstance(name, str) or not name:
                    raise TypeError("secret names must be non-empty strings")
                forms = secret_forms(value)
                for form in forms:
                    patterns.setdefault(form, name)
                if variants:
                    found, windowed = _variants(value, forms)
                    for form in found:
                        folded.setdefault(form, name)
                    bases += [(base, width, name) for base, width in windowed]
            form_probes: dict[str, list[tuple[str, str]]] = {}
            for form, name in folded.items():
                form_probes.setdefault(_form_probe(form), []).append((form, name))
            base_probes: dict[str, list[tuple[int, int]]] = {}
            for n, (base, width, _) in enumerate(bases):
                for probe, k in _base_probes(base, width):
                    base_probes.setdefault(probe, []).append((n, k))
            automaton = None
            # Every variant pattern holds one of these (the automaton's too).
            needles = form_probes.keys() | base_probes.keys()
            if len(needles) > _MAX_PROBES:
                every = dict(folded)
                for base, width, name in bases:
                    for window in _windows(base, width):
                        every.setdefault(window, name)
                automaton = ahocorasick.Automaton()
                for pattern, name in every.items():
                    automaton.add_word(pattern, (len(pattern), name))
                automaton.make_automaton()
                form_probes, base_probes = {}, {}
        except Exception as e:  # fail closed: re-raised as RedactionError below
            failure = _failure(e)
        if failure is not None:
            raise failure
        # Forms that share their first _PROBE_MAX characters share one find.
        exact: dict[str, list[tuple[str, str]]] = {}
        for form, name in patterns.items():
            exact.setdefault(form[:_PROBE_MAX], []).append((form, name))
        self._exact = sorted(exact.items())
        self._automaton = automaton
        self._needles = sorted(needles)
        self._latin: _LatinPrefilter | None = None
        self._latin_min = _LATIN_MIN
        self._searched = 0  # characters searched so far (a stream's held-back ones again)
        self._bases = bases
        self._form_probes = form_probes
        self._base_probes = base_probes
        self._probes = sorted(form_probes.keys() | base_probes.keys())
        self.names = sorted(
            set(patterns.values()) | set(folded.values()) | {name for *_, name in bases}
        )
        self.max_pattern_length = max((len(p) for p in patterns), default=0)
        self.max_folded_length = max(
            [len(p) for p in folded] + [width for _, width, _ in bases], default=0
        )

    aligned = False

    def _intervals(
        self, text: str, origin: int = 0, view: FoldedText | None = None
    ) -> list[_Interval]:
        """Merged runs of characters covered by some occurrence, in order.

        ``origin`` (the folded length of the text before ``text``) is unused:
        every position is searched. ``view``: ``fold(text)``, where the caller
        has it already.
        """
        self._searched += len(text)
        if (self._latin is not None or self._searched >= self._latin_min) and (
            self._latin_prefilter().clear(text)
        ):
            return []
        found: list[tuple[int, int, str, int]] = []
        for probe, forms in self._exact:
            pos = text.find(probe)
            while pos >= 0:
                for pattern, name in forms:
                    if text.startswith(pattern, pos):
                        found.append((pos, -len(pattern), name, pos + len(pattern)))
                pos = text.find(probe, pos + 1)
        if self._automaton is not None:
            view = view or fold(text)
            for last, (length, name) in self._automaton.iter(view.text):
                start, end = view.span(last - length + 1, last + 1)
                found.append((start, start - end, name, end))
        elif self._probes:
            view = view or fold(text)
            for a, b, name in self._variant_spans(view.text):
                start, end = view.span(a, b)
                found.append((start, start - end, name, end))
        return _merge(found)

    def _latin_prefilter(self) -> _LatinPrefilter:
        if self._latin is None:
            self._latin = _LatinPrefilter((probe for probe, _ in self._exact), self._needles)
        return self._latin

    def _variant_spans(self, folded: str) -> list[tuple[int, int, str]]:
        """Folded spans of the folded forms and near-copies in ``folded``.

        Each occurrence holds a probe (:func:`_base_probes`): where one occurs,
        a folded form is checked in place, and a base is compared on both
        sides as far as it agrees. A run of ``width`` characters or more is the
        union of the windows that occur there, what the automaton would find.
        """
        spans: list[tuple[int, int, str]] = []
        for probe in self._probes:
            forms = self._form_probes.get(probe, ())
            bases = self._base_probes.get(probe, ())
            q = len(probe)
            pos = folded.find(probe)
            while pos >= 0:
                for form, name in forms:
                    if folded.startswith(form, pos):
                        spans.append((pos, pos + len(form), name))
                for n, k in bases:
                    base, width, name = self._bases[n]
                    left = _common_suffix(folded, pos, base, k)
                    right = _common_prefix(folded, pos + q, base, k + q)
                    if left + q + right >= width:
                        spans.append((pos - left, pos + q + right, name))
                pos = folded.find(probe, pos + 1)
        return spans

    def _marker(self, name: str) -> str:
        return MARKER.format(name=name)

    def redact(self, text: str) -> tuple[str, list[str]]:
        """Redact a whole text.

        Returns:
            The redacted text and the sorted names of the secrets found.

        Raises:
            RedactionError: Redaction could not run; nothing is returned.
        """
        return _redact_whole(self, text)

    def scan(self, text: str) -> list[str]:
        """Sorted names of the secrets that occur in ``text`` in any form.

        Raises:
            RedactionError: The scan could not run.
        """
        try:
            return sorted({iv.name for iv in self._intervals(text)})
        except Exception as e:  # fail closed: re-raised as RedactionError below
            failure = _failure(e)
        raise failure

    def stream(self) -> StreamRedactor:
        """A fresh streaming redactor sharing this pattern table."""
        return StreamRedactor(self)


def _redact_whole(matcher: _Matcher, text: str) -> tuple[str, list[str]]:
    try:
        if not isinstance(text, str):
            raise TypeError("redact() takes str")
        out: list[str] = []
        found: set[str] = set()
        pos = 0
        for iv in matcher._intervals(text):
            out.append(text[pos : iv.start])
            out.append(matcher._marker(iv.name))
            found.add(iv.name)
            pos = iv.end
        out.append(text[pos:])
        return "".join(out), sorted(found)
    except Exception as e:  # fail closed: re-raised as RedactionError below
        failure = _failure(e)
    raise failure


def _unit_start(buf: str, pos: int) -> int:
    r"""``pos``, moved back to the start of a ``\uXXXX`` escape it would cut."""
    for m in _ESCAPE.finditer(buf, max(pos - _ESCAPE_WIDTH + 1, 0), pos + _ESCAPE_WIDTH - 1):
        if m.start() < pos < m.end():
            return m.start()
    return pos


class StreamRedactor:
    """Redacts text arriving in chunks; output equals one-shot redaction."""

    def __init__(self, redactor: _Matcher) -> None:
        self._redactor = redactor
        self._keep = max(redactor.max_pattern_length - 1, 0)
        self._folded_keep = redactor.max_folded_length - 1
        self._context = ""  # decided text an occurrence may still start in
        self._pending = ""  # undecided text
        self._origin = 0  # folded characters before the context
        self._found: set[str] = set()
        self._broken = False
        self._finished = False

    @property
    def found(self) -> list[str]:
        """Sorted names of the secrets redacted so far."""
        return sorted(self._found)

    @property
    def held_back(self) -> int:
        """Number of characters received but not yet released."""
        return len(self._pending)

    def feed(self, chunk: str) -> str:
        """Add a chunk; return the text that is now safe to release.

        Raises:
            RedactionError: Redaction failed; this stream is unusable afterwards.
        """
        return self._run(chunk, final=False)

    def finish(self) -> str:
        """Release everything still held back, redacted.

        Raises:
            RedactionError: Redaction failed.
        """
        return self._run("", final=True)

    def _run(self, chunk: str, *, final: bool) -> str:
        if self._broken:
            raise RedactionError("redaction stream already failed; no output")
        try:
            if self._finished:
                raise ValueError("stream already finished")
            if not isinstance(chunk, str):
                raise TypeError("chunks must be str")
            out = self._step(chunk, final=final)
            self._finished = final
            return out
        except Exception as e:  # fail closed: re-raised as RedactionError below
            self._broken = True
            self._context = self._pending = ""
            failure = _failure(e)
        raise failure

    def _decidable(self, buf: str) -> int:
        """How far into ``buf`` every occurrence that starts there is known.

        Folded positions are counted on a fold of the buffer's tail only
        (long enough to hold ``max_folded_length`` folded characters): the
        fold of a text cut where no escape is cut is the tail of its fold.
        """
        decide = len(buf) - self._keep
        if self._folded_keep < 0:
            return decide
        width = _ESCAPE_WIDTH * (self._folded_keep + 2)
        while True:
            start = _unit_start(buf, max(len(buf) - width, 0))
            tail = fold(buf[start:])
            # A folded character is settled once a \uXXXX escape starting at
            # it would be complete; one cut at the end may still change.
            open_at = tail.count_before(len(buf) - start - _ESCAPE_WIDTH + 1) - self._folded_keep
            if open_at > 0:
                return min(decide, start + tail.origin(open_at))
            if start == 0:
                return 0
            width *= 2

    def _step(self, chunk: str, *, final: bool) -> str:
        base = len(self._context)
        buf = self._context + self._pending + chunk
        decide = len(buf) if final else self._decidable(buf)
        if decide <= base:
            self._pending = buf[base:]
            return ""
        out: list[str] = []
        pos = base
        for iv in self._redactor._intervals(buf, self._origin):
            if iv.end <= base:
                continue
            if iv.start >= decide:
                break
            if iv.start >= pos:
                out.append(buf[pos : iv.start])
                out.append(self._redactor._marker(iv.name))
                self._found.add(iv.name)
            # else: the run started in already-decided text and its marker is out.
            pos = max(pos, iv.end)
        if pos < decide:
            out.append(buf[pos:decide])
            pos = decide
        # Text up to `pos` is decided (a run may end past `decide`). The context
        # reaches back over every start that was not yet decided, and never
        # cuts an escape (its tail would fold differently).
        keep_from = _unit_start(buf, max(min(pos - self._keep, decide), 0))
        if self._redactor.aligned:
            self._origin += len(fold(buf[:keep_from]).text)
        self._context = buf[keep_from:pos]
        self._pending = buf[pos:]
        return "".join(out)


def _failure(error: BaseException) -> RedactionError:
    # The original exception is dropped: its message could quote a pattern,
    # which is a form of a secret. Callers raise the result *outside* their
    # except block, so it is neither the __cause__ nor the __context__.
    return RedactionError(f"redaction failed ({type(error).__name__}); nothing returned")
