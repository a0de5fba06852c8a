"""Redaction of secrets from text that flows back to the agent.

A :class:`Redactor` knows, for each secret, every textual form in which it is
likely to come back: raw, standard and URL-safe base64 (with and without
padding, and the part of the encoding that is fixed whatever bytes precede the
secret, at each of the three alignments), URL-encoding, hexadecimal in both
cases, JSON string escaping and HTML character references. Combinations
(base64 then URL-encoded, ...) are not covered. Every character covered by
an occurrence of any form is replaced; a run of overlapping occurrences
becomes one ``[REDACTED:NAME]`` marker.

:class:`StreamRedactor` gives the same output as :meth:`Redactor.redact` on the
concatenated text, however the text is cut into chunks: it holds back the last
``max_pattern_length - 1`` undecided characters until more text or the end
arrives.

Redaction fails closed: any internal failure raises
:class:`vault.errors.RedactionError` and produces no output.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, quote_from_bytes, quote_plus

from vault.errors import RedactionError

__all__ = [
    "MARKER",
    "MIN_DERIVED_LENGTH",
    "Redactor",
    "StreamRedactor",
    "secret_forms",
]

MARKER = "[REDACTED:{name}]"
MIN_DERIVED_LENGTH = 6
"""Encoded forms shorter than this are not redacted: they would match ordinary
text everywhere. The raw form is always redacted, whatever its length."""

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


@dataclass(frozen=True)
class _Interval:
    start: int
    end: int
    name: str


class Redactor:
    """Replaces every form of a set of named secrets.

    The redactor holds the secrets' encoded forms for its lifetime; create one
    per call (or per scan) and drop it, rather than keeping one around.
    """

    def __init__(self, secrets: Mapping[str, SecretValue] | Iterable[tuple[str, SecretValue]]):
        """Build the pattern table.

        Args:
            secrets: ``name -> value`` (or pairs). Names appear in markers, so
                they must not themselves be secret. When two secrets share a
                form, the first one's name is used.

        Raises:
            RedactionError: The table could not be built.
        """
        patterns: dict[str, str] = {}
        failure = None
        try:
            items = secrets.items() if isinstance(secrets, Mapping) else secrets
            for name, value in items:
                if not isinstance(name, str) or not name:
                    raise TypeError("secret names must be non-empty strings")
                for form in secret_forms(value):
                    patterns.setdefault(form, name)
        except Exception as e:  # fail closed: re-raised as RedactionError below
            failure = _failure(e)
        if failure is not None:
            raise failure
        # Longest first: at one start position the longest form names the marker.
        self._patterns = sorted(patterns.items(), key=lambda kv: (-len(kv[0]), kv[0]))
        self.names = sorted(set(patterns.values()))
        self.max_pattern_length = max((len(p) for p in patterns), default=0)

    def _intervals(self, text: str) -> list[_Interval]:
        """Merged runs of characters covered by some occurrence, in order."""
        found: list[tuple[int, int, int]] = []
        for rank, (pattern, _name) in enumerate(self._patterns):
            pos = text.find(pattern)
            while pos >= 0:
                found.append((pos, rank, pos + len(pattern)))
                pos = text.find(pattern, pos + 1)
        if not found:
            return []
        # Earliest start first; at equal start the lowest rank is the longest form.
        found.sort()
        merged: list[_Interval] = []
        start, rank, end = found[0]
        for s, r, e in found[1:]:
            if s < end:
                end = max(end, e)
            else:
                merged.append(_Interval(start, end, self._patterns[rank][1]))
                start, rank, end = s, r, e
        merged.append(_Interval(start, end, self._patterns[rank][1]))
        return merged

    def redact(self, text: str) -> tuple[str, list[str]]:
        """Redact a whole text.

        Returns:
            The redacted text and the sorted names of the secrets found.

        Raises:
            RedactionError: Redaction could not run; nothing is returned.
        """
        try:
            if not isinstance(text, str):
                raise TypeError("redact() takes str")
            out: list[str] = []
            found: set[str] = set()
            pos = 0
            for iv in self._intervals(text):
                out.append(text[pos : iv.start])
                out.append(MARKER.format(name=iv.name))
                found.add(iv.name)
                pos = iv.end
            out.append(text[pos:])
            return "".join(out), sorted(found)
        except Exception as e:  # fail closed: re-raised as RedactionError below
            failure = _failure(e)
        raise failure

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


class StreamRedactor:
    """Redacts text arriving in chunks; output equals one-shot redaction."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._keep = max(redactor.max_pattern_length - 1, 0)
        self._context = ""  # decided text an occurrence may still start in
        self._pending = ""  # undecided text
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

    def _step(self, chunk: str, *, final: bool) -> str:
        base = len(self._context)
        buf = self._context + self._pending + chunk
        decide = len(buf) if final else len(buf) - self._keep
        if decide <= base:
            self._pending = buf[base:]
            return ""
        out: list[str] = []
        pos = base
        for iv in self._redactor._intervals(buf):
            if iv.end <= base:
                continue
            if iv.start >= decide:
                break
            if iv.start >= pos:
                out.append(buf[pos : iv.start])
                out.append(MARKER.format(name=iv.name))
                self._found.add(iv.name)
            # else: the run started in already-decided text and its marker is out.
            pos = max(pos, iv.end)
        if pos < decide:
            out.append(buf[pos:decide])
            pos = decide
        # Text up to `pos` is decided (a run may end past `decide`).
        self._context = buf[max(pos - self._keep, 0) : pos]
        self._pending = buf[pos:]
        return "".join(out)


def _failure(error: BaseException) -> RedactionError:
    # The original exception is dropped: its message could quote a pattern,
    # which is a form of a secret. Callers raise the result *outside* their
    # except block, so it is neither the __cause__ nor the __context__.
    return RedactionError(f"redaction failed ({type(error).__name__}); nothing returned")
