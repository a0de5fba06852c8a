"""The vault's private crypto module against published known-answer vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vault import _crypto
from vault._crypto import Argon2Params, DecryptionFailed

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "primitives.json").read_text()
)


def _h(s: str) -> bytes:
    return bytes.fromhex(s)


@pytest.mark.parametrize("v", VECTORS["aes_256_gcm"], ids=lambda v: v["source"])
def test_aes_gcm_open_known_answer(v: dict[str, str]) -> None:
    plain = _crypto.open_into(
        _h(v["key"]), _h(v["nonce"]), _h(v["ciphertext"]) + _h(v["tag"]), _h(v["aad"])
    )
    assert isinstance(plain, bytearray)
    assert plain == _h(v["plaintext"])


@pytest.mark.parametrize("v", VECTORS["aes_256_gcm"], ids=lambda v: v["source"])
def test_aes_gcm_seal_known_answer(v: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_crypto, "random_bytes", lambda n: _h(v["nonce"])[:n])
    nonce, sealed = _crypto.seal(_h(v["key"]), bytearray(_h(v["plaintext"])), _h(v["aad"]))
    assert nonce == _h(v["nonce"])
    assert sealed == _h(v["ciphertext"]) + _h(v["tag"])


@pytest.mark.parametrize("v", VECTORS["hmac_sha256"], ids=lambda v: v["source"])
def test_hmac_known_answer(v: dict[str, str]) -> None:
    assert _crypto.hmac_sha256(_h(v["key"]), _h(v["data"])) == _h(v["mac"])


@pytest.mark.parametrize("v", VECTORS["hkdf_sha256"], ids=lambda v: v["source"])
def test_hkdf_known_answer(v: dict[str, Any]) -> None:
    okm = _crypto.hkdf(_h(v["ikm"]), salt=_h(v["salt"]), info=_h(v["info"]), length=v["length"])
    assert okm == _h(v["okm"])


@pytest.mark.parametrize("v", VECTORS["argon2id"], ids=lambda v: v["source"])
def test_argon2id_known_answer(v: dict[str, Any]) -> None:
    params = Argon2Params(iterations=v["iterations"], lanes=v["lanes"], memory_kib=v["memory_kib"])
    tag = _crypto.argon2id(
        bytearray(_h(v["password"])), _h(v["salt"]), params, secret=_h(v["secret"]), ad=_h(v["ad"])
    )
    assert tag == _h(v["tag"])


KEY = bytes(range(32))


def test_seal_open_roundtrip_and_fresh_nonces() -> None:
    nonces = set()
    for i in range(2000):
        nonce, sealed = _crypto.seal(KEY, b"value %d" % i, b"aad")
        nonces.add(nonce)
        assert _crypto.open_into(KEY, nonce, sealed, b"aad") == b"value %d" % i
    assert len(nonces) == 2000


@pytest.mark.parametrize("part", ["key", "nonce", "ciphertext", "tag", "aad"])
def test_open_rejects_any_changed_input(part: str) -> None:
    nonce, sealed = _crypto.seal(KEY, b"attack at dawn", b"context")
    key, aad = bytearray(KEY), bytearray(b"context")
    n, s = bytearray(nonce), bytearray(sealed)
    target = {"key": key, "nonce": n, "ciphertext": s, "tag": s, "aad": aad}[part]
    target[-1 if part == "tag" else 0] ^= 0x01
    with pytest.raises(DecryptionFailed):
        _crypto.open_into(key, bytes(n), bytes(s), bytes(aad))


def test_open_rejects_short_input() -> None:
    with pytest.raises(DecryptionFailed):
        _crypto.open_into(KEY, bytes(12), bytes(15), b"")
    with pytest.raises(DecryptionFailed):
        _crypto.open_into(KEY, bytes(11), bytes(32), b"")


def test_wrong_key_size_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        _crypto.seal(bytes(16), b"x", b"")


@given(st.binary(max_size=512), st.binary(max_size=64))
def test_roundtrip_property(plaintext: bytes, aad: bytes) -> None:
    nonce, sealed = _crypto.seal(KEY, plaintext, aad)
    assert len(sealed) == len(plaintext) + _crypto.TAG_SIZE
    assert _crypto.open_into(KEY, nonce, sealed, aad) == plaintext


@given(st.binary(min_size=1, max_size=64), st.data())
def test_any_bit_flip_fails(plaintext: bytes, data: st.DataObject) -> None:
    nonce, sealed = _crypto.seal(KEY, plaintext, b"")
    pos = data.draw(st.integers(0, len(sealed) - 1))
    bit = data.draw(st.integers(0, 7))
    forged = bytearray(sealed)
    forged[pos] ^= 1 << bit
    with pytest.raises(DecryptionFailed):
        _crypto.open_into(KEY, nonce, bytes(forged), b"")


def test_zero_overwrites_in_place() -> None:
    buf = bytearray(b"secret")
    view = memoryview(buf)
    _crypto.zero(buf)
    assert bytes(view) == bytes(6)


@pytest.mark.parametrize(
    "params",
    [
        Argon2Params(0, 1, 64),
        Argon2Params(33, 1, 64),
        Argon2Params(1, 0, 64),
        Argon2Params(1, 17, 1024),
        Argon2Params(1, 4, 31),
        Argon2Params(1, 1, 1024 * 1024 + 1),
    ],
)
def test_argon2_params_out_of_bounds(params: Argon2Params) -> None:
    with pytest.raises(ValueError, match="out of range"):
        params.validate()
    with pytest.raises(ValueError):
        _crypto.argon2id(b"pw", bytes(16), params)


def test_argon2_params_encoding_is_fixed_width() -> None:
    assert Argon2Params(3, 4, 65536).encode() == _h("00000003" "00000004" "00010000")
