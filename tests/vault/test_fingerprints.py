"""Secret fingerprints: withheld while locked, in every variant, however chunked."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault.errors import RedactionError
from vault.fingerprints import STRIDE, WINDOW, WITHHELD, WITHHELD_NAME, SecretFingerprints
from vault.redact import Redactor, secret_forms

KEY = "sk-proj-Tm9+bGVh/a2VyX2tleV9mb3JfdGVzdHM="


def _variants(secret: str) -> list[str]:
    b64 = base64.b64encode(secret.encode()).decode()
    return [
        secret,
        secret.lower(),
        secret.upper(),
        " ".join(secret),
        secret[:10] + "\n" + secret[10:],
        "".join(f"\\u{ord(c):04x}" for c in secret),
        b64,
        "\n".join(b64[i : i + 16] for i in range(0, len(b64), 16)),
        secret.encode().hex(),
        secret[:-1],
        secret[1:],
        secret[5 : 5 + WINDOW + STRIDE - 1],  # the shortest run it promises to catch
    ]


@pytest.mark.parametrize("variant", _variants(KEY))
def test_every_variant_is_withheld(variant: str) -> None:
    r = SecretFingerprints.build([KEY], generation=1).redactor()
    head, tail = "# the header of this configuration file\n", "\n\n# the rest of the file is fine"
    text, names = r.redact(f"{head}TOKEN = {variant}{tail}")
    assert WITHHELD in text and names == [WITHHELD_NAME]
    assert variant not in text
    # The region is widened by up to WINDOW + STRIDE - 2 folded characters each side.
    assert text.startswith(head[:20]) and text.endswith(tail[-8:])


def test_short_secret_is_matched_whole_at_any_position() -> None:
    r = SecretFingerprints.build(["hunter22"], generation=1).redactor()
    for shift in range(STRIDE):
        assert r.scan("x" * shift + "pw: HUNTER 22") == [WITHHELD_NAME]
    assert r.scan("hunter2") == []


def test_text_without_a_secret_passes_unchanged() -> None:
    r = SecretFingerprints.build([KEY, "hunter22"], generation=1).redactor()
    prose = "A workspace file: DEBUG=1\nNAME=keyless\n" * 20
    assert r.redact(prose) == (prose, [])


def test_canaries_are_redacted_by_name_beside_the_fingerprints() -> None:
    canaries = Redactor([("canary", "CANARY-7f3a9c")])
    r = SecretFingerprints.build([KEY], generation=1).redactor(canaries)
    assert r.redact("x CANARY-7f3a9c y") == ("x [REDACTED:canary] y", ["canary"])


def test_saved_file_holds_no_plaintext_and_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "vault.fingerprints"
    SecretFingerprints.build([KEY], generation=7).save(path)
    raw = path.read_bytes()
    for form in secret_forms(KEY):
        for i in range(0, max(len(form) - 8, 1)):
            assert form[i : i + 8].encode() not in raw
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = SecretFingerprints.load(path)
    assert loaded is not None and loaded.generation == 7
    assert loaded.redactor().scan(KEY.lower()) == [WITHHELD_NAME]


def test_missing_file_is_none_and_a_malformed_one_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "vault.fingerprints"
    assert SecretFingerprints.load(path) is None
    path.write_text("{not json")
    with pytest.raises(RedactionError):
        SecretFingerprints.load(path)
    SecretFingerprints.build([KEY], generation=1).save(path)
    data = json.loads(path.read_text())
    data["windows"] = base64.b64encode(b"short").decode()
    path.write_text(json.dumps(data))
    with pytest.raises(RedactionError, match="malformed"):
        SecretFingerprints.load(path)


def test_an_index_built_with_another_window_is_refused_until_an_unlock(tmp_path: Path) -> None:
    path = tmp_path / "vault.fingerprints"
    SecretFingerprints.build([KEY], generation=1).save(path)
    data = json.loads(path.read_text())
    data["window"] = 12  # an index written before the near-copy width was lowered
    path.write_text(json.dumps(data))
    with pytest.raises(RedactionError, match="another version of Keyless.*unlock the vault"):
        SecretFingerprints.load(path)


INDEX = SecretFingerprints.build([KEY, "hunter22"], generation=1)


@settings(max_examples=150, deadline=None)
@given(
    picks=st.lists(st.integers(min_value=0, max_value=11), min_size=1, max_size=3),
    filler=st.lists(st.text(alphabet="ab =\n\\u00", max_size=40), min_size=4, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_property_locked_stream_equals_one_shot(
    picks: list[int], filler: list[str], cuts: list[int]
) -> None:
    variants = _variants(KEY)
    text = filler[0] + "".join(variants[p] + f for p, f in zip(picks, filler[1:], strict=False))
    r = INDEX.redactor()
    whole, names = r.redact(text)
    assert names == [WITHHELD_NAME]
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(text[last:p])
        last = p
    pieces.append(text[last:])
    stream = r.stream()
    assert "".join(stream.feed(p) for p in pieces) + stream.finish() == whole
