"""The vault's cryptography, kept small and in one place.

Primitives come from ``cryptography`` (pyca): AES-256-GCM for records and key
wrapping, HKDF-SHA256 for subkeys, HMAC-SHA256 for the file MAC, Argon2id for
passphrases. Every decryption failure becomes one :class:`DecryptionFailed`
(the callers turn it into their opaque public error); nothing here formats a
key or a plaintext into a message.

Plaintexts are decrypted straight into caller-visible ``bytearray`` buffers
(``update_into``) so they can be zeroed after use; ``cryptography`` keeps its
own copy of key material internally, which Python cannot wipe.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
MAC_SIZE = 32

Buffer = bytes | bytearray

# Indirection so the known-answer vector generator can make file creation
# deterministic; production code always uses os.urandom.
random_bytes: Callable[[int], bytes] = os.urandom


class DecryptionFailed(Exception):
    """An AEAD tag or a MAC did not verify (wrong key, tampered or truncated data)."""


@dataclass(frozen=True)
class Argon2Params:
    """Argon2id cost parameters, stored in the vault header.

    Attributes:
        iterations: Number of passes over memory (``t``).
        lanes: Degree of parallelism (``p``).
        memory_kib: Memory in KiB (``m``).
    """

    iterations: int
    lanes: int
    memory_kib: int

    # Bounds checked when a header is parsed: a tampered header must not make
    # unlock allocate gigabytes or spin for minutes before failing.
    MAX_ITERATIONS = 32
    MAX_LANES = 16
    MAX_MEMORY_KIB = 1024 * 1024

    def validate(self) -> None:
        """Raise ``ValueError`` if the parameters are outside the accepted bounds."""
        if not 1 <= self.iterations <= self.MAX_ITERATIONS:
            raise ValueError("argon2 iterations out of range")
        if not 1 <= self.lanes <= self.MAX_LANES:
            raise ValueError("argon2 lanes out of range")
        if not 8 * self.lanes <= self.memory_kib <= self.MAX_MEMORY_KIB:
            raise ValueError("argon2 memory out of range")

    def encode(self) -> bytes:
        """Fixed-width encoding used in associated data."""
        return struct.pack(">III", self.iterations, self.lanes, self.memory_kib)


def argon2id(
    passphrase: Buffer,
    salt: bytes,
    params: Argon2Params,
    *,
    secret: bytes | None = None,
    ad: bytes | None = None,
) -> bytearray:
    """Derive a 32-byte key from a passphrase with Argon2id.

    Args:
        passphrase: The passphrase bytes (UTF-8).
        salt: At least 16 random bytes, stored with the parameters.
        params: Cost parameters.
        secret: Optional Argon2 secret input (used by the RFC 9106 vector test).
        ad: Optional Argon2 associated data.

    Returns:
        The derived key as a ``bytearray`` the caller should zero.
    """
    params.validate()
    kdf = Argon2id(
        salt=salt,
        length=KEY_SIZE,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
        ad=ad,
        secret=secret,
    )
    # The stubs say bytes; the Rust binding takes any buffer, which spares an
    # immutable (unzeroable) copy of the passphrase.
    return bytearray(kdf.derive(passphrase))  # type: ignore[arg-type]


def hkdf(key: Buffer, *, salt: bytes, info: bytes, length: int = KEY_SIZE) -> bytearray:
    """HKDF-SHA256 (RFC 5869) of ``key``; returns a ``bytearray`` to zero after use."""
    return bytearray(
        HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)
    )


def hmac_sha256(key: Buffer, data: Buffer) -> bytes:
    """HMAC-SHA256 of ``data``."""
    return hmac.new(key, data, hashlib.sha256).digest()


def mac_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two MACs."""
    return hmac.compare_digest(a, b)


def sha256(data: Buffer) -> bytes:
    """SHA-256 digest (unkeyed; detects accidental damage only)."""
    return hashlib.sha256(data).digest()


def seal(key: Buffer, plaintext: Buffer, aad: bytes) -> tuple[bytes, bytes]:
    """Encrypt with AES-256-GCM under a fresh random 96-bit nonce.

    Args:
        key: 32-byte key.
        plaintext: The data to encrypt (not copied into any long-lived object).
        aad: Associated data bound to the ciphertext.

    Returns:
        ``(nonce, ciphertext_with_tag)``.
    """
    _check_key(key)
    nonce = random_bytes(NONCE_SIZE)
    encryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(aad)
    body = encryptor.update(plaintext) + encryptor.finalize()
    return nonce, body + encryptor.tag


def open_into(key: Buffer, nonce: bytes, sealed: bytes, aad: bytes) -> bytearray:
    """Decrypt AES-256-GCM into a fresh ``bytearray``.

    The buffer is zeroed before the exception if the tag does not verify, so a
    forged ciphertext never yields plaintext.

    Args:
        key: 32-byte key.
        nonce: The 12-byte nonce.
        sealed: Ciphertext followed by the 16-byte tag.
        aad: Associated data; must equal the data given to :func:`seal`.

    Returns:
        The plaintext, which the caller should zero after use.

    Raises:
        DecryptionFailed: Wrong key, wrong associated data, or tampered data.
    """
    _check_key(key)
    if len(nonce) != NONCE_SIZE or len(sealed) < TAG_SIZE:
        raise DecryptionFailed
    ciphertext, tag = sealed[:-TAG_SIZE], sealed[-TAG_SIZE:]
    decryptor = Cipher(algorithms.AES(key), modes.GCM(nonce, tag)).decryptor()
    decryptor.authenticate_additional_data(aad)
    # update_into needs room for one extra block.
    buf = bytearray(len(ciphertext) + 15)
    try:
        written = decryptor.update_into(ciphertext, buf)
        decryptor.finalize()
    except InvalidTag as e:
        zero(buf)
        raise DecryptionFailed from e
    out = bytearray(buf[:written])
    zero(buf)
    return out


def zero(buf: bytearray) -> None:
    """Overwrite a buffer with zeros in place."""
    buf[:] = bytes(len(buf))


def _check_key(key: Buffer) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError("AES-256 key must be 32 bytes")
