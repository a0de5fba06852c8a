"""The vault container parser: known-answer file, truncation, bit flips, fuzzing.

Whatever the input, only :class:`VaultCorruptError` may come out of the parser.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vault import _crypto, _format
from vault._format import CORRUPT_MESSAGE
from vault.errors import VaultCorruptError

VECTORS = Path(__file__).parent / "vectors"
SAMPLE = (VECTORS / "vault_v1.kls").read_bytes()


def _load_maker() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_vault_vector", VECTORS / "make_vault_vector.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _redigest(signed_and_mac: bytes) -> bytes:
    """Recompute the unkeyed trailer, as a forger would."""
    return signed_and_mac + _crypto.sha256(signed_and_mac)


def _with_body(body: bytes, mac: bytes = bytes(32)) -> bytes:
    prefix = struct.pack(">8sHI", _format.MAGIC, _format.FORMAT_VERSION, len(body))
    return _redigest(prefix + body + mac)


def test_sample_parses_to_the_expected_structure() -> None:
    spec = json.loads((VECTORS / "vault_v1.json").read_text())
    vf, signed, mac = _format.parse(SAMPLE)
    assert vf.generation == spec["expected"]["generation"]
    assert vf.keyring is None and vf.passphrase is not None
    assert vf.passphrase.params.encode() == _format.Argon2Params(**spec["kdf"]).encode()
    assert len(vf.records) == len(spec["expected"]["secrets"])
    assert sorted(r.version for r in vf.records) == sorted(spec["expected"]["versions"].values())
    assert signed + mac + _crypto.sha256(signed + mac) == SAMPLE
    # Neither names nor values are in the file in any readable form.
    for name, value in spec["expected"]["secrets"].items():
        assert name.encode() not in SAMPLE
        assert value.encode() not in SAMPLE


def test_sample_is_reproduced_byte_for_byte(tmp_path: Path) -> None:
    """The stored vector pins the format: same inputs and randomness, same bytes."""
    out = tmp_path / "rebuilt.kls"
    _load_maker().build(out)
    assert out.read_bytes() == SAMPLE


def test_encode_parse_roundtrip() -> None:
    vf, signed, mac = _format.parse(SAMPLE)
    assert _format.encode(vf) == signed
    assert _format.seal_file(signed, mac) == SAMPLE


def test_truncation_at_every_length() -> None:
    for length in range(len(SAMPLE)):
        with pytest.raises(VaultCorruptError) as info:
            _format.parse(SAMPLE[:length])
        assert str(info.value) == CORRUPT_MESSAGE, length


def test_appended_bytes_are_rejected() -> None:
    with pytest.raises(VaultCorruptError):
        _format.parse(SAMPLE + b"\x00")
    with pytest.raises(VaultCorruptError):  # even with a recomputed digest
        _format.parse(_redigest(SAMPLE[:-32] + b"\x00"))


def test_every_byte_flip_is_one_opaque_error() -> None:
    for pos in range(len(SAMPLE)):
        forged = bytearray(SAMPLE)
        forged[pos] ^= 0x20
        with pytest.raises(VaultCorruptError) as info:
            _format.parse(bytes(forged))
        assert str(info.value) == CORRUPT_MESSAGE, pos


def _body_doc() -> dict[str, Any]:
    vf, signed, _ = _format.parse(SAMPLE)
    doc: dict[str, Any] = json.loads(signed[_format.PREFIX_SIZE :])
    return doc


def _parse_doc(doc: object) -> None:
    _format.parse(_with_body(json.dumps(doc).encode()))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("generation"),
        lambda d: d.update(extra=1),
        lambda d: d.update(generation=0),
        lambda d: d.update(generation=True),
        lambda d: d.update(generation=1.0),
        lambda d: d.update(generation=2**60),
        lambda d: d.update(vault_id="AAAA"),
        lambda d: d.update(key_id=None),
        lambda d: d.update(slots={}),
        lambda d: d.update(slots={"fingerprint": {}}),
        lambda d: d["slots"]["passphrase"].update(kdf="scrypt"),
        lambda d: d["slots"]["passphrase"].update(memory_kib=2**40),
        lambda d: d["slots"]["passphrase"].update(iterations=10_000),
        lambda d: d["slots"]["passphrase"].update(lanes=4, memory_kib=8),
        lambda d: d["slots"]["passphrase"].update(salt="c2FsdA=="),
        lambda d: d["slots"]["passphrase"].update(nonce="not base64!"),
        lambda d: d["slots"]["passphrase"].update(nonce=d["slots"]["passphrase"]["nonce"][:-1]),
        lambda d: d["records"][0].update(version=0),
        lambda d: d["records"][0].update(ct=""),
        lambda d: d["records"][0].update(name_ct="AAAA"),
        lambda d: d["records"][0].pop("id"),
        lambda d: d["records"].append(d["records"][0]),
        lambda d: d.update(records={}),
        lambda d: d.update(records=[None]),
    ],
)
def test_malformed_bodies_are_refused(mutate: Any) -> None:
    doc = _body_doc()
    mutate(doc)
    with pytest.raises(VaultCorruptError):
        _parse_doc(doc)


def test_duplicate_keys_and_bad_json_are_refused() -> None:
    for body in (b'{"a":1,"a":2}', b"[" * 100_000, b"\xff\xfe", b"1" * 5000, b"null", b""):
        with pytest.raises(VaultCorruptError):
            _format.parse(_with_body(body))


def test_wrong_magic_or_version() -> None:
    signed = SAMPLE[:-64]
    for prefix in (b"KLSVAULX" + signed[8:10], b"KLSVAULT\x00\x02"):
        with pytest.raises(VaultCorruptError):
            _format.parse(_redigest(prefix + signed[10:] + SAMPLE[-64:-32]))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_raw_bytes(data: bytes) -> None:
    try:
        _format.parse(data)
    except VaultCorruptError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(json_values)
def test_fuzz_json_bodies_with_valid_digest(doc: object) -> None:
    try:
        _parse_doc(doc)
    except VaultCorruptError:
        pass


@settings(max_examples=300)
@given(st.data())
def test_fuzz_mutated_sample_bodies_with_valid_digest(data: st.DataObject) -> None:
    """Mutations that survive the digest reach the JSON and schema checks."""
    body = bytearray(SAMPLE[_format.PREFIX_SIZE : -64])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(body) - 1))
        body[pos] = data.draw(st.integers(0, 255))
    try:
        vf, _, _ = _format.parse(_with_body(bytes(body)))
    except VaultCorruptError:
        return
    assert vf.records  # parsed: still a structurally valid vault


@settings(max_examples=100)
@given(
    st.sampled_from(["generation", "vault_id", "key_id", "slots", "records"]),
    json_values,
)
def test_fuzz_single_field_replacement(field: str, value: object) -> None:
    doc = _body_doc()
    doc[field] = value
    try:
        _parse_doc(doc)
    except VaultCorruptError:
        pass


def test_name_padding_roundtrip_and_rejects() -> None:
    assert _format.unpad_name(_format.pad_name("OPENAI_API_KEY")) == "OPENAI_API_KEY"
    assert len(_format.pad_name("a" * 64)) == 64
    for bad in (bytes(64), b"bad name".ljust(64, b"\x00"), b"\xff" * 64, b"a" * 63):
        with pytest.raises(ValueError):
            _format.unpad_name(bad)
