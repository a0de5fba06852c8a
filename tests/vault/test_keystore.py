"""Keystores: one contract suite for every backend, the fail-closed stand-in, passphrase KEKs.

The OS keyring tests run against a real Secret Service (gnome-keyring in a
private D-Bus session, see scripts/test.sh) and skip unless
``KEYLESS_SECRET_SERVICE=1``.
"""

from __future__ import annotations

import os
import unicodedata
import uuid
from collections.abc import Iterator

import keyring
import pytest
from keyring.backends import fail

from vault import _crypto
from vault._crypto import Argon2Params
from vault.errors import KeyringKeyMissingError, KeyringUnavailableError
from vault.keystore import (
    KeyStore,
    NoKeyring,
    OSKeyring,
    calibrate_argon2,
    default_keystore,
    load_keyring_kek,
    new_keyring_kek,
    passphrase_bytes,
    passphrase_kek,
    read_generation,
    write_generation,
)

SECRET_SERVICE = os.environ.get("KEYLESS_SECRET_SERVICE") == "1"
needs_secret_service = pytest.mark.skipif(
    not SECRET_SERVICE, reason="needs a real Secret Service (KEYLESS_SECRET_SERVICE=1)"
)
FAST = Argon2Params(iterations=1, lanes=1, memory_kib=8)


class MemoryKeyStore:
    """The in-process test double; the contract suite below proves it behaves like a keyring."""

    def __init__(self) -> None:
        self.items: dict[tuple[bytes, str], bytes] = {}

    def available(self) -> bool:
        return True

    def get(self, vault_id: bytes, item: str) -> bytearray | None:
        value = self.items.get((vault_id, item))
        return None if value is None else bytearray(value)

    def set(self, vault_id: bytes, item: str, value: bytes | bytearray) -> None:
        self.items[(vault_id, item)] = bytes(value)

    def delete(self, vault_id: bytes, item: str) -> None:
        self.items.pop((vault_id, item), None)


class KeyStoreContract:
    """What the vault relies on from any keystore."""

    @pytest.fixture
    def store(self) -> Iterator[KeyStore]:
        raise NotImplementedError

    @pytest.fixture
    def vault_id(self) -> bytes:
        return uuid.uuid4().bytes

    def test_available(self, store: KeyStore) -> None:
        assert store.available()

    def test_missing_item_is_none(self, store: KeyStore, vault_id: bytes) -> None:
        assert store.get(vault_id, "kek-00") is None

    def test_set_get_replace_delete(self, store: KeyStore, vault_id: bytes) -> None:
        value = bytes(range(256))  # every byte value survives the round trip
        store.set(vault_id, "item", value)
        assert store.get(vault_id, "item") == value
        store.set(vault_id, "item", b"second")
        assert store.get(vault_id, "item") == b"second"
        store.delete(vault_id, "item")
        assert store.get(vault_id, "item") is None
        store.delete(vault_id, "item")  # deleting a missing item is fine

    def test_items_are_separate_per_vault_and_name(self, store: KeyStore, vault_id: bytes) -> None:
        other = uuid.uuid4().bytes
        store.set(vault_id, "a", b"1")
        store.set(vault_id, "b", b"2")
        store.set(other, "a", b"3")
        assert (store.get(vault_id, "a"), store.get(vault_id, "b"), store.get(other, "a")) == (
            b"1",
            b"2",
            b"3",
        )
        for vid, item in ((vault_id, "a"), (vault_id, "b"), (other, "a")):
            store.delete(vid, item)

    def test_get_returns_a_zeroable_copy(self, store: KeyStore, vault_id: bytes) -> None:
        store.set(vault_id, "k", b"key material")
        got = store.get(vault_id, "k")
        assert isinstance(got, bytearray)
        _crypto.zero(got)
        assert store.get(vault_id, "k") == b"key material"
        store.delete(vault_id, "k")

    def test_kek_helpers(self, store: KeyStore, vault_id: bytes) -> None:
        key_id = os.urandom(16)
        with pytest.raises(KeyringKeyMissingError, match="passphrase"):
            load_keyring_kek(store, vault_id, key_id)
        kek = new_keyring_kek(store, vault_id, key_id)
        assert len(kek) == 32
        assert load_keyring_kek(store, vault_id, key_id) == kek
        with pytest.raises(KeyringKeyMissingError):
            load_keyring_kek(store, vault_id, os.urandom(16))  # another data key's KEK
        store.delete(vault_id, f"kek-{key_id.hex()}")

    def test_wrong_size_kek_is_refused(self, store: KeyStore, vault_id: bytes) -> None:
        key_id = os.urandom(16)
        store.set(vault_id, f"kek-{key_id.hex()}", b"short")
        with pytest.raises(KeyringKeyMissingError, match="wrong size"):
            load_keyring_kek(store, vault_id, key_id)
        store.delete(vault_id, f"kek-{key_id.hex()}")

    def test_generation(self, store: KeyStore, vault_id: bytes) -> None:
        assert read_generation(store, vault_id) is None
        assert write_generation(store, vault_id, 41)
        assert read_generation(store, vault_id) == 41
        store.set(vault_id, "generation", b"not a number")
        assert read_generation(store, vault_id) is None
        store.delete(vault_id, "generation")


class TestMemoryKeyStore(KeyStoreContract):
    @pytest.fixture
    def store(self) -> Iterator[KeyStore]:
        yield MemoryKeyStore()


@pytest.mark.keyring
@needs_secret_service
class TestOSKeyring(KeyStoreContract):
    @pytest.fixture
    def store(self) -> Iterator[KeyStore]:
        # A service name of its own so the test never meets real Keyless items.
        yield OSKeyring(service=f"keyless-test-{uuid.uuid4().hex}")

    def test_values_are_stored_as_base64_text(self, store: KeyStore, vault_id: bytes) -> None:
        assert isinstance(store, OSKeyring)
        store.set(vault_id, "x", b"\x00\xff")
        stored = keyring.get_password(store._service, f"vault-{vault_id.hex()}:x")
        assert stored == "AP8="
        store.delete(vault_id, "x")

    def test_foreign_item_is_reported_not_misread(self, store: KeyStore, vault_id: bytes) -> None:
        assert isinstance(store, OSKeyring)
        keyring.set_password(store._service, f"vault-{vault_id.hex()}:x", "not base64 !")
        with pytest.raises(KeyringUnavailableError, match="not in Keyless's format"):
            store.get(vault_id, "x")
        store.delete(vault_id, "x")


@pytest.fixture
def fail_backend() -> Iterator[None]:
    """The keyring library's own fail-closed backend, as on a headless box."""
    saved = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        yield
    finally:
        keyring.set_keyring(saved)


def test_os_keyring_without_backend_fails_closed(fail_backend: None) -> None:
    store = OSKeyring()
    assert not store.available()
    for call in (
        lambda: store.get(b"v", "kek-1"),
        lambda: store.set(b"v", "kek-1", b"secret-value-xyz"),
        lambda: store.delete(b"v", "kek-1"),
    ):
        with pytest.raises(KeyringUnavailableError) as info:
            call()
        assert "NoKeyringError" in str(info.value)
        assert "secret-value-xyz" not in str(info.value)
    assert read_generation(store, b"v") is None
    assert write_generation(store, b"v", 3) is False


def test_no_keyring_fails_closed() -> None:
    store = NoKeyring()
    assert not store.available()
    with pytest.raises(KeyringUnavailableError, match="passphrase only"):
        store.get(b"v", "kek")
    with pytest.raises(KeyringUnavailableError):
        store.set(b"v", "kek", b"x")
    with pytest.raises(KeyringUnavailableError):
        store.delete(b"v", "kek")
    with pytest.raises(KeyringUnavailableError):
        new_keyring_kek(store, b"v", b"k")
    assert read_generation(store, b"v") is None
    assert write_generation(store, b"v", 1) is False


def test_default_keystore_honours_no_keyring_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYLESS_NO_KEYRING", "1")
    assert isinstance(default_keystore(), NoKeyring)
    monkeypatch.delenv("KEYLESS_NO_KEYRING")
    assert isinstance(default_keystore(), OSKeyring)


def test_passphrase_is_nfc_normalised() -> None:
    composed = unicodedata.normalize("NFC", "pässwörd")
    decomposed = unicodedata.normalize("NFD", "pässwörd")
    assert composed != decomposed
    salt = bytes(16)
    assert passphrase_kek(composed, salt, FAST) == passphrase_kek(decomposed, salt, FAST)
    assert passphrase_kek(composed, salt, FAST) == passphrase_kek(composed.encode(), salt, FAST)


def test_passphrase_kek_depends_on_salt_and_params() -> None:
    base = passphrase_kek("pw", bytes(16), FAST)
    assert passphrase_kek("pw", b"\x01" * 16, FAST) != base
    assert passphrase_kek("pw", bytes(16), Argon2Params(2, 1, 8)) != base
    assert passphrase_kek("pw2", bytes(16), FAST) != base


def test_empty_passphrase_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        passphrase_bytes("")
    with pytest.raises(ValueError, match="empty"):
        passphrase_bytes(bytearray())


def test_passphrase_bytes_copies_the_input() -> None:
    original = bytearray(b"pw")
    copy = passphrase_bytes(original)
    _crypto.zero(copy)
    assert original == b"pw"


def test_calibration_falls_back_to_less_memory_when_one_pass_is_too_slow() -> None:
    # No machine derives 64 MiB in a microsecond: memory halves down to the 8 MiB floor.
    params = calibrate_argon2(1e-6, memory_kib=32 * 1024, lanes=1)
    assert params == Argon2Params(iterations=1, lanes=1, memory_kib=8 * 1024)


def test_calibration_scales_iterations_with_the_target() -> None:
    # One pass over 8 MiB takes milliseconds: far above 1 µs, far below 2 s.
    short = calibrate_argon2(1e-6, memory_kib=8 * 1024, lanes=1)
    long = calibrate_argon2(2.0, memory_kib=8 * 1024, lanes=1)
    assert long.memory_kib == short.memory_kib == 8 * 1024
    assert short.iterations == 1
    assert long.iterations > short.iterations
    long.validate()
