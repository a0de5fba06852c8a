"""The ``vault.kls`` container: layout, strict parser, associated data.

Layout (all integers big-endian)::

    offset  size  field
    0       8     magic  b"KLSVAULT"
    8       2     format version (1)
    10      4     body length N
    14      N     body: canonical UTF-8 JSON (sorted keys, no spaces)
    14+N    32    HMAC-SHA256(mac key, bytes 0 .. 14+N)
    46+N    32    SHA-256(bytes 0 .. 46+N)

The body holds the header (vault id, data key id, generation, key slots) and
the encrypted records. The HMAC, keyed from the data key, authenticates the
whole header and the list of records, so a deleted, reordered, duplicated or
rolled-back record is detected. The trailing unkeyed SHA-256 is checked before
any key is tried: it turns accidental damage (a flipped bit, a truncated copy)
into :class:`~vault.errors.VaultCorruptError` even when the only way in is a
passphrase, where a damaged salt would otherwise look like a wrong passphrase.
It is no defence against a deliberate forger, which the HMAC and the AEAD tags
are.

Every parse failure raises the same :class:`~vault.errors.VaultCorruptError`
with the same message; nothing else may escape :func:`parse`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from dataclasses import dataclass
from typing import Any

from vault._crypto import MAC_SIZE, NONCE_SIZE, TAG_SIZE, Argon2Params, mac_equal, sha256
from vault.errors import VaultCorruptError

MAGIC = b"KLSVAULT"
FORMAT_VERSION = 1
ID_SIZE = 16
SALT_SIZE = 16
DIGEST_SIZE = 32
MAX_BODY = 16 * 1024 * 1024
MAX_SECRET_SIZE = 1024 * 1024
MAX_GENERATION = 2**53
MAX_RECORDS = 10_000

_PREFIX = struct.Struct(">8sHI")
PREFIX_SIZE = _PREFIX.size
TRAILER_SIZE = MAC_SIZE + DIGEST_SIZE

CORRUPT_MESSAGE = "the vault file cannot be decrypted: it is damaged or was tampered with"

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
NAME_PAD = 64

METHOD_KEYRING = "keyring"
METHOD_PASSPHRASE = "passphrase"


@dataclass(frozen=True)
class KeyringSlot:
    """The data key wrapped under the key-encryption key kept in the OS keyring."""

    nonce: bytes
    wrapped: bytes


@dataclass(frozen=True)
class PassphraseSlot:
    """The data key wrapped under an Argon2id key derived from the passphrase."""

    salt: bytes
    params: Argon2Params
    nonce: bytes
    wrapped: bytes


@dataclass(frozen=True)
class Record:
    """One encrypted secret: its name and its value, each sealed separately.

    The name is encrypted too (padded to :data:`NAME_PAD` bytes), so a copy of
    the file does not even reveal which services the user holds keys for; it
    is decrypted at unlock so names can be listed without touching values.
    ``version`` grows on every update of the value.
    """

    record_id: bytes
    version: int
    name_nonce: bytes
    name_sealed: bytes
    nonce: bytes
    sealed: bytes


@dataclass(frozen=True)
class VaultFile:
    """The parsed, not yet authenticated, content of a vault file."""

    vault_id: bytes
    key_id: bytes
    generation: int
    keyring: KeyringSlot | None
    passphrase: PassphraseSlot | None
    records: tuple[Record, ...]


def record_aad(vault_id: bytes, key_id: bytes, record_id: bytes, name: str, version: int) -> bytes:
    """Associated data of a record: binds it to its vault, data key, id, name and version."""
    name_b = name.encode("utf-8")
    return b"".join(
        (
            b"keyless-vault/record/v1\x00",
            vault_id,
            key_id,
            record_id,
            struct.pack(">QH", version, len(name_b)),
            name_b,
        )
    )


def name_aad(vault_id: bytes, key_id: bytes, record_id: bytes, version: int) -> bytes:
    """Associated data of a record's encrypted name."""
    return b"".join(
        (b"keyless-vault/name/v1\x00", vault_id, key_id, record_id, struct.pack(">Q", version))
    )


def pad_name(name: str) -> bytes:
    """Encode a valid secret name as exactly :data:`NAME_PAD` bytes."""
    name_b = name.encode("ascii")
    return name_b + bytes(NAME_PAD - len(name_b))


def unpad_name(padded: bytes | bytearray) -> str:
    """Inverse of :func:`pad_name`; ``ValueError`` if the result is not a valid name."""
    if len(padded) != NAME_PAD:
        raise ValueError("bad name padding")
    name_b = bytes(padded).rstrip(b"\x00")
    name = name_b.decode("ascii")
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError("bad name")
    return name


def wrap_aad(vault_id: bytes, key_id: bytes, method: str, params: bytes = b"") -> bytes:
    """Associated data of a wrapped data key: binds vault, key id, method and KDF parameters."""
    method_b = method.encode("ascii")
    return b"".join(
        (
            b"keyless-vault/wrap/v1\x00",
            vault_id,
            key_id,
            struct.pack(">H", len(method_b)),
            method_b,
            params,
        )
    )


def encode(vf: VaultFile) -> bytes:
    """Return the signed part of the file: prefix and canonical body."""
    body = json.dumps(_to_json(vf), sort_keys=True, separators=(",", ":")).encode("ascii")
    if len(body) > MAX_BODY:
        raise ValueError("vault body too large")
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(body)) + body


def seal_file(signed: bytes, mac: bytes) -> bytes:
    """Append the MAC and the integrity digest to the signed part."""
    data = signed + mac
    return data + sha256(data)


def parse(raw: bytes) -> tuple[VaultFile, bytes, bytes]:
    """Parse a vault file without any key.

    Args:
        raw: The whole file.

    Returns:
        ``(vault_file, signed_part, mac)``; the caller verifies the MAC once it
        has the data key.

    Raises:
        VaultCorruptError: For every kind of malformed input.
    """
    try:
        return _parse(raw)
    except VaultCorruptError:
        raise
    except (ValueError, TypeError, KeyError, RecursionError, struct.error) as e:
        raise VaultCorruptError(CORRUPT_MESSAGE) from e


def _parse(raw: bytes) -> tuple[VaultFile, bytes, bytes]:
    if len(raw) < PREFIX_SIZE + TRAILER_SIZE:
        raise ValueError("too short")
    if not mac_equal(sha256(raw[:-DIGEST_SIZE]), raw[-DIGEST_SIZE:]):
        raise ValueError("digest")
    magic, version, body_len = _PREFIX.unpack_from(raw)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise ValueError("magic/version")
    if body_len > MAX_BODY or PREFIX_SIZE + body_len + TRAILER_SIZE != len(raw):
        raise ValueError("length")
    signed = raw[: PREFIX_SIZE + body_len]
    mac = raw[PREFIX_SIZE + body_len : PREFIX_SIZE + body_len + MAC_SIZE]
    body = raw[PREFIX_SIZE : PREFIX_SIZE + body_len].decode("ascii")
    doc = json.loads(body, object_pairs_hook=_no_dupes)
    return _from_json(doc), signed, mac


def _no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, *, size: int | None = None, max_size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise TypeError("not a string")
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
    except binascii.Error as e:
        raise ValueError("bad base64") from e
    if _b64(data) != value:  # one encoding per value
        raise ValueError("non-canonical base64")
    if size is not None and len(data) != size:
        raise ValueError("bad size")
    if max_size is not None and len(data) > max_size:
        raise ValueError("too large")
    return data


def _int(value: object, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError("bad integer")
    return value


def _obj(value: object, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != keys:
        raise ValueError("bad object")
    return value


def _to_json(vf: VaultFile) -> dict[str, Any]:
    slots: dict[str, Any] = {}
    if vf.keyring is not None:
        slots[METHOD_KEYRING] = {
            "nonce": _b64(vf.keyring.nonce),
            "wrapped": _b64(vf.keyring.wrapped),
        }
    if vf.passphrase is not None:
        p = vf.passphrase
        slots[METHOD_PASSPHRASE] = {
            "kdf": "argon2id",
            "salt": _b64(p.salt),
            "iterations": p.params.iterations,
            "lanes": p.params.lanes,
            "memory_kib": p.params.memory_kib,
            "nonce": _b64(p.nonce),
            "wrapped": _b64(p.wrapped),
        }
    return {
        "vault_id": _b64(vf.vault_id),
        "key_id": _b64(vf.key_id),
        "generation": vf.generation,
        "slots": slots,
        "records": [
            {
                "id": _b64(r.record_id),
                "version": r.version,
                "name_nonce": _b64(r.name_nonce),
                "name_ct": _b64(r.name_sealed),
                "nonce": _b64(r.nonce),
                "ct": _b64(r.sealed),
            }
            for r in vf.records
        ],
    }


_WRAPPED_SIZE = 32 + TAG_SIZE
_METHODS = {METHOD_KEYRING, METHOD_PASSPHRASE}


def _from_json(doc: object) -> VaultFile:
    top = _obj(doc, {"vault_id", "key_id", "generation", "slots", "records"})
    slots = top["slots"]
    if not isinstance(slots, dict) or not slots or not set(slots) <= _METHODS:
        raise ValueError("bad slots")
    keyring = None
    if METHOD_KEYRING in slots:
        k = _obj(slots[METHOD_KEYRING], {"nonce", "wrapped"})
        keyring = KeyringSlot(
            nonce=_unb64(k["nonce"], size=NONCE_SIZE),
            wrapped=_unb64(k["wrapped"], size=_WRAPPED_SIZE),
        )
    passphrase = None
    if METHOD_PASSPHRASE in slots:
        p = _obj(
            slots[METHOD_PASSPHRASE],
            {"kdf", "salt", "iterations", "lanes", "memory_kib", "nonce", "wrapped"},
        )
        if p["kdf"] != "argon2id":
            raise ValueError("unknown kdf")
        params = Argon2Params(
            iterations=_int(p["iterations"], 1, Argon2Params.MAX_ITERATIONS),
            lanes=_int(p["lanes"], 1, Argon2Params.MAX_LANES),
            memory_kib=_int(p["memory_kib"], 8, Argon2Params.MAX_MEMORY_KIB),
        )
        params.validate()
        passphrase = PassphraseSlot(
            salt=_unb64(p["salt"], size=SALT_SIZE),
            params=params,
            nonce=_unb64(p["nonce"], size=NONCE_SIZE),
            wrapped=_unb64(p["wrapped"], size=_WRAPPED_SIZE),
        )
    raw_records = top["records"]
    if not isinstance(raw_records, list) or len(raw_records) > MAX_RECORDS:
        raise ValueError("bad records")
    records = []
    for item in raw_records:
        r = _obj(item, {"id", "version", "name_nonce", "name_ct", "nonce", "ct"})
        sealed = _unb64(r["ct"], max_size=MAX_SECRET_SIZE + TAG_SIZE)
        if len(sealed) < TAG_SIZE:
            raise ValueError("short ciphertext")
        records.append(
            Record(
                record_id=_unb64(r["id"], size=ID_SIZE),
                version=_int(r["version"], 1, MAX_GENERATION),
                name_nonce=_unb64(r["name_nonce"], size=NONCE_SIZE),
                name_sealed=_unb64(r["name_ct"], size=NAME_PAD + TAG_SIZE),
                nonce=_unb64(r["nonce"], size=NONCE_SIZE),
                sealed=sealed,
            )
        )
    if len({r.record_id for r in records}) != len(records):
        raise ValueError("duplicate record id")
    return VaultFile(
        vault_id=_unb64(top["vault_id"], size=ID_SIZE),
        key_id=_unb64(top["key_id"], size=ID_SIZE),
        generation=_int(top["generation"], 1, MAX_GENERATION),
        keyring=keyring,
        passphrase=passphrase,
        records=tuple(records),
    )
