"""Redaction: every encoding, every alignment, every chunking; fails closed."""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vault.errors import RedactionError
from vault.redact import (
    MIN_DERIVED_LENGTH,
    Redactor,
    _Segments,
    _variant_table,
    fold,
    secret_forms,
)

KEY = b"sk-proj-Tm9+bGVh/a2VyX2tleV9mb3JfdGVzdHM="


def encodings(value: bytes, prefix: bytes = b"", suffix: bytes = b"") -> list[str]:
    """The forms a server might echo: raw, base64 (std/url-safe, +/- padding), %-enc, hex."""
    whole = prefix + value + suffix
    out = [
        base64.b64encode(whole).decode(),
        base64.b64encode(whole).decode().rstrip("="),
        base64.urlsafe_b64encode(whole).decode(),
        base64.urlsafe_b64encode(whole).decode().rstrip("="),
        value.hex(),
        value.hex().upper(),
    ]
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return out
    return out + [text, quote(text, safe=""), quote(text), quote_plus(text)]


def chunks(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(text[last:p])
        last = p
    pieces.append(text[last:])
    return pieces


def stream_redact(redactor: Redactor, pieces: list[str]) -> str:
    stream = redactor.stream()
    return "".join(stream.feed(p) for p in pieces) + stream.finish()


def test_raw_form_is_replaced_with_the_name() -> None:
    r = Redactor({"OPENAI": KEY})
    text, names = r.redact(f"token={KEY.decode()}; again {KEY.decode()}")
    assert text == "token=[REDACTED:OPENAI]; again [REDACTED:OPENAI]"
    assert names == ["OPENAI"]


@pytest.mark.parametrize("prefix", [b"", b"u", b"us", b"user:", b"Basic xx:"])
def test_every_encoding_at_every_alignment(prefix: bytes) -> None:
    r = Redactor({"K": KEY})
    for form in encodings(KEY, prefix=prefix, suffix=b"!"):
        out, names = r.redact(f"<{form}>")
        assert names == ["K"], form
        for piece in secret_forms(KEY):
            assert piece not in out


def test_lowercase_percent_escapes_and_padding_variants() -> None:
    r = Redactor({"K": KEY})
    encoded = quote(KEY.decode(), safe="")
    lowered = encoded.replace("%2B", "%2b").replace("%2F", "%2f").replace("%3D", "%3d")
    assert lowered != encoded
    assert r.redact(lowered)[0] == "[REDACTED:K]"
    assert r.redact(base64.b64encode(KEY).decode())[0] == "[REDACTED:K]"


def test_json_escaped_forms() -> None:
    value = 'ab/cd"ef\\gh-é-0123'
    r = Redactor({"J": value})
    for form in (json.dumps(value)[1:-1], json.dumps(value)[1:-1].replace("/", "\\/"),
                 json.dumps(value, ensure_ascii=False)[1:-1]):
        assert form != value
        assert r.redact(f'{{"k": "{form}"}}')[0] == '{"k": "[REDACTED:J]"}', form


def test_overlapping_occurrences_leave_no_fragment() -> None:
    # "abcab" overlaps itself in "abcabcab": both occurrences go, as one run.
    r = Redactor({"S": "abcab"})
    assert r.redact("xabcabcaby") == ("x[REDACTED:S]y", ["S"])


def test_longest_form_names_the_marker_and_several_secrets() -> None:
    r = Redactor({"A": "secretvalue-1", "B": "secretvalue-1-longer"})
    out, names = r.redact("1 secretvalue-1-longer 2 secretvalue-1 3")
    assert out == "1 [REDACTED:B] 2 [REDACTED:A] 3"
    assert names == ["A", "B"]


def test_short_derived_forms_are_skipped_but_raw_is_kept() -> None:
    forms = secret_forms(b"ab")
    assert "ab" in forms
    assert all(len(f) >= MIN_DERIVED_LENGTH for f in forms - {"ab"})
    assert secret_forms(b"") == set()


def test_binary_secret_has_encoded_forms_only() -> None:
    value = bytes(range(250, 256)) + b"\x00\x01\x02\x03"
    r = Redactor({"BIN": value})
    for form in encodings(value):
        assert r.redact(form)[0] == "[REDACTED:BIN]", form


def test_scan_reports_names_without_changing_text() -> None:
    r = Redactor([("A", KEY), ("canary", "CANARY-91b2")])
    assert r.scan(f"x {KEY.hex()} CANARY-91b2") == ["A", "canary"]
    assert r.scan("clean") == []


def test_stream_holds_back_less_than_the_longest_pattern() -> None:
    r = Redactor({"K": KEY}, variants=False)
    stream = r.stream()
    released = stream.feed("x" * 1000)
    assert stream.held_back == r.max_pattern_length - 1
    assert released == "x" * (1000 - stream.held_back)
    assert stream.finish() == "x" * (r.max_pattern_length - 1)


def test_stream_with_variants_holds_back_the_longest_folded_pattern_and_an_escape() -> None:
    r = Redactor({"K": KEY})
    stream = r.stream()
    released = stream.feed("x" * 1000)
    # The longest folded pattern less one, and five characters an escape may still claim.
    expected = max(r.max_pattern_length - 1, r.max_folded_length - 1 + 5)
    assert stream.held_back == expected
    assert released == "x" * (1000 - expected)
    assert stream.finish() == "x" * expected


def test_empty_table_passes_text_through() -> None:
    r = Redactor({})
    assert r.redact("anything") == ("anything", [])
    s = r.stream()
    assert s.feed("ab") == "ab" and s.finish() == ""


def test_internal_failure_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    r = Redactor({"K": KEY})
    stream = r.stream()
    stream.feed("before " + KEY.decode()[:10])

    def boom(self: Redactor, text: str) -> list[object]:
        raise ValueError(f"pattern {KEY.decode()} broke")

    monkeypatch.setattr(Redactor, "_intervals", boom)
    with pytest.raises(RedactionError) as info:
        stream.feed(KEY.decode()[10:] + "x" * 200)
    assert KEY.decode() not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None
    monkeypatch.undo()
    with pytest.raises(RedactionError):
        stream.finish()  # a broken stream stays broken
    with pytest.raises(RedactionError):
        r.stream().feed(b"bytes")  # type: ignore[arg-type]


def test_bad_table_fails_closed() -> None:
    with pytest.raises(RedactionError):
        Redactor({"": KEY})
    with pytest.raises(RedactionError):
        Redactor({"K": 12345})  # type: ignore[dict-item]


def test_finished_stream_refuses_more() -> None:
    s = Redactor({"K": KEY}).stream()
    s.finish()
    with pytest.raises(RedactionError):
        s.feed("more")


secrets_st = st.binary(min_size=8, max_size=48)
text_secrets_st = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=8, max_size=40
)
filler_st = st.text(alphabet="abc xyz=+/-_%0123456789ABCDEF\n", max_size=60)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    value=secrets_st,
    prefix=st.binary(max_size=5),
    parts=st.lists(filler_st, min_size=1, max_size=4),
    pick=st.integers(min_value=0, max_value=9),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_property_no_form_survives_any_chunking(
    value: bytes, prefix: bytes, parts: list[str], pick: int, cuts: list[int]
) -> None:
    forms = encodings(value, prefix=prefix)
    form = forms[pick % len(forms)]
    text = form.join(parts) if len(parts) > 1 else parts[0] + form
    r = Redactor({"S": value})
    whole, names = r.redact(text)
    assert names == ["S"]
    # The part of the form that depends on the secret alone must be gone.
    for piece in secret_forms(value):
        assert piece not in whole
    assert stream_redact(r, chunks(text, cuts)) == whole


@settings(max_examples=150, deadline=None)
@given(
    value=text_secrets_st,
    filler=st.lists(filler_st, min_size=2, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_property_stream_equals_one_shot(value: str, filler: list[str], cuts: list[int]) -> None:
    text = value.join(filler)
    r = Redactor({"T": value, "U": value[::-1] + "tail"})
    assert stream_redact(r, chunks(text, cuts)) == r.redact(text)[0]
    assert value not in r.redact(text)[0]


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=300), value=secrets_st)
def test_property_text_without_secret_is_unchanged(text: str, value: bytes) -> None:
    r = Redactor({"S": value})
    assume(not r.scan(text))
    assert r.redact(text) == (text, [])
    assert stream_redact(r, list(text)) == text


def test_hex_helper_matches_binascii() -> None:
    # Guard the test oracle itself: our hex forms are what servers produce.
    assert KEY.hex() == binascii.hexlify(KEY).decode()


def _html_styles(text: str) -> list[str]:
    def every(fmt: str) -> str:
        return "".join(ch if ch.isalnum() else fmt.format(ord(ch)) for ch in text)

    go_attr = "".join(f"&#{ord(ch)};" if ch in "\"&'+<=>`" else ch for ch in text)
    return [every("&#{};"), every("&#x{:x};"), every("&#x{:X};"), go_attr]


def test_html_entity_forms_are_replaced() -> None:
    # An HTML error page or attribute value reflects the key with its '+', '/'
    # and '=' as character references (Go's html/template, OWASP encoders).
    r = Redactor({"K": KEY})
    for form in _html_styles(KEY.decode()):
        assert form != KEY.decode()
        out, names = r.redact(f"<input value=\"{form}\">")
        assert names == ["K"] and out == '<input value="[REDACTED:K]">', form


# ------------------------------------------------------- variants and near-copies

TEXT_KEY = KEY.decode()


def _json_escape_all(text: str) -> str:
    return "".join(f"\\u{ord(ch):04x}" for ch in text)


def _variants(secret: str) -> dict[str, str]:
    """The simple variants the exact forms miss."""
    return {
        "lower": secret.lower(),
        "upper": secret.upper(),
        "newline": secret[:10] + "\n" + secret[10:],
        "spaced": " ".join(secret),
        "wrapped": "\n  ".join(secret[i : i + 8] for i in range(0, len(secret), 8)),
        "json_dash": secret.replace("-", "\\u002d"),
        "json_all": _json_escape_all(secret),
        "json_upper_hex": _json_escape_all(secret).upper().replace("\\U", "\\u"),
        "minus_last": secret[:-1],
        "minus_first": secret[1:],
        "b64_wrapped": "\n".join(
            base64.b64encode(secret.encode()).decode()[i : i + 16] for i in range(0, 56, 16)
        ),
        "hex_spaced": " ".join(secret.encode().hex()[i : i + 2] for i in range(0, 80, 2)),
    }


@pytest.mark.parametrize("kind", sorted(_variants(TEXT_KEY)))
def test_simple_variants_are_redacted(kind: str) -> None:
    variant = _variants(TEXT_KEY)[kind]
    r = Redactor({"K": TEXT_KEY})
    text, names = r.redact(f"before <{variant}> after")
    assert text == "before <[REDACTED:K]> after"
    assert names == ["K"]
    # The exact forms alone miss it: this is what the variants add.
    assert Redactor({"K": TEXT_KEY}, variants=False).scan(f"<{variant}>") == []


def test_near_copy_rule_is_max_of_ten_and_two_fifths() -> None:
    secret = "abcdefghijklmnopqrstuvwxyz0123456789ABCD"  # 40 characters: 16 needed
    r = Redactor({"K": secret})
    assert r.scan("x" + secret[5:21] + "x") == ["K"]
    assert r.scan("x" + secret[5:20] + "x") == []
    short = "Zq8-w3Lp-9"  # 10 characters: only the whole secret
    assert Redactor({"K": short}).scan(short[:9]) == []
    twelve = "Zq8-w3Lp-9Xv"  # 12 characters: any 10 of them in a row
    assert Redactor({"K": twelve}).scan("a " + twelve[2:] + " b") == ["K"]
    assert Redactor({"K": twelve}).scan("a " + twelve[3:] + " b") == []


def test_either_half_of_a_secret_is_redacted() -> None:
    secret = "ghp_Zq8w3Lp9XvR2mT6yB1nK4c"  # 26 characters, returned in two fields
    r = Redactor({"K": secret})
    body = json.dumps({"key_start": secret[:13], "key_end": secret[13:]})
    text, found = r.redact(body)
    assert set(found) == {"K"}
    assert secret[:13] not in text and secret[13:] not in text


def test_near_copy_keeps_the_surrounding_text() -> None:
    r = Redactor({"K": TEXT_KEY})
    assert r.redact(f"key={TEXT_KEY[:-1]};") == ("key=[REDACTED:K];", ["K"])


def test_ordinary_prose_is_not_redacted_by_variants() -> None:
    r = Redactor({"K": TEXT_KEY, "P": "correct horse battery staple"})
    prose = "The key is stored in the vault; the agent sees only a handle. Proj notes."
    assert r.redact(prose) == (prose, [])


def test_fold_maps_escapes_and_whitespace_back_to_the_original() -> None:
    from vault.redact import fold

    view = fold("A b\\u002DC\n d")
    assert view.text == "ab-cd"
    assert view.span(2, 3) == (3, 9)  # the escape, all six characters
    assert view.span(0, 5) == (0, 13)


variant_st = st.sampled_from(sorted(_variants(TEXT_KEY)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(variant_st, min_size=1, max_size=3),
    filler=st.lists(filler_st, min_size=2, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_property_variants_stream_equals_one_shot(
    kinds: list[str], filler: list[str], cuts: list[int]
) -> None:
    variants = _variants(TEXT_KEY)
    text = filler[0] + "".join(variants[k] + f for k, f in zip(kinds, filler[1:], strict=False))
    r = Redactor({"K": TEXT_KEY})
    whole, names = r.redact(text)
    assert "K" in names
    for k in kinds:
        assert variants[k] not in whole
    assert stream_redact(r, chunks(text, cuts)) == whole


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from("ab \n\\u0061Ab-"), max_size=120),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_property_escapes_cut_anywhere_stream_equals_one_shot(text: str, cuts: list[int]) -> None:
    # Secrets made of the same few characters, so escapes, whitespace and case
    # changes fall across chunk boundaries in every way.
    r = Redactor({"A": "abab-abab", "B": "Ab\\u0061b aaaa"})
    assert stream_redact(r, chunks(text, cuts)) == r.redact(text)[0]


# ------------------------------------------------------------ folding, fast


def _reference_fold(text: str) -> tuple[str, list[int], list[int]]:
    r"""Fold one character at a time: the folded text and each character's original span."""
    escape = re.compile(r"\\u[0-9a-fA-F]{4}")
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    i = 0
    while i < len(text):
        if escape.match(text, i):
            ch, width = chr(int(text[i + 2 : i + 6], 16)), 6
        elif text[i].isspace():
            i += 1
            continue
        else:
            ch, width = text[i], 1
        low = ch.lower()
        out.append(low if len(low) == 1 else ch)
        starts.append(i)
        ends.append(i + width)
        i += width
    return "".join(out), starts, ends


fold_alphabet = st.sampled_from(
    ["a", "B", " ", "\n", "\t", "\u3000", "\u03a3", "\u0130", "\u00c9", "-", "\\", "u", "0", "F",
     "\\u0041", "\\u03A3", "\\u0130", "\\u0020", "\\u00"]
)  # fmt: skip


@pytest.mark.parametrize("block", [5, 64, 2048])
@settings(max_examples=200, deadline=None)
@given(parts=st.lists(fold_alphabet, max_size=80))
def test_property_fold_equals_folding_one_character_at_a_time(block: int, parts: list[str]) -> None:
    # Small blocks put block edges everywhere (never inside an escape).
    text = "".join(parts)
    folded, starts, ends = _reference_fold(text)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("vault.redact._BLOCK", block)
        view = fold(text)
        assert view.text == folded
        for j in range(len(folded)):
            assert view.origin(j) == starts[j]
            assert view.span(j, len(folded)) == (starts[j], ends[-1])
            assert view.span(0, j + 1) == (starts[0], ends[j])
        assert view.origin(len(folded)) == len(text)
        for limit in range(len(text) + 1):
            assert view.count_before(limit) == sum(1 for s in starts if s < limit)


def test_whitespace_above_u3000_does_not_exist() -> None:
    # fold deletes the str.isspace() characters up to U+3000 only.
    assert not [c for c in range(0x3001, sys.maxunicode + 1) if chr(c).isspace()]


@settings(max_examples=100, deadline=None)
@given(value=st.one_of(secrets_st, text_secrets_st))
def test_property_every_variant_pattern_holds_a_probe(value: bytes | str) -> None:
    # A text where no probe occurs skips the automaton: sound only if so.
    patterns, probes = _variant_table(value)
    assert patterns
    assert all(any(p in pattern for p in probes) for pattern in patterns)


class _CountingSegments(_Segments):
    built = 0

    def __init__(self, text: str) -> None:
        type(self).built += 1
        super().__init__(text)


def test_text_without_a_secret_never_builds_the_position_map(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("vault.redact._Segments", _CountingSegments)
    r = Redactor({"K": TEXT_KEY, "P": "correct horse battery staple"})
    prose = "The key is stored in the vault;\n the agent sees only a handle. \\u0041 " * 2000
    # No probe occurs in it: nothing to check.
    assert r._automaton is None and r._variant_spans(fold(prose).text) == []
    assert r.redact(prose) == (prose, [])
    assert r.scan(prose) == []
    stream = r.stream()
    for i in range(0, len(prose), 4096):
        stream.feed(prose[i : i + 4096])
    stream.finish()
    # The stream maps only the tail it holds back, never what it scanned.
    streamed = _CountingSegments.built
    assert streamed <= len(prose) // 4096 + 2
    _CountingSegments.built = 0
    r.redact(prose)
    assert _CountingSegments.built == 0
    # A secret in it does build the map, where the secret is.
    assert r.redact(prose + TEXT_KEY.upper())[0].endswith("[REDACTED:K]")
    assert 1 <= _CountingSegments.built <= 2


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=text_secrets_st,
    kinds=st.lists(variant_st, min_size=0, max_size=3),
    filler=st.lists(filler_st, min_size=4, max_size=4),
    cut=st.integers(min_value=0, max_value=40),
)
def test_property_probes_find_what_the_automaton_finds(
    value: str, kinds: list[str], filler: list[str], cut: int
) -> None:
    # Few secrets are matched through probes, many through one automaton of
    # every pattern: the same spans either way.
    variants = _variants(TEXT_KEY)
    text = (
        filler[0]
        + "".join(variants[k] + f for k, f in zip(kinds, filler[1:], strict=False))
        + value[cut:]
        + filler[-1]
        + value.upper()[: len(value) - cut]
    )
    table = {"K": TEXT_KEY, "V": value}
    probed = Redactor(table)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("vault.redact._MAX_PROBES", 0)
        automaton = Redactor(table)
    assert probed._automaton is None and automaton._automaton is not None
    assert probed.redact(text) == automaton.redact(text)


@given(st.text(alphabet=st.characters(max_codepoint=0x2FFF)))
def test_dropping_whitespace_takes_the_fast_path_with_the_same_result(text: str) -> None:
    from vault.redact import _DROP_SPACE, _drop_space

    assert _drop_space(text) == text.translate(_DROP_SPACE)
    latin1 = text.encode("utf-8").decode("latin-1")  # the egress proxy's bytes as text
    assert _drop_space(latin1) == latin1.translate(_DROP_SPACE)


# ------------------------------------------------- latin-1 prefilter, stream


def test_every_latin1_character_folds_to_one_latin1_character() -> None:
    from vault.redact import _LATIN1_LOWER, _fold_text

    for c in range(256):
        folded = _fold_text(chr(c))
        if folded:  # whitespace is deleted, not mapped
            assert len(folded) == 1 and ord(folded) == _LATIN1_LOWER[c]


latin1_filler_st = st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=40) | filler_st
SHORT = "Qz\xe99"
"""A raw form shorter than the derived forms' minimum: matched exactly, not folded."""


def _latin1_pieces(value: bytes | str) -> list[str]:
    """The egress proxy's view (bytes as latin-1) of every form and variant of ``value``."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    as_text = raw.decode("latin-1")
    return [
        *(f.encode("utf-8").decode("latin-1") for f in encodings(raw)),
        *_variants(as_text).values(),
        as_text.upper(),
        " ".join(raw.hex().upper()),
        "\xa0\x85".join(as_text),
        "\x85".join(raw.hex()),
    ]


def _latin1_table(value: bytes | str) -> dict[str, bytes | str]:
    """The secret and, as the broker adds for the egress proxy, its bytes seen as latin-1."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return {"S": value, "L": raw.decode("latin-1"), "Q": SHORT}




@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=secrets_st | text_secrets_st,
    pick=st.integers(min_value=0, max_value=27),
    part=st.none() | st.tuples(st.integers(0, 60), st.integers(1, 80)),
    filler=st.lists(latin1_filler_st, min_size=2, max_size=2),
    many=st.booleans(),
)
def test_property_latin1_prefilter_finds_exactly_what_the_reference_finds(
    value: bytes | str,
    pick: int,
    part: tuple[int, int] | None,
    filler: list[str],
    many: bool,
) -> None:
    # One form, variant or near-copy of a secret (or any piece of one) in a
    # latin-1 body: redaction with the one-pass prefilter equals the full
    # search alone, and a text the prefilter clears holds nothing.
    pieces = [*_latin1_pieces(value), SHORT, SHORT.upper()]
    piece = pieces[pick % len(pieces)]
    if part is not None:
        piece = piece[part[0] : part[0] + part[1]]
    text = filler[0] + piece + filler[1]
    table = _latin1_table(value)
    with pytest.MonkeyPatch.context() as mp:
        # Many: the full search through one automaton, the prefilter's needles
        # in automata of a few each.
        mp.setattr("vault.redact._MAX_PROBES", 0 if many else 256)
        mp.setattr("vault.redact._TEDDY_MAX", 3 if many else 64)
        fast = Redactor(table)
        reference = Redactor(table)
        assert len(fast._latin_prefilter()._automata) > 1 or not many
    fast._latin_min = 0
    reference._latin_min = sys.maxsize
    expected = reference.redact(text)
    assert fast.redact(text) == expected
    if fast._latin_prefilter().clear(text):
        assert expected == (text, [])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=secrets_st | text_secrets_st,
    picks=st.lists(st.integers(min_value=0, max_value=100), max_size=3),
    filler=st.lists(latin1_filler_st, min_size=4, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_property_latin1_stream_with_the_prefilter_equals_one_shot_reference(
    value: bytes | str, picks: list[int], filler: list[str], cuts: list[int]
) -> None:
    pieces = _latin1_pieces(value)
    chosen = zip(picks, filler[1:], strict=False)
    text = filler[0] + "".join(pieces[p % len(pieces)] + f for p, f in chosen)
    fast = Redactor(_latin1_table(value))
    fast._latin_min = 0
    reference = Redactor(_latin1_table(value))
    reference._latin_min = sys.maxsize
    assert stream_redact(fast, chunks(text, cuts)) == reference.redact(text)[0]


def test_a_large_latin1_body_is_cleared_in_one_pass_and_a_secret_in_it_is_still_found() -> None:
    import random

    body = random.Random(7).randbytes(1 << 16).decode("latin-1")
    r = Redactor({"K": TEXT_KEY})
    assert r._latin_prefilter().clear(body)
    assert r.redact(body) == (body, [])
    cut = len(body) // 2
    spaced = " ".join(TEXT_KEY[5:25]).upper()  # a near-copy, spaced out, other case
    hit = body[:cut] + spaced + body[cut:]
    assert not r._latin_prefilter().clear(hit)
    assert r.redact(hit) == (body[:cut] + "[REDACTED:K]" + body[cut:], ["K"])


def test_a_secret_that_folds_to_nothing_is_never_cleared() -> None:
    r = Redactor({"W": " \t \n "})
    assert not r._latin_prefilter().clear("plain text " * 1000)


@pytest.mark.parametrize("unit", ["\\u0041", "\\u0041 ", "a\\u03A3\\u0020"])
def test_stream_decides_from_a_tail_that_never_cuts_an_escape(unit: str) -> None:
    for folded_keep in range(12):
        for count in range(40):
            _check_decide(unit * count + "b" * (count % 3), folded_keep, count % 4)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(fold_alphabet | st.sampled_from([" " * 9, "\n" * 20]), max_size=120),
    folded_keep=st.integers(min_value=0, max_value=30),
    keep=st.integers(min_value=0, max_value=30),
)
def test_property_stream_decides_from_the_tail_as_from_the_whole_fold(
    parts: list[str], folded_keep: int, keep: int
) -> None:
    _check_decide("".join(parts), folded_keep, keep)


def _check_decide(buf: str, folded_keep: int, keep: int) -> None:
    from vault.redact import _ESCAPE_WIDTH, StreamRedactor

    stream = StreamRedactor(Redactor({"K": "abc"}))
    stream._keep, stream._folded_keep = keep, folded_keep
    # The whole buffer's fold, as the stream computed it before.
    view = fold(buf)
    decide = len(buf) - keep
    first_open = view.count_before(len(buf) - _ESCAPE_WIDTH + 1) - folded_keep
    expected = 0 if first_open <= 0 else min(decide, view.origin(first_open))
    assert stream._decidable(buf) == expected


def test_the_prefilter_is_built_once_a_redactor_has_searched_a_few_kib() -> None:
    r = Redactor({"K": TEXT_KEY})
    assert r.redact("short text")[1] == [] and r._latin is None  # not worth building
    stream = r.stream()
    body = "".join(stream.feed("0123456789" * 10) for _ in range(60)) + stream.finish()
    assert r._latin is not None and body == "0123456789" * 600
