"""Offers to move a credential withheld from the agent into the vault.

When the host's credential scan (:mod:`vault.secretscan`) withholds a value
from a tool result, it emits a ``secret_found`` event whose ``offer`` holds
the value. The GUI (a banner per finding) and ``keyless run`` (a question
after the errand) both turn that event into a :class:`CredentialOffer` and
keep them in an :class:`OfferBook`, which drops repeats of one value and zeroes
each value as soon as its offer is dismissed or handed on.

No Qt here: the terminal host uses it too.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The vault's own rule (vault.store): 1-64 characters, starting with a letter or digit.
_MAX_NAME = 64


def vault_name(name: object, kind: str) -> str:
    """A vault secret name for a withheld credential: its variable's name, or one from its kind."""
    text = name if isinstance(name, str) and name else kind or "SECRET"
    cleaned = "".join(c if c.isalnum() else "_" for c in text.upper()).strip("_")
    return (cleaned or "SECRET")[:_MAX_NAME].rstrip("_")


@dataclass(frozen=True)
class CredentialNotice:
    """What an offer says about a withheld credential; never its value.

    Attributes:
        offer_id: Names the offer in its :class:`OfferBook`.
        source: Where it was (a workspace path, "the command's output", ...).
        line: Its line there (1-based).
        kind: What it looks like ("GitHub token", ...).
        name: The vault name suggested for it (``SECRET_TOKEN``).
        in_file: Whether ``source`` is a file (then ``file:line`` names it).
    """

    offer_id: str
    source: str
    line: int
    kind: str
    name: str
    in_file: bool = True

    @property
    def where(self) -> str:
        """``.env:3``, or ``the command's output (line 3)``."""
        return f"{self.source}:{self.line}" if self.in_file else f"{self.source} (line {self.line})"

    @property
    def text(self) -> str:
        """The offer as one sentence pair for the user."""
        return (
            f"A credential ({self.kind}) in {self.where} was withheld from the agent. "
            f"Move {self.name} into the vault?"
        )


class CredentialOffer:
    """A notice and the value it offers to store; the value never shows in a repr.

    The value is a ``bytearray`` so it can be zeroed: :meth:`discard` does so,
    :meth:`take_value` hands the buffer (and the duty to zero it) to the caller.
    """

    def __init__(self, notice: CredentialNotice, value: bytearray) -> None:
        self.notice = notice
        self._value: bytearray | None = value

    def __repr__(self) -> str:
        return f"CredentialOffer({self.notice!r}, value=<withheld>)"

    @property
    def holds_value(self) -> bool:
        """Whether the offer still holds a (non-zeroed) value."""
        return self._value is not None and any(self._value)

    def take_value(self) -> bytearray:
        """Hand over the value buffer; the offer holds nothing afterwards.

        Raises:
            ValueError: The value was already taken or discarded.
        """
        value, self._value = self._value, None
        if value is None:
            raise ValueError(f"the offer for {self.notice.name} holds no value any more")
        return value

    def discard(self) -> None:
        """Zero the value and forget it."""
        value, self._value = self._value, None
        if value is not None:
            zero(value)


def zero(buffer: bytearray) -> None:
    """Overwrite a secret buffer in place (as far as Python allows)."""
    buffer[:] = bytes(len(buffer))


_ids = itertools.count(1)


def offer_from_event(tool: str | None, data: Mapping[str, Any]) -> CredentialOffer | None:
    """The offer a ``secret_found`` event's data carries; None when it holds no value."""
    finding = data.get("offer")
    raw = getattr(finding, "value", None)
    if not isinstance(raw, str) or not raw:
        return None
    line = data.get("line")
    notice = CredentialNotice(
        offer_id=f"offer-{next(_ids)}",
        source=str(data.get("file") or "a tool result"),
        line=line if isinstance(line, int) else 1,
        kind=str(data.get("kind") or "credential"),
        name=vault_name(data.get("name"), str(data.get("kind") or "")),
        in_file=tool in ("read_file", None),
    )
    return CredentialOffer(notice, bytearray(raw.encode("utf-8")))


class OfferBook:
    """The pending offers of one host, one per value.

    A value seen before (pending, dismissed or moved) is not offered again;
    the book remembers it only as a keyed digest, under a key that lives in
    this object, never the value itself.
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._seen: set[bytes] = set()
        self._pending: dict[str, CredentialOffer] = {}

    def add(self, offer: CredentialOffer) -> bool:
        """Keep ``offer``; False (and the offer discarded) when its value was offered before."""
        value = offer._value  # the book is the offer's keeper (same module)
        if value is None:
            return False
        digest = hmac.new(self._key, bytes(value), hashlib.sha256).digest()
        if digest in self._seen:
            offer.discard()
            return False
        self._seen.add(digest)
        self._pending[offer.notice.offer_id] = offer
        return True

    def pending(self) -> list[CredentialNotice]:
        """The notices of the offers not yet handled, oldest first."""
        return [o.notice for o in self._pending.values()]

    def take(self, offer_id: str) -> CredentialOffer | None:
        """Remove an offer and hand it (with its value) to the caller, who must discard it."""
        return self._pending.pop(offer_id, None)

    def dismiss(self, offer_id: str) -> None:
        """Drop an offer; its value is zeroed."""
        offer = self._pending.pop(offer_id, None)
        if offer is not None:
            offer.discard()

    def clear(self) -> None:
        """Drop every pending offer (values zeroed)."""
        for offer_id in list(self._pending):
            self.dismiss(offer_id)


__all__ = [
    "CredentialNotice",
    "CredentialOffer",
    "OfferBook",
    "offer_from_event",
    "vault_name",
    "zero",
]
