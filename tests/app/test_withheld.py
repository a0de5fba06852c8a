"""Offers to move a withheld credential into the vault: names, one offer per value, zeroing."""

from __future__ import annotations

import pytest

from app.withheld import CredentialNotice, CredentialOffer, OfferBook, offer_from_event, vault_name
from vault.secretscan import withhold

TOKEN = "ghp_" + "Zq3Vb8Nm1Lk4Jh7Gf2Ds5Ap9Ow6Ie0Ru3Ty8"


@pytest.mark.parametrize(
    ("name", "kind", "expected"),
    [
        ("SECRET_TOKEN", "GitHub token", "SECRET_TOKEN"),
        ("npm.auth-token", "x", "NPM_AUTH_TOKEN"),
        (None, "GitHub token", "GITHUB_TOKEN"),
        (None, "", "SECRET"),
        ("x" * 80, "", "X" * 64),
    ],
)
def test_vault_name(name: object, kind: str, expected: str) -> None:
    assert vault_name(name, kind) == expected


def offer_for(text: str, source: str = ".env", tool: str = "read_file") -> CredentialOffer:
    _shown, [finding] = withhold(text, source=source)
    offer = offer_from_event(tool, {**finding.describe(), "offer": finding})
    assert offer is not None
    return offer


def test_an_offer_names_the_place_never_the_value() -> None:
    offer = offer_for(f"A=1\nSECRET_TOKEN={TOKEN}\n")
    assert offer.notice.where == ".env:2" and offer.notice.name == "SECRET_TOKEN"
    assert TOKEN not in repr(offer) and TOKEN not in repr(offer.notice)
    shell = offer_for(f"token {TOKEN}\n", source="the command's output", tool="shell")
    assert shell.notice.where == "the command's output (line 1)"
    assert shell.notice.name == "GITHUB_TOKEN"


def test_an_event_without_a_value_offers_nothing() -> None:
    assert offer_from_event("read_file", {"file": ".env", "line": 1, "kind": "x"}) is None


def test_the_book_keeps_one_offer_per_value_and_zeroes_what_it_drops() -> None:
    book = OfferBook()
    first, again = offer_for(f"T={TOKEN}\n"), offer_for(f"OTHER={TOKEN}\n")
    assert book.add(first) and not book.add(again)
    assert not again.holds_value  # the repeat was zeroed at once
    [notice] = book.pending()
    assert isinstance(notice, CredentialNotice)
    book.dismiss(notice.offer_id)
    assert book.pending() == [] and not first.holds_value
    assert not book.add(offer_for(f"T={TOKEN}\n"))  # dismissed: not offered again


def test_a_taken_value_belongs_to_the_taker() -> None:
    book = OfferBook()
    offer = offer_for(f"T={TOKEN}\n")
    book.add(offer)
    taken = book.take(offer.notice.offer_id)
    assert taken is offer and book.pending() == []
    value = taken.take_value()
    assert bytes(value) == TOKEN.encode()
    with pytest.raises(ValueError, match="holds no value"):
        taken.take_value()
