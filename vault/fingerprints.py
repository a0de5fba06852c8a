"""Fingerprints of the vault's secrets, to withhold them while the vault is locked.

While the vault is unlocked the broker redacts every form of every secret
(:mod:`vault.redact`). While it is locked the plaintext is out of reach, yet a
workspace file (a ``.env``) may still hold a secret. So whenever the broker
sees the unlocked vault at a new generation it stores a :class:`SecretFingerprints`
index beside the vault file: a keyed hash (BLAKE2b, 64 bits, with a random
per-install key kept in the same file) of every window of :data:`WINDOW`
characters of every folded form of every secret (:func:`vault.redact.fold`,
:func:`vault.redact.secret_forms`), and of the whole folded form where it is
shorter than a window.

The locked redactor (:class:`WithholdingRedactor`) folds the text the same
way, hashes every window and, where one matches, withholds the region: the
matched windows plus ``WINDOW + STRIDE - 2`` folded characters either side
(the rest of the secret can be at most that long, or another hashed window
would have matched),
replaced by :data:`WITHHELD`. It cannot tell which secret matched, nor how
much of it, so it is stricter than the unlocked rule: any run of
``WINDOW + STRIDE - 1`` consecutive characters of any form is withheld.

The key only keeps plaintext windows out of the file; it is not secret-grade.
Whoever reads the file can test guesses of a window, which matters only for
low-entropy secrets (a dictionary password), never for a random API key (a
12-character base62 window is one of 3e21). The file is written owner-only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets as _random
from collections.abc import Iterable
from pathlib import Path

from vault.errors import RedactionError
from vault.redact import (
    NEAR_COPY_MIN,
    FoldedText,
    Redactor,
    SecretValue,
    StreamRedactor,
    _failure,
    _Interval,
    _merge,
    _redact_whole,
    fold,
    secret_forms,
)

__all__ = [
    "STRIDE",
    "WINDOW",
    "WITHHELD",
    "WITHHELD_NAME",
    "SecretFingerprints",
    "WithholdingRedactor",
    "index_path",
]

WINDOW = NEAR_COPY_MIN
"""Characters per hashed window: the shortest near-copy the unlocked rule redacts."""
STRIDE = 4
"""The locked redactor hashes every STRIDE-th window of the text: a quarter of
the cost, and still every run of ``WINDOW + STRIDE - 1`` characters of a form
contains a window it hashes. Forms shorter than that are matched whole, at
every position."""
_SHORTEST_WINDOWED = WINDOW + STRIDE - 1
WITHHELD = "[WITHHELD: matches a vault secret; unlock to see]"
WITHHELD_NAME = "vault secret (locked)"
"""The name reported for a withheld region (which secret it was is unknown)."""

_DIGEST = 8
_FORMAT = 1


def index_path(vault_path: Path) -> Path:
    """Where the index of the vault file at ``vault_path`` lives: beside it."""
    return vault_path.with_name(vault_path.name + ".fingerprints")


class SecretFingerprints:
    """The keyed-hash index of every secret's folded forms.

    Attributes:
        generation: The vault generation the index was built from, or None.
    """

    def __init__(
        self,
        key: bytes,
        windows: set[bytes],
        short: dict[int, set[bytes]],
        generation: int | None,
    ) -> None:
        """Wrap a loaded or built index (use :meth:`build` or :meth:`load`)."""
        self._key = key
        self._windows = windows
        self._short = short
        self.generation = generation

    def __repr__(self) -> str:
        return f"SecretFingerprints({len(self._windows)} windows, generation={self.generation})"

    @classmethod
    def build(
        cls,
        values: Iterable[SecretValue],
        *,
        generation: int | None,
        key: bytes | None = None,
    ) -> SecretFingerprints:
        """Fingerprint every folded form of ``values``.

        Args:
            values: The secrets' values.
            generation: The vault generation they were read at.
            key: The hashing key (default: a fresh random one).

        Raises:
            RedactionError: The index could not be built.
        """
        index = cls(key or _random.token_bytes(16), set(), {}, generation)
        try:
            for value in values:
                for form in secret_forms(value):
                    folded = fold(form).text
                    if len(folded) < _SHORTEST_WINDOWED:
                        if folded:
                            index._short.setdefault(len(folded), set()).add(index._hash(folded))
                        continue
                    for i in range(len(folded) - WINDOW + 1):
                        index._windows.add(index._hash(folded[i : i + WINDOW]))
        except Exception as e:  # fail closed: re-raised as RedactionError below
            failure = _failure(e)
        else:
            return index
        raise failure

    def _hash(self, window: str) -> bytes:
        return hashlib.blake2b(
            window.encode("utf-8", "surrogatepass"), key=self._key, digest_size=_DIGEST
        ).digest()

    # ------------------------------------------------------------- storage

    def save(self, path: Path) -> None:
        """Write the index to ``path`` atomically, readable by the owner only.

        Raises:
            RedactionError: It could not be written.
        """
        data = {
            "format": _FORMAT,
            "generation": self.generation,
            "window": WINDOW,
            "key": self._key.hex(),
            "windows": base64.b64encode(b"".join(sorted(self._windows))).decode(),
            "short": {
                str(n): base64.b64encode(b"".join(sorted(h))).decode()
                for n, h in self._short.items()
            },
        }
        tmp = path.with_name(f".{path.name}.{_random.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise RedactionError(f"cannot write the secret fingerprints {path}: {e}") from e

    @classmethod
    def load(cls, path: Path) -> SecretFingerprints | None:
        """Read the index at ``path``; None when there is none.

        Raises:
            RedactionError: The file exists but is unreadable or malformed.
        """
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise RedactionError(f"cannot read the secret fingerprints {path}: {e}") from e
        try:
            if data["format"] != _FORMAT or data["window"] != WINDOW:
                raise ValueError("unknown format or window")
            generation = data["generation"]
            if generation is not None and not isinstance(generation, int):
                raise ValueError("generation is not a number")
            return cls(
                bytes.fromhex(data["key"]),
                _split(base64.b64decode(data["windows"])),
                {int(n): _split(base64.b64decode(h)) for n, h in data["short"].items()},
                generation,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise RedactionError(f"the secret fingerprints {path} are malformed: {e}") from e

    # ------------------------------------------------------------ matching

    def matches(self, folded: str, origin: int = 0) -> list[tuple[int, int]]:
        """Folded spans to withhold: matched windows (widened) and short forms.

        Args:
            folded: Folded text.
            origin: Its folded offset in a longer text: windows are hashed
                where ``origin + i`` is a multiple of :data:`STRIDE`, so a
                stream and a whole text give the same spans.
        """
        spans: list[tuple[int, int]] = []
        n = len(folded)
        windows, hash_ = self._windows, self._hash
        widen = WINDOW + STRIDE - 2
        for i in range(-origin % STRIDE, n - WINDOW + 1, STRIDE):
            if hash_(folded[i : i + WINDOW]) in windows:
                spans.append((max(i - widen, 0), min(i + WINDOW + widen, n)))
        for length, hashes in self._short.items():
            for i in range(n - length + 1):
                if hash_(folded[i : i + length]) in hashes:
                    spans.append((i, i + length))
        return spans

    def redactor(self, also: Redactor | None = None) -> WithholdingRedactor:
        """A locked redactor over this index (and ``also``'s plaintext patterns)."""
        return WithholdingRedactor(self, also)


def _split(blob: bytes) -> set[bytes]:
    if len(blob) % _DIGEST:
        raise ValueError("truncated hash list")
    return {blob[i : i + _DIGEST] for i in range(0, len(blob), _DIGEST)}


class WithholdingRedactor:
    """Withholds text that matches the fingerprints, with :class:`Redactor`'s interface.

    Args:
        index: The fingerprints.
        also: Patterns known in plaintext (the canaries), redacted as usual.
    """

    def __init__(self, index: SecretFingerprints, also: Redactor | None = None) -> None:
        self._index = index
        self._also = also
        self.max_pattern_length = also.max_pattern_length if also is not None else 0
        # A withheld region: one window widened on both sides.
        widest = WINDOW + 2 * (WINDOW + STRIDE - 2)
        self.max_folded_length = max(
            widest, also.max_folded_length if also is not None else 0, *index._short, 0
        )

    aligned = True

    def _intervals(
        self, text: str, origin: int = 0, view: FoldedText | None = None
    ) -> list[_Interval]:
        view = view or fold(text)
        found: list[tuple[int, int, str, int]] = []
        if self._also is not None:
            found += [
                (iv.start, iv.start - iv.end, iv.name, iv.end)
                for iv in self._also._intervals(text, view=view)
            ]
        for a, b in self._index.matches(view.text, origin):
            start, end = view.span(a, b)
            found.append((start, start - end, WITHHELD_NAME, end))
        return _merge(found)

    def _marker(self, name: str) -> str:
        if name == WITHHELD_NAME:
            return WITHHELD
        return "" if self._also is None else self._also._marker(name)

    def redact(self, text: str) -> tuple[str, list[str]]:
        """Withhold every region of ``text`` that matches a secret.

        Raises:
            RedactionError: Redaction could not run; nothing is returned.
        """
        return _redact_whole(self, text)

    def scan(self, text: str) -> list[str]:
        """Names found (:data:`WITHHELD_NAME` for a fingerprint match).

        Raises:
            RedactionError: The scan could not run.
        """
        try:
            return sorted({iv.name for iv in self._intervals(text)})
        except Exception as e:  # fail closed: re-raised as RedactionError below
            failure = _failure(e)
        raise failure

    def stream(self) -> StreamRedactor:
        """A fresh streaming redactor over this index."""
        return StreamRedactor(self)
