"""The vault file's life cycle: create, unlock, change, tamper, roll back, crash, leak nothing.

Passphrase-mode tests use cheap Argon2 parameters (they are stored in the
header, so unlock uses them too). Rollback tests that need a generation
counter use an in-process keystore that the keystore contract suite
(test_keystore.py) holds to the same behaviour as the real Secret Service;
the ``keyring`` tests use the real one.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from vault import _crypto, _format
from vault._crypto import Argon2Params
from vault._format import CORRUPT_MESSAGE, NAME_PATTERN
from vault.errors import (
    InvalidSecretNameError,
    InvalidSecretValueError,
    KeyringKeyMissingError,
    KeyringUnavailableError,
    NoUnlockMethodError,
    PassphraseRequiredError,
    SecretExistsError,
    SecretNotFoundError,
    VaultConflictError,
    VaultCorruptError,
    VaultError,
    VaultExistsError,
    VaultLockedError,
    VaultNotFoundError,
    VaultRollbackError,
    VaultSaveError,
    WrongPassphraseError,
)
from vault.keystore import KeyStore, NoKeyring, OSKeyring
from vault.store import Vault

FAST = Argon2Params(iterations=1, lanes=1, memory_kib=8)
PASSPHRASE = "correct horse battery staple"
SECRET = b"sk-LEAKCHECK-7f3a9c2e51"
VECTORS = Path(__file__).parent / "vectors"
REPO = Path(__file__).resolve().parents[2]
SECRET_SERVICE = os.environ.get("KEYLESS_SECRET_SERVICE") == "1"


class MemoryKeyStore:
    """In-process keystore (held to the keyring contract in test_keystore.py)."""

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

    def item_names(self) -> frozenset[str]:
        return frozenset(item for _, item in self.items)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "vault.kls"


@pytest.fixture
def keystore() -> MemoryKeyStore:
    return MemoryKeyStore()


def make(path: Path, keystore: KeyStore | None = None, **kw: Any) -> Vault:
    kw.setdefault("passphrase", PASSPHRASE)
    kw.setdefault("use_keyring", False)
    kw.setdefault("kdf", FAST)
    kw.setdefault("idle_timeout", None)
    return Vault.create(path, keystore=keystore or NoKeyring(), **kw)


def reopen(path: Path, keystore: KeyStore | None = None, **kw: Any) -> Vault:
    kw.setdefault("idle_timeout", None)
    return Vault.open(path, keystore=keystore or NoKeyring(), **kw)


# ------------------------------------------------------------------ basics


def test_create_add_reopen_unlock(path: Path) -> None:
    v = make(path)
    assert not v.is_locked
    assert v.unlock_methods == ("passphrase",)
    v.add("OPENAI_API_KEY", SECRET)
    v.add("github.token", bytearray(b"ghp_123"))
    assert v.names() == ["OPENAI_API_KEY", "github.token"]
    assert "OPENAI_API_KEY" in v
    v.lock()
    assert v.is_locked
    assert "OPENAI_API_KEY" not in v

    w = reopen(path)
    assert w.is_locked
    assert w.unlock_methods == ("passphrase",)
    with pytest.raises(VaultLockedError):
        w.names()
    w.unlock(PASSPHRASE)
    assert w.names() == ["OPENAI_API_KEY", "github.token"]
    got = w.get("OPENAI_API_KEY")
    assert isinstance(got, bytearray) and got == SECRET
    _crypto.zero(got)
    assert w.get("OPENAI_API_KEY") == SECRET  # each get is a fresh buffer


def test_file_is_private_and_reveals_neither_names_nor_values(path: Path) -> None:
    v = make(path)
    v.add("OPENAI_API_KEY", SECRET)
    raw = path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for needle in (SECRET, b"OPENAI_API_KEY", PASSPHRASE.encode()):
        assert needle not in raw
        assert base64.b64encode(needle) not in raw
        assert needle.hex().encode() not in raw
    # Beside it: the lock and the secrets' fingerprints, owner-only and without plaintext.
    index = v.fingerprints_path
    assert sorted(path.parent.iterdir()) == sorted(
        [path, path.with_name("vault.kls.lock"), index]
    )
    assert stat.S_IMODE(index.stat().st_mode) == 0o600
    indexed = index.read_bytes()
    for needle in (SECRET, SECRET[:12], b"OPENAI_API_KEY", PASSPHRASE.encode()):
        for form in (needle, base64.b64encode(needle), needle.hex().encode()):
            assert form not in indexed


def test_update_delete_and_versions(path: Path) -> None:
    v = make(path)
    v.add("a", b"1")
    gen = v.generation
    v.update("a", b"2")
    assert v.generation == gen + 1
    assert v.get("a") == b"2"
    v.delete("a")
    assert v.names() == []
    with pytest.raises(SecretNotFoundError, match="'a'"):
        v.get("a")
    with pytest.raises(SecretNotFoundError):
        v.update("a", b"3")
    with pytest.raises(SecretNotFoundError):
        v.delete("a")
    v.lock()
    w = reopen(path)
    w.unlock(PASSPHRASE)
    assert w.names() == []


def test_bad_names_and_values(path: Path) -> None:
    v = make(path)
    for bad in ("", "-x", "has space", "x" * 65, "ünï", "a/b", "a\x00"):
        with pytest.raises(InvalidSecretNameError, match="invalid secret name"):
            v.add(bad, b"v")
    with pytest.raises(InvalidSecretValueError, match="empty"):
        v.add("ok", b"")
    with pytest.raises(InvalidSecretValueError, match="limited"):
        v.add("ok", bytes(_format.MAX_SECRET_SIZE + 1))
    with pytest.raises(InvalidSecretValueError, match="bytes"):
        v.add("ok", "text")  # type: ignore[arg-type]
    v.add("ok", b"v")
    with pytest.raises(SecretExistsError):
        v.add("ok", b"w")
    assert v.get("ok") == b"v"
    v.add("big", bytes(_format.MAX_SECRET_SIZE))  # the limit itself is fine


def test_create_refuses_existing_file_and_no_method(path: Path) -> None:
    make(path)
    before = path.read_bytes()
    with pytest.raises(VaultExistsError):
        make(path)
    assert path.read_bytes() == before
    with pytest.raises(NoUnlockMethodError):
        Vault.create(path.with_name("other.kls"), use_keyring=False, keystore=NoKeyring())


def test_open_missing_file(path: Path) -> None:
    with pytest.raises(VaultNotFoundError):
        reopen(path)


def test_wrong_passphrase_is_distinct_and_uninformative(path: Path) -> None:
    make(path).add("a", SECRET)
    v = reopen(path)
    messages = set()
    for wrong in ("", "correct horse battery stapl", "x" * 200, b"\xff\xfe", PASSPHRASE.upper()):
        with pytest.raises(WrongPassphraseError) as info:
            v.unlock(wrong)
        assert not isinstance(info.value, VaultCorruptError)
        messages.add(str(info.value))
    assert messages == {"wrong passphrase"}
    assert v.is_locked
    v.unlock(PASSPHRASE)
    assert v.get("a") == SECRET


def test_passphrase_unicode_normalisation(path: Path) -> None:
    make(path, passphrase="pa\u0301ss")  # decomposed á
    reopen(path).unlock("p\u00e1ss")  # composed á


# ---------------------------------------------------------------- headless


def test_keyring_requested_without_keyring_fails_closed(path: Path) -> None:
    with pytest.raises(KeyringUnavailableError, match="passphrase only"):
        Vault.create(path, use_keyring=True, keystore=NoKeyring())
    assert not path.exists()
    with pytest.raises(KeyringUnavailableError):
        Vault.create(path, passphrase=PASSPHRASE, use_keyring=True, keystore=NoKeyring(), kdf=FAST)
    assert not path.exists()


def test_passphrase_vault_works_without_keyring(path: Path) -> None:
    v = make(path)
    assert not v.rollback_protected
    v.add("a", b"1")
    w = reopen(path)
    with pytest.raises(NoUnlockMethodError, match="passphrase"):
        w.unlock()
    w.unlock(PASSPHRASE)
    assert not w.rollback_protected


# ------------------------------------------------------------ idle / locking


def test_auto_lock_after_idle(path: Path) -> None:
    v = Vault.create(
        path, passphrase=PASSPHRASE, use_keyring=False, keystore=NoKeyring(), kdf=FAST,
        idle_timeout=60, now=1000.0,
    )
    v.add("a", b"1", now=1030.0)
    assert v.get("a", now=1089.0) == b"1"  # each use restarts the idle clock
    assert not v.lock_if_idle(now=1149.0)
    assert v.lock_if_idle(now=1149.5)
    assert v.is_locked
    with pytest.raises(VaultLockedError):
        v.get("a", now=1150.0)
    v.unlock(PASSPHRASE, now=2000.0)
    with pytest.raises(VaultLockedError, match="60 s without use"):
        v.get("a", now=2061.0)
    assert v.is_locked


def test_auto_lock_uses_the_injected_clock(path: Path) -> None:
    clock = [0.0]
    v = Vault.create(
        path, passphrase=PASSPHRASE, use_keyring=False, keystore=NoKeyring(), kdf=FAST,
        idle_timeout=5, clock=lambda: clock[0],
    )
    v.add("a", b"1")
    clock[0] = 4.0
    assert v.get("a") == b"1"
    clock[0] = 9.5
    with pytest.raises(VaultLockedError):
        v.names()


def test_lock_zeroes_key_material(path: Path) -> None:
    v = make(path)
    keys = v._keys
    assert keys is not None
    buffers = [keys.data_key, keys.mac_key, keys.record_key]
    assert all(any(b) for b in buffers)
    v.lock()
    assert all(b == bytes(len(b)) for b in buffers)


def test_every_locked_operation_refuses(path: Path) -> None:
    v = make(path)
    v.add("a", b"1")
    v.lock()
    for op in (
        lambda: v.names(),
        lambda: v.get("a"),
        lambda: v.add("b", b"2"),
        lambda: v.update("a", b"2"),
        lambda: v.delete("a"),
        lambda: v.change_passphrase("new"),
        lambda: v.rotate_data_key(passphrase=PASSPHRASE),
        lambda: v.export_backup(path.with_name("b.kls"), "pw"),
        lambda: v.derive_key("audit"),
    ):
        with pytest.raises(VaultLockedError):
            op()


# ------------------------------------------------------------ key management


def test_change_passphrase_rewraps_only(path: Path) -> None:
    v = make(path)
    v.add("a", SECRET)
    records_before = v._file.records if v._file else ()
    v.change_passphrase("new passphrase", kdf=Argon2Params(2, 1, 16))
    assert v._file is not None and v._file.records == records_before
    v.lock()
    w = reopen(path)
    with pytest.raises(WrongPassphraseError):
        w.unlock(PASSPHRASE)
    w.unlock("new passphrase")
    assert w.get("a") == SECRET
    assert w._file is not None and w._file.passphrase is not None
    assert w._file.passphrase.params == Argon2Params(2, 1, 16)


def test_rotate_data_key_reencrypts_everything(path: Path) -> None:
    v = make(path)
    v.add("a", SECRET)
    v.add("b", b"other")
    before = v._file
    assert before is not None
    with pytest.raises(PassphraseRequiredError):
        v.rotate_data_key()
    with pytest.raises(WrongPassphraseError):
        v.rotate_data_key(passphrase="wrong")
    assert v._file is before  # nothing changed
    v.rotate_data_key(passphrase=PASSPHRASE)
    after = v._file
    assert after is not None
    assert after.key_id != before.key_id and after.vault_id == before.vault_id
    old_ct = {r.sealed for r in before.records} | {r.name_sealed for r in before.records}
    assert not old_ct & ({r.sealed for r in after.records} | {r.name_sealed for r in after.records})
    assert after.passphrase is not None and before.passphrase is not None
    assert after.passphrase.salt != before.passphrase.salt
    assert v.get("a") == SECRET
    v.lock()
    w = reopen(path)
    w.unlock(PASSPHRASE)
    assert {n: bytes(w.get(n)) for n in w.names()} == {"a": SECRET, "b": b"other"}


def test_both_methods_and_switching(path: Path, keystore: MemoryKeyStore) -> None:
    v = make(path, keystore, use_keyring=True)
    assert v.unlock_methods == ("keyring", "passphrase")
    v.add("a", SECRET)
    w = reopen(path, keystore)
    w.unlock()
    assert w.get("a") == SECRET
    w.lock()
    w.unlock(PASSPHRASE)
    w.remove_passphrase()
    assert w.unlock_methods == ("keyring",)
    with pytest.raises(NoUnlockMethodError):
        w.disable_keyring()
    w.lock()
    with pytest.raises(NoUnlockMethodError, match="no passphrase"):
        w.unlock(PASSPHRASE)
    w.unlock()
    w.change_passphrase("second")
    w.disable_keyring()
    assert w.unlock_methods == ("passphrase",)
    assert not any(name.startswith("kek-") for name in keystore.item_names())
    with pytest.raises(NoUnlockMethodError):
        w.remove_passphrase()
    w.enable_keyring()
    w.lock()
    w.unlock()
    assert w.get("a") == SECRET


def test_keyring_key_missing_or_wrong(path: Path, keystore: MemoryKeyStore) -> None:
    v = make(path, keystore, use_keyring=True)
    v.add("a", SECRET)
    (kek_entry,) = [k for k in keystore.items if k[1].startswith("kek-")]
    keystore.items[kek_entry] = os.urandom(32)
    w = reopen(path, keystore)
    with pytest.raises(VaultCorruptError) as info:
        w.unlock()
    assert str(info.value) == CORRUPT_MESSAGE  # same opaque error as tampering
    del keystore.items[kek_entry]
    with pytest.raises(KeyringKeyMissingError, match="passphrase"):
        w.unlock()
    w.unlock(PASSPHRASE)  # the passphrase still opens it
    assert w.get("a") == SECRET


def test_rotation_with_keyring_replaces_the_kek(path: Path, keystore: MemoryKeyStore) -> None:
    v = make(path, keystore, use_keyring=True, passphrase=None)
    v.add("a", SECRET)
    before = {k for k in keystore.item_names() if k.startswith("kek-")}
    v.rotate_data_key()
    after = {k for k in keystore.item_names() if k.startswith("kek-")}
    assert len(before) == len(after) == 1 and before != after
    w = reopen(path, keystore)
    w.unlock()
    assert w.get("a") == SECRET


def test_rotation_save_failure_keeps_old_key_valid(
    path: Path, keystore: MemoryKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = make(path, keystore, use_keyring=True)
    v.add("a", SECRET)
    keks = {k for k in keystore.item_names() if k.startswith("kek-")}

    def full_disk(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(VaultSaveError, match="No space left"):
        v.rotate_data_key(passphrase=PASSPHRASE)
    monkeypatch.undo()
    assert {k for k in keystore.item_names() if k.startswith("kek-")} == keks
    assert v.get("a") == SECRET
    w = reopen(path, keystore)
    w.unlock()
    assert w.get("a") == SECRET


def test_export_backup_is_an_independent_passphrase_vault(
    path: Path, keystore: MemoryKeyStore
) -> None:
    v = make(path, keystore, use_keyring=True)
    v.add("a", SECRET)
    v.add("b", b"other")
    backup = path.with_name("backup.kls")
    v.export_backup(backup, "backup pass", kdf=FAST)
    with pytest.raises(VaultExistsError):
        v.export_backup(backup, "backup pass", kdf=FAST)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert SECRET not in backup.read_bytes()
    b = reopen(backup)  # no keyring needed
    assert b.unlock_methods == ("passphrase",)
    with pytest.raises(WrongPassphraseError):
        b.unlock(PASSPHRASE)
    b.unlock("backup pass")
    assert {n: bytes(b.get(n)) for n in b.names()} == {"a": SECRET, "b": b"other"}
    assert b.vault_id != v.vault_id
    assert sorted(p.name for p in backup.parent.iterdir()) == [
        "backup.kls",
        "backup.kls.fingerprints",  # written when the backup was unlocked
        "backup.kls.lock",
        "vault.kls",
        "vault.kls.fingerprints",
        "vault.kls.lock",
    ]


def test_derive_key_is_stable_per_data_key(path: Path) -> None:
    v = make(path)
    k1 = v.derive_key("audit")
    assert len(k1) == 32 and v.derive_key("audit") == k1 and v.derive_key("other") != k1
    v.lock()
    v.unlock(PASSPHRASE)
    assert v.derive_key("audit") == k1
    v.rotate_data_key(passphrase=PASSPHRASE)
    assert v.derive_key("audit") != k1


# ------------------------------------------------------------------ tamper


Mutation = Callable[[_format.VaultFile], _format.VaultFile]


def _forge(path: Path, vault: Vault, mutate: Mutation) -> None:
    """Rewrite the file with a mutated structure and a *valid* HMAC.

    This is stronger than an attacker can do (it needs the MAC key); it shows
    the AEAD binding of each record holds on its own.
    """
    vf, _, _ = _format.parse(path.read_bytes())
    forged = mutate(vf)
    assert vault._keys is not None
    signed = _format.encode(forged)
    path.write_bytes(
        _format.seal_file(signed, _crypto.hmac_sha256(vault._keys.mac_key, signed))
    )


def _two_secret_vault(path: Path) -> Vault:
    v = make(path)
    v.add("alpha", b"value-alpha")
    v.add("beta", b"value-beta")
    return v


@pytest.mark.slow
def test_every_byte_flip_of_a_vault_gives_one_opaque_error(path: Path) -> None:
    _two_secret_vault(path)
    raw = path.read_bytes()
    for pos in range(len(raw)):
        forged = bytearray(raw)
        forged[pos] ^= 0x01
        path.write_bytes(forged)
        with pytest.raises(VaultCorruptError) as info:
            reopen(path).unlock(PASSPHRASE)
        assert str(info.value) == CORRUPT_MESSAGE
        assert b"value-alpha" not in str(info.value).encode()


def test_forged_flips_past_the_digest(path: Path) -> None:
    """A forger who recomputes the unkeyed digest still gets nothing out.

    Flips inside the passphrase slot, the vault id or the data key id can
    only look like a wrong passphrase (they are what the wrapped key is bound
    to); every other flip is the opaque corruption error.
    """
    _two_secret_vault(path)
    raw = path.read_bytes()
    regions = []
    bounds = ((b'"passphrase":{', b"}"), (b'"key_id":"', b'",'), (b'"vault_id":"', b'"}'))
    for marker, end in bounds:
        start = raw.index(marker)
        regions.append(range(start, raw.index(end, start + len(marker))))
    outcomes: dict[type[BaseException], int] = {}
    for pos in range(len(raw) - 32):
        forged = bytearray(raw[:-32])
        forged[pos] ^= 0x01
        path.write_bytes(bytes(forged) + _crypto.sha256(forged))
        try:
            reopen(path).unlock(PASSPHRASE)
        except WrongPassphraseError:
            assert any(pos in r for r in regions), pos
            outcomes[WrongPassphraseError] = outcomes.get(WrongPassphraseError, 0) + 1
        except VaultCorruptError as e:
            assert str(e) == CORRUPT_MESSAGE
            outcomes[VaultCorruptError] = outcomes.get(VaultCorruptError, 0) + 1
        else:
            # Only flips that keep the same meaning may pass: none exist in this format.
            pytest.fail(f"flip at {pos} went unnoticed")
    assert outcomes[VaultCorruptError] > outcomes[WrongPassphraseError] > 0


def test_truncated_vault_at_every_length(path: Path) -> None:
    _two_secret_vault(path)
    raw = path.read_bytes()
    for length in range(len(raw)):
        path.write_bytes(raw[:length])
        with pytest.raises(VaultCorruptError):
            reopen(path)
    path.write_bytes(raw)
    reopen(path).unlock(PASSPHRASE)


def test_deleted_reordered_or_duplicated_records_fail_the_hmac(path: Path) -> None:
    v = _two_secret_vault(path)
    raw = path.read_bytes()
    vf, signed, mac = _format.parse(raw)
    for records in (vf.records[:1], vf.records[::-1], vf.records + vf.records[:0]):
        if records == vf.records:
            continue
        signed2 = _format.encode(replace(vf, records=records))
        path.write_bytes(_format.seal_file(signed2, mac))  # old MAC, new list
        with pytest.raises(VaultCorruptError):
            reopen(path).unlock(PASSPHRASE)
    path.write_bytes(raw)
    v.lock()


def test_swapped_values_fail_even_with_a_valid_mac(path: Path) -> None:
    v = _two_secret_vault(path)

    def swap_values(vf: _format.VaultFile) -> _format.VaultFile:
        a, b = vf.records
        return replace(
            vf,
            records=(
                replace(a, nonce=b.nonce, sealed=b.sealed),
                replace(b, nonce=a.nonce, sealed=a.sealed),
            ),
        )

    _forge(path, v, swap_values)
    w = reopen(path)
    w.unlock(PASSPHRASE)  # names are intact...
    for name in ("alpha", "beta"):
        with pytest.raises(VaultCorruptError) as info:
            w.get(name)  # ...but values are bound to their record and name
        assert str(info.value) == CORRUPT_MESSAGE


def test_renamed_record_fails_even_with_a_valid_mac(path: Path) -> None:
    v = _two_secret_vault(path)

    def swap_names(vf: _format.VaultFile) -> _format.VaultFile:
        a, b = vf.records
        return replace(
            vf,
            records=(
                replace(
                    a, record_id=b.record_id, name_nonce=b.name_nonce, name_sealed=b.name_sealed
                ),
                replace(
                    b, record_id=a.record_id, name_nonce=a.name_nonce, name_sealed=a.name_sealed
                ),
            ),
        )

    _forge(path, v, swap_names)
    w = reopen(path)
    w.unlock(PASSPHRASE)
    with pytest.raises(VaultCorruptError):
        w.get("alpha")


def test_record_rolled_back_to_an_old_version_fails(path: Path) -> None:
    v = _two_secret_vault(path)
    old = v._file
    assert old is not None
    v.update("alpha", b"new-alpha")

    def old_alpha_value(vf: _format.VaultFile) -> _format.VaultFile:
        a = vf.records[0]
        stale = replace(a, nonce=old.records[0].nonce, sealed=old.records[0].sealed)
        return replace(vf, records=(stale, vf.records[1]))

    _forge(path, v, old_alpha_value)
    w = reopen(path)
    w.unlock(PASSPHRASE)
    with pytest.raises(VaultCorruptError):
        w.get("alpha")


def test_record_moved_from_another_vault_fails(path: Path, tmp_path: Path) -> None:
    v = _two_secret_vault(path)
    other = make(tmp_path / "other.kls")
    other.add("alpha", b"attacker-chosen")
    foreign = other._file.records[0] if other._file else None
    assert foreign is not None
    _forge(path, v, lambda vf: replace(vf, records=(foreign, vf.records[1])))
    with pytest.raises(VaultCorruptError):
        reopen(path).unlock(PASSPHRASE)


def test_slot_swapped_between_vaults_looks_like_a_wrong_passphrase(
    path: Path, tmp_path: Path
) -> None:
    _two_secret_vault(path)
    other = make(tmp_path / "other.kls")
    foreign_slot = other._file.passphrase if other._file else None
    vf, signed, mac = _format.parse(path.read_bytes())
    path.write_bytes(_format.seal_file(_format.encode(replace(vf, passphrase=foreign_slot)), mac))
    with pytest.raises(WrongPassphraseError):  # bound to the other vault's id via the AAD
        reopen(path).unlock(PASSPHRASE)


def test_nonces_are_never_reused(path: Path) -> None:
    """Every encryption (name and value, each add, update and rotation) draws a fresh nonce."""
    v = make(path)
    sealed: dict[tuple[bytes, bytes, int], _format.Record] = {}

    def collect() -> None:
        assert v._file is not None
        for r in v._file.records:
            sealed[(v._file.key_id, r.record_id, r.version)] = r

    for i in range(60):
        if i % 3 == 0 and "x" in v:
            v.delete("x")
        elif "x" in v:
            v.update("x", b"same value")  # same plaintext, new nonce
        else:
            v.add("x", b"same value")
        if i % 5 == 0:
            v.add(f"n{i}", b"same value")
        collect()
    v.rotate_data_key(passphrase=PASSPHRASE)
    collect()
    nonces = [n for r in sealed.values() for n in (r.nonce, r.name_nonce)]
    assert len(sealed) > 60
    assert len(nonces) == len(set(nonces))
    values = [r.sealed for r in sealed.values()]
    assert len(values) == len(set(values))  # equal plaintexts never give equal ciphertexts


# ---------------------------------------------------------------- rollback


def test_whole_file_rollback_is_detected(path: Path, keystore: MemoryKeyStore) -> None:
    v = make(path, keystore)
    assert v.rollback_protected
    v.add("a", b"old")
    old_copy = path.read_bytes()
    v.update("a", b"new")
    v.add("b", b"added later")
    path.write_bytes(old_copy)
    w = reopen(path, keystore)
    with pytest.raises(VaultRollbackError, match="older than the last one") as info:
        w.unlock(PASSPHRASE)
    assert isinstance(info.value, VaultCorruptError)
    assert w.is_locked
    w.unlock(PASSPHRASE, accept_rollback=True)
    assert w.get("a") == b"old"
    w.lock()
    w.unlock(PASSPHRASE)  # accepted: the old copy is now the reference


def test_generation_recorded_only_grows_with_saves(path: Path, keystore: MemoryKeyStore) -> None:
    v = make(path, keystore)
    vid = bytes.fromhex(v.vault_id)
    for i in range(3):
        v.add(f"s{i}", b"x")
        assert keystore.items[(vid, "generation")] == str(v.generation).encode()


# ---------------------------------------------------------------- saving


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_failed_save_keeps_the_old_vault(
    path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    v = make(path)
    v.add("a", b"1")
    before = path.read_bytes()
    real = getattr(os, failing)
    calls = {"n": 0}

    def broken(*args: Any) -> Any:
        calls["n"] += 1
        if failing == "write" and calls["n"] == 1:
            real(args[0], bytes(args[1])[:10])  # a torn, partial write, then disk full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, failing, broken)
    with pytest.raises(VaultSaveError, match="No space left on device"):
        v.add("b", b"2")
    monkeypatch.undo()
    assert calls["n"] >= 1
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "vault.kls", "vault.kls.fingerprints", "vault.kls.lock"
    ]
    assert v.names() == ["a"]  # in-memory state unchanged too
    v.add("b", b"2")  # and the next save works
    w = reopen(path)
    w.unlock(PASSPHRASE)
    assert w.names() == ["a", "b"]


def test_a_failed_index_write_keeps_the_save_and_the_locked_redactor_fails_closed(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from vault.errors import RedactionError
    from vault.fingerprints import SecretFingerprints

    v = make(path)
    v.fingerprints_path.unlink()  # written at creation
    v.fingerprints_path.mkdir()  # now the index cannot be written there
    v.add("a", SECRET)
    assert "fingerprints were not updated" in caplog.text
    assert SECRET.decode() not in caplog.text
    w = reopen(path)
    w.unlock(PASSPHRASE)
    assert w.names() == ["a"]  # the vault itself was saved
    with pytest.raises(RedactionError, match="cannot read the secret fingerprints"):
        SecretFingerprints.load(v.fingerprints_path)


def test_next_save_removes_temp_files_of_a_killed_writer(path: Path) -> None:
    v = make(path)
    stale = path.with_name(".vault.kls.0123456789ab.tmp")
    stale.write_bytes(path.read_bytes()[:7])  # what a writer killed mid-write leaves
    other = path.with_name("unrelated.tmp")
    other.write_bytes(b"keep me")
    reopen(path).unlock(PASSPHRASE)  # a stale temp file does not disturb opening
    v.add("a", b"1")
    assert not stale.exists()
    assert other.read_bytes() == b"keep me"


def test_save_fsyncs_file_and_directory(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v = make(path)
    kinds: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        kinds.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    v.add("a", b"1")
    assert kinds == ["file", "dir", "file"]  # the vault, its directory, then the index


def test_concurrent_writer_is_detected(path: Path) -> None:
    a = make(path)
    b = reopen(path)
    b.unlock(PASSPHRASE)
    a.add("from-a", b"1")
    with pytest.raises(VaultConflictError, match="changed on disk"):
        b.add("from-b", b"2")
    b.lock()
    b.unlock(PASSPHRASE)
    b.add("from-b", b"2")
    assert b.names() == ["from-a", "from-b"]


@pytest.mark.slow
def test_sigkill_during_saves_leaves_old_or_new_vault(path: Path) -> None:
    v = make(path)
    v.add("counter", b"0")
    v.lock()
    rng = random.Random(20261127)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    last_saved = 0
    for _trial in range(25):
        child = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "crash_saver.py"), str(path), PASSPHRASE],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert child.stdout is not None
        # Kill at a random point: after a random number of completed saves the
        # child is somewhere inside its next save.
        for _ in range(rng.randint(0, 6)):
            line = child.stdout.readline()
            assert line, "saver died on its own"
            last_saved = int(line)
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        w = reopen(path)
        w.unlock(PASSPHRASE)
        counter = int(w.get("counter").decode())
        assert counter >= last_saved
        last_saved = counter
    assert last_saved > 0
    # Temp files of killed writers are cleaned up by the next save.
    w.add("final", b"x")
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "vault.kls", "vault.kls.fingerprints", "vault.kls.lock"
    ]


# ------------------------------------------------------------- no leaks


def test_no_secret_in_any_repr_message_or_log(
    path: Path, keystore: MemoryKeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []

    def expect(exc: type[BaseException], op: Callable[[], object]) -> None:
        with pytest.raises(exc) as info:
            op()
        texts.extend((str(info.value), repr(info.value), repr(info.value.__cause__)))

    v = make(path, keystore, use_keyring=True)
    v.add("LEAK", SECRET)
    value = v.get("LEAK")
    texts.extend((repr(v), str(v), repr(v._keys), repr(keystore), repr(v._file)))
    expect(SecretExistsError, lambda: v.add("LEAK", SECRET))
    expect(InvalidSecretNameError, lambda: v.add("bad name", SECRET))
    expect(InvalidSecretValueError, lambda: v.add("big", SECRET * 70_000))
    expect(SecretNotFoundError, lambda: v.get("nope"))
    v.update("LEAK", SECRET + b"-2")
    v.export_backup(path.with_name("b.kls"), PASSPHRASE, kdf=FAST)
    v.rotate_data_key(passphrase=PASSPHRASE)
    texts.extend((repr(v), repr(v._file)))
    v.lock()
    expect(VaultLockedError, lambda: v.get("LEAK"))
    expect(WrongPassphraseError, lambda: v.unlock("not it"))
    v.unlock(PASSPHRASE)
    good = path.read_bytes()
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    expect(VaultCorruptError, lambda: reopen(path, keystore).unlock(PASSPHRASE))
    path.write_bytes(good)
    texts.extend(r.getMessage() for r in caplog.records)
    texts.append(repr(reopen(path, keystore)))
    blob = "\n".join(texts)
    assert value == SECRET
    for needle in (SECRET, PASSPHRASE.encode()):
        for form in (needle, needle.hex().encode(), base64.b64encode(needle)):
            assert form.decode() not in blob
    assert v._keys is not None
    assert v._keys.data_key.hex() not in blob
    assert base64.b64encode(bytes(v._keys.data_key)).decode() not in blob


# --------------------------------------------------------- known answer


def test_known_answer_vault_opens_with_expected_content(tmp_path: Path) -> None:
    spec = json.loads((VECTORS / "vault_v1.json").read_text())
    # A copy: unlocking writes the secrets' fingerprints beside the vault file.
    copy = tmp_path / "vault_v1.kls"
    copy.write_bytes((VECTORS / "vault_v1.kls").read_bytes())
    v = Vault.open(copy, keystore=NoKeyring())
    assert v.unlock_methods == ("passphrase",)
    with pytest.raises(WrongPassphraseError):
        v.unlock(spec["passphrase"] + "!")
    v.unlock(spec["passphrase"])
    assert v.generation == spec["expected"]["generation"]
    assert {n: v.get(n).decode() for n in v.names()} == spec["expected"]["secrets"]


# -------------------------------------------------------------- properties

names = st.from_regex(NAME_PATTERN, fullmatch=True)
# Each example uses a fresh file name under the shared tmp_path.
FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURE_OK)
@given(st.dictionaries(names, st.binary(min_size=1, max_size=300), max_size=6))
def test_roundtrip_property(tmp_path: Path, secrets: dict[str, bytes]) -> None:
    p = tmp_path / f"{uuid.uuid4().hex}.kls"
    v = make(p)
    for name, value in secrets.items():
        v.add(name, value)
    w = reopen(p)
    w.unlock(PASSPHRASE)
    assert {n: bytes(w.get(n)) for n in w.names()} == secrets


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(st.data())
def test_tamper_property(tmp_path: Path, data: st.DataObject) -> None:
    p = tmp_path / f"{uuid.uuid4().hex}.kls"
    v = make(p)
    v.add("alpha", b"value")
    raw = bytearray(p.read_bytes())
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    p.write_bytes(raw)
    with pytest.raises(VaultCorruptError):
        reopen(p).unlock(PASSPHRASE)


# --------------------------------------------------------- real keyring


@pytest.fixture
def os_keyring() -> Iterator[OSKeyring]:
    if not SECRET_SERVICE:
        pytest.skip("needs a real Secret Service (KEYLESS_SECRET_SERVICE=1)")
    yield OSKeyring(service=f"keyless-test-{uuid.uuid4().hex}")


@pytest.mark.keyring
def test_keyring_mode_with_real_secret_service(path: Path, os_keyring: OSKeyring) -> None:
    v = Vault.create(path, use_keyring=True, keystore=os_keyring, idle_timeout=None)
    assert v.unlock_methods == ("keyring",)
    assert v.rollback_protected
    v.add("OPENAI_API_KEY", SECRET)
    w = Vault.open(path, keystore=os_keyring)
    w.unlock()
    assert w.get("OPENAI_API_KEY") == SECRET
    assert SECRET not in path.read_bytes()
    w.rotate_data_key()
    w.lock()
    w.unlock()
    assert w.get("OPENAI_API_KEY") == SECRET


@pytest.mark.keyring
def test_rollback_detected_with_real_secret_service(path: Path, os_keyring: OSKeyring) -> None:
    v = Vault.create(path, use_keyring=True, keystore=os_keyring, idle_timeout=None)
    old = path.read_bytes()
    v.add("a", b"1")
    path.write_bytes(old)
    with pytest.raises(VaultRollbackError):
        Vault.open(path, keystore=os_keyring).unlock()


@pytest.mark.keyring
def test_both_methods_with_real_secret_service(path: Path, os_keyring: OSKeyring) -> None:
    v = Vault.create(
        path, passphrase=PASSPHRASE, use_keyring=True, keystore=os_keyring, kdf=FAST,
        idle_timeout=None,
    )
    v.add("a", SECRET)
    vid = bytes.fromhex(v.vault_id)
    assert v._file is not None
    kek_name = f"kek-{v._file.key_id.hex()}"
    assert os_keyring.get(vid, kek_name) is not None
    v.disable_keyring()
    assert os_keyring.get(vid, kek_name) is None
    w = Vault.open(path, keystore=os_keyring)
    with pytest.raises(NoUnlockMethodError):
        w.unlock()
    w.unlock(PASSPHRASE)
    w.enable_keyring()
    w.lock()
    w.unlock()
    assert w.get("a") == SECRET


def test_all_errors_are_vault_errors() -> None:
    for exc in (
        VaultCorruptError, WrongPassphraseError, VaultLockedError, VaultSaveError,
        KeyringUnavailableError, SecretNotFoundError, VaultRollbackError, VaultConflictError,
    ):
        assert issubclass(exc, VaultError)


# ------------------------------------------------------------ state machine


class VaultModel(RuleBasedStateMachine):
    """Random sequences of operations, checked against a plain dict.

    Every step may also lock, reopen from disk, rotate the data key or change
    the passphrase; the vault must always hold exactly what the model holds.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="vault-model-"))
        self.path = self.dir / "vault.kls"
        self.passphrase = PASSPHRASE
        self.vault = make(self.path)
        self.model: dict[str, bytes] = {}

    @rule(name=names, value=st.binary(min_size=1, max_size=64))
    def add(self, name: str, value: bytes) -> None:
        if name in self.model:
            with pytest.raises(SecretExistsError):
                self.vault.add(name, value)
        else:
            self.vault.add(name, value)
            self.model[name] = value

    @rule(data=st.data(), value=st.binary(min_size=1, max_size=64))
    def update(self, data: st.DataObject, value: bytes) -> None:
        if self.model:
            name = data.draw(st.sampled_from(sorted(self.model)))
            self.vault.update(name, value)
            self.model[name] = value

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        if self.model:
            name = data.draw(st.sampled_from(sorted(self.model)))
            self.vault.delete(name)
            del self.model[name]

    @rule()
    def reopen(self) -> None:
        self.vault.lock()
        self.vault = reopen(self.path)
        self.vault.unlock(self.passphrase)

    @rule()
    def rotate(self) -> None:
        self.vault.rotate_data_key(passphrase=self.passphrase)

    @rule(new=st.text(min_size=1, max_size=12))
    def change_passphrase(self, new: str) -> None:
        self.vault.change_passphrase(new)
        self.passphrase = new

    @invariant()
    def same_content(self) -> None:
        assert self.vault.names() == sorted(self.model)
        for name, value in self.model.items():
            assert self.vault.get(name) == value

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


TestVaultModel = VaultModel.TestCase
TestVaultModel.settings = settings(max_examples=15, stateful_step_count=12, deadline=None)
