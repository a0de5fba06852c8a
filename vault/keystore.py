"""Where the vault's key-encryption keys come from.

Two unlock methods, either or both enabled per vault:

- **keyring**: a random 32-byte key-encryption key (KEK) kept in the OS keyring
  (Secret Service, macOS Keychain, Windows Credential Locker) through the
  ``keyring`` library. The OS unlocks it with the user's login.
- **passphrase**: a KEK derived from the user's passphrase with Argon2id; the
  salt and cost parameters are stored in the vault header.

The keyring also keeps each vault's *generation counter*, so a whole vault
file replaced by an older copy is detected (see :mod:`vault.store`).

A :class:`KeyStore` is the small interface the vault needs from a keyring.
:class:`OSKeyring` is the real one; :class:`NoKeyring` is the fail-closed stand-in
for machines without a keyring backend (a headless Linux box): every call
raises :class:`~vault.errors.KeyringUnavailableError`, so the vault runs in
passphrase mode and says so. Nothing ever falls back to storing a key in
plaintext.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
import unicodedata
from typing import Protocol

from vault import _crypto
from vault._crypto import Argon2Params as Argon2Params  # re-exported: the KDF settings callers pass
from vault.errors import KeyringKeyMissingError, KeyringUnavailableError

SERVICE = "keyless"

# Calibrated on the development machine (see docs/benchmarks.md, "## vault"):
# about half a second of CPU per unlock with 128 MiB of memory (RFC 9106 asks for at
# least 64 MiB; more memory is what makes guessing on GPUs expensive).
DEFAULT_ARGON2 = Argon2Params(iterations=4, lanes=4, memory_kib=128 * 1024)

NO_KEYRING_MESSAGE = (
    "no OS keyring is available (no Secret Service on this session?): "
    "the vault is protected by its passphrase only"
)


class KeyStore(Protocol):
    """The few keyring operations the vault needs.

    Items are addressed by vault id and an item name (``kek-<key id>``,
    ``generation``). Every method raises
    :class:`~vault.errors.KeyringUnavailableError` when the keyring cannot be
    used; ``get`` returns ``None`` for a missing item.
    """

    def available(self) -> bool:
        """Whether a usable keyring backend is present."""
        ...

    def get(self, vault_id: bytes, item: str) -> bytearray | None:
        """Return a stored item or ``None`` if there is none."""
        ...

    def set(self, vault_id: bytes, item: str, value: bytes | bytearray) -> None:
        """Store an item, replacing any previous value."""
        ...

    def delete(self, vault_id: bytes, item: str) -> None:
        """Delete an item; deleting a missing item is not an error."""
        ...


class NoKeyring:
    """A keystore that fails closed: no keyring on this machine."""

    def available(self) -> bool:
        """Always ``False``."""
        return False

    def get(self, vault_id: bytes, item: str) -> bytearray | None:
        """Raise :class:`KeyringUnavailableError`."""
        raise KeyringUnavailableError(NO_KEYRING_MESSAGE)

    def set(self, vault_id: bytes, item: str, value: bytes | bytearray) -> None:
        """Raise :class:`KeyringUnavailableError`."""
        raise KeyringUnavailableError(NO_KEYRING_MESSAGE)

    def delete(self, vault_id: bytes, item: str) -> None:
        """Raise :class:`KeyringUnavailableError`."""
        raise KeyringUnavailableError(NO_KEYRING_MESSAGE)

    def __repr__(self) -> str:
        return "NoKeyring()"


class OSKeyring:
    """The OS keyring through the ``keyring`` library.

    Values are stored base64-encoded under service ``keyless`` and user
    ``vault-<vault id hex>:<item>``. Every failure of the backend (no backend,
    locked collection, D-Bus error) becomes :class:`KeyringUnavailableError`
    whose message names the backend error type only, never a value.
    """

    def __init__(self, service: str = SERVICE) -> None:
        self._service = service

    def available(self) -> bool:
        """Whether ``keyring`` found a backend that is not the fail-closed one."""
        try:
            import keyring
            from keyring.backends import fail

            backend = keyring.get_keyring()
        except Exception:  # any backend init failure means "no keyring here", which is the answer
            return False
        if isinstance(backend, fail.Keyring):
            return False
        backends = getattr(backend, "backends", None)  # the ChainerBackend
        return backends is None or bool(backends)

    def get(self, vault_id: bytes, item: str) -> bytearray | None:
        """Return the stored item, or ``None``."""
        import keyring

        try:
            stored = keyring.get_password(self._service, _username(vault_id, item))
        except Exception as e:
            raise _unavailable("read", e) from e
        if stored is None:
            return None
        try:
            return bytearray(base64.b64decode(stored.encode("ascii"), validate=True))
        except (binascii.Error, UnicodeEncodeError) as e:
            raise KeyringUnavailableError(
                f"the keyring item for {item!r} of this vault is not in Keyless's format"
            ) from e

    def set(self, vault_id: bytes, item: str, value: bytes | bytearray) -> None:
        """Store an item."""
        import keyring

        try:
            keyring.set_password(
                self._service, _username(vault_id, item), base64.b64encode(value).decode("ascii")
            )
        except Exception as e:
            raise _unavailable("write", e) from e

    def delete(self, vault_id: bytes, item: str) -> None:
        """Delete an item if present."""
        import keyring
        from keyring.errors import PasswordDeleteError

        try:
            keyring.delete_password(self._service, _username(vault_id, item))
        except PasswordDeleteError:
            return
        except Exception as e:
            raise _unavailable("delete", e) from e

    def __repr__(self) -> str:
        return f"OSKeyring(service={self._service!r})"


def default_keystore() -> KeyStore:
    """The keystore for this process: the OS keyring unless ``KEYLESS_NO_KEYRING=1``."""
    if os.environ.get("KEYLESS_NO_KEYRING") == "1":
        return NoKeyring()
    return OSKeyring()


def _username(vault_id: bytes, item: str) -> str:
    return f"vault-{vault_id.hex()}:{item}"


def _unavailable(action: str, e: BaseException) -> KeyringUnavailableError:
    # Only the exception's type: backend messages are not ours to trust.
    return KeyringUnavailableError(
        f"the OS keyring could not {action} the vault key ({type(e).__name__})"
    )


def kek_item(key_id: bytes) -> str:
    """Keyring item name of the KEK that wraps the data key ``key_id``.

    Keyed by data key id so a rotation can store the new KEK before the new
    file is saved and delete the old one after: a crash in between leaves a
    file whose KEK is still in the keyring.
    """
    return f"kek-{key_id.hex()}"


GENERATION_ITEM = "generation"


def new_keyring_kek(store: KeyStore, vault_id: bytes, key_id: bytes) -> bytearray:
    """Create a random KEK and store it in the keyring; return it (zero it after use)."""
    kek = bytearray(_crypto.random_bytes(_crypto.KEY_SIZE))
    store.set(vault_id, kek_item(key_id), kek)
    return kek


def load_keyring_kek(store: KeyStore, vault_id: bytes, key_id: bytes) -> bytearray:
    """Fetch the KEK from the keyring.

    Raises:
        KeyringUnavailableError: The keyring cannot be used.
        KeyringKeyMissingError: The keyring holds no key for this vault.
    """
    kek = store.get(vault_id, kek_item(key_id))
    if kek is None:
        raise KeyringKeyMissingError(
            "the OS keyring holds no key for this vault (removed, or another machine): "
            "unlock it with its passphrase"
        )
    if len(kek) != _crypto.KEY_SIZE:
        _crypto.zero(kek)
        raise KeyringKeyMissingError("the vault key in the OS keyring has the wrong size")
    return kek


def read_generation(store: KeyStore, vault_id: bytes) -> int | None:
    """The generation last recorded in the keyring, or ``None`` if none or no keyring."""
    try:
        raw = store.get(vault_id, GENERATION_ITEM)
    except KeyringUnavailableError:
        return None
    if raw is None:
        return None
    try:
        return int(raw.decode("ascii"))
    except ValueError:
        return None


def write_generation(store: KeyStore, vault_id: bytes, generation: int) -> bool:
    """Record a generation in the keyring; ``False`` if there is no keyring."""
    try:
        store.set(vault_id, GENERATION_ITEM, str(generation).encode("ascii"))
    except KeyringUnavailableError:
        return False
    return True


def passphrase_bytes(passphrase: str | bytes | bytearray) -> bytearray:
    """The passphrase as UTF-8 bytes; text is NFC-normalised so every input method agrees.

    Raises:
        ValueError: The passphrase is empty.
    """
    if isinstance(passphrase, str):
        out = bytearray(unicodedata.normalize("NFC", passphrase).encode("utf-8"))
    else:
        out = bytearray(passphrase)
    if not out:
        raise ValueError("the passphrase is empty")
    return out


def passphrase_kek(
    passphrase: str | bytes | bytearray, salt: bytes, params: Argon2Params
) -> bytearray:
    """Derive the passphrase KEK with Argon2id (zero it after use)."""
    pw = passphrase_bytes(passphrase)
    try:
        return _crypto.argon2id(pw, salt, params)
    finally:
        _crypto.zero(pw)


def calibrate_argon2(
    target_seconds: float = 0.5, *, memory_kib: int = 64 * 1024, lanes: int = 4
) -> Argon2Params:
    """Pick Argon2id iterations so one derivation takes about ``target_seconds`` here.

    Memory stays fixed (memory hardness is the point); iterations scale the
    time. If one pass at ``memory_kib`` already exceeds the target, memory is
    halved (never below 8 MiB) instead. Time is the process's CPU time, so a
    busy machine does not talk the calibration into weaker parameters.

    Args:
        target_seconds: Wanted time per unlock.
        memory_kib: Memory per derivation in KiB.
        lanes: Argon2 parallelism.

    Returns:
        The calibrated parameters.
    """
    salt = bytes(16)
    while True:
        params = Argon2Params(iterations=1, lanes=lanes, memory_kib=memory_kib)
        start = time.process_time()
        _crypto.argon2id(b"calibration", salt, params)
        one_pass = max(time.process_time() - start, 1e-6)
        if one_pass <= target_seconds or memory_kib <= 8 * 1024:
            break
        memory_kib //= 2
    iterations = max(1, min(Argon2Params.MAX_ITERATIONS, round(target_seconds / one_pass)))
    return Argon2Params(iterations=iterations, lanes=lanes, memory_kib=memory_kib)


# ------------------------------------------------------------------ audit log

INSTALL_SCOPE = bytes(16)
"""The keyring scope (in place of a vault id) of items that belong to this install."""

AUDIT_HEAD_ITEM = "audit-head"
AUDIT_INSTALL_KEY_ITEM = "audit-install-key"


def read_audit_head(store: KeyStore, scope: bytes) -> tuple[int, str] | None:
    """The audit log head ``(last id, its chain hash)`` kept in the keyring.

    ``None`` when there is none, no keyring, or the item is not in Keyless's
    format (nobody but the keyring's owner can write it).
    """
    try:
        raw = store.get(scope, AUDIT_HEAD_ITEM)
    except KeyringUnavailableError:
        return None
    if raw is None:
        return None
    seq, _, head = raw.decode("ascii", errors="replace").partition(":")
    if not seq.isdigit() or len(head) != 64:
        return None
    return int(seq), head


def write_audit_head(store: KeyStore, scope: bytes, seq: int, head: str) -> bool:
    """Record the audit log head in the keyring; ``False`` if there is no keyring."""
    try:
        store.set(scope, AUDIT_HEAD_ITEM, f"{seq}:{head}".encode("ascii"))
    except KeyringUnavailableError:
        return False
    return True


def install_audit_key(store: KeyStore) -> bytearray | None:
    """The per-install audit chain key (created on first use), or ``None`` without a keyring.

    Keys the audit log on a machine that has a keyring but no vault yet.
    """
    try:
        key = store.get(INSTALL_SCOPE, AUDIT_INSTALL_KEY_ITEM)
        if key is not None:
            return key if len(key) == _crypto.KEY_SIZE else None
        key = bytearray(_crypto.random_bytes(_crypto.KEY_SIZE))
        store.set(INSTALL_SCOPE, AUDIT_INSTALL_KEY_ITEM, key)
    except KeyringUnavailableError:
        return None
    return key
