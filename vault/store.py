"""The encrypted vault file and its life cycle.

A :class:`Vault` is one file (``vault.kls``, format in :mod:`vault._format`).
A random 256-bit *data key* encrypts every record; it is stored only wrapped
under one or two key-encryption keys (the OS keyring's, a passphrase's).
Unlocking unwraps the data key, checks the file's HMAC, decrypts the record
names and compares the file's generation with the one kept in the keyring;
values are decrypted one at a time by :meth:`Vault.get` into a ``bytearray``
the caller zeroes after use.

Every change is written atomically and durably (a 0600 temp file in the same
directory, fsync, rename, fsync of the directory), so a crash at any instant
leaves either the old or the new vault.

Whenever the unlocked vault is created, unlocked or saved, it rewrites the
index of its secrets' fingerprints beside the file (``<vault>.fingerprints``,
:mod:`vault.fingerprints`) at the new generation, so a redactor can withhold
the secrets while the vault is locked, whoever changed them (the GUI,
``keyless vault``). If the index cannot be written the old one stays, older
than the vault, and the locked redactor refuses it (fails closed).

Time is a parameter: every operation takes an optional ``now`` (seconds on
the vault's clock, ``time.monotonic`` by default) and the vault locks itself
when it has been idle for longer than ``idle_timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from vault import _crypto, _format
from vault._crypto import Argon2Params, DecryptionFailed
from vault._format import (
    CORRUPT_MESSAGE,
    ID_SIZE,
    METHOD_KEYRING,
    METHOD_PASSPHRASE,
    NAME_PATTERN,
    SALT_SIZE,
    KeyringSlot,
    PassphraseSlot,
    Record,
    VaultFile,
)
from vault.errors import (
    InvalidSecretNameError,
    InvalidSecretValueError,
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
from vault.fingerprints import SecretFingerprints, index_path
from vault.keystore import (
    DEFAULT_ARGON2,
    KeyStore,
    default_keystore,
    kek_item,
    load_keyring_kek,
    new_keyring_kek,
    passphrase_kek,
    read_generation,
    write_generation,
)

log = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT = 300.0
"""Seconds without use after which an unlocked vault locks itself."""

_MAC_INFO = b"keyless-vault/mac/v1"
_RECORDS_INFO = b"keyless-vault/records/v1"
_DERIVED_INFO = b"keyless-vault/derived/v1/"
AUDIT_CHAIN_INFO = b"keyless audit chain v1"
"""HKDF info of the audit log's chain key (see :meth:`Vault.audit_chain_key`)."""


class _Keys:
    """The unlocked key material; every buffer is zeroed by :meth:`wipe`."""

    def __init__(self, data_key: bytearray, vault_id: bytes) -> None:
        self.data_key = data_key
        self.mac_key = _crypto.hkdf(data_key, salt=vault_id, info=_MAC_INFO)
        self.record_key = _crypto.hkdf(data_key, salt=vault_id, info=_RECORDS_INFO)

    def wipe(self) -> None:
        for buf in (self.data_key, self.mac_key, self.record_key):
            _crypto.zero(buf)

    def __repr__(self) -> str:
        return "_Keys(<hidden>)"


class Vault:
    """An encrypted vault file; create one with :meth:`create` or open one with :meth:`open`.

    The object never holds a decrypted value: :meth:`get` decrypts on demand.
    It is safe to share between threads.
    """

    def __init__(
        self,
        path: Path,
        *,
        keystore: KeyStore,
        idle_timeout: float | None,
        clock: Callable[[], float],
    ) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self._path = Path(path)
        self._keystore = keystore
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._lock = threading.RLock()
        self._raw = b""
        self._file: VaultFile | None = None
        self._keys: _Keys | None = None
        self._names: dict[str, int] = {}
        self._last_used = 0.0
        self._rollback_protected = False

    # ----------------------------------------------------------- construction

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        passphrase: str | bytes | bytearray | None = None,
        use_keyring: bool = True,
        keystore: KeyStore | None = None,
        kdf: Argon2Params | None = None,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        now: float | None = None,
    ) -> Vault:
        """Create a new, empty vault file and return it unlocked.

        Args:
            path: Where to write the vault; must not exist.
            passphrase: Enable the passphrase unlock method with this passphrase.
            use_keyring: Enable the OS keyring unlock method.
            keystore: The keyring to use (default: :func:`~vault.keystore.default_keystore`).
            kdf: Argon2id parameters for the passphrase (default: calibrated constant).
            idle_timeout: Seconds of idleness before auto-lock; ``None`` disables it.
            clock: The clock ``now`` refers to.
            now: The current time on ``clock``.

        Returns:
            The unlocked vault.

        Raises:
            VaultExistsError: ``path`` already exists.
            NoUnlockMethodError: Neither a passphrase nor the keyring was asked for.
            KeyringUnavailableError: ``use_keyring`` but there is no usable keyring
                (the caller decides whether to go on with a passphrase only).
            VaultSaveError: The file could not be written.
        """
        target = Path(path)
        if target.exists():
            raise VaultExistsError(f"a vault already exists at {target}")
        if passphrase is None and not use_keyring:
            raise NoUnlockMethodError("a vault needs a passphrase, the OS keyring, or both")
        store = keystore if keystore is not None else default_keystore()
        vault = cls(target, keystore=store, idle_timeout=idle_timeout, clock=clock)
        vault_id = _crypto.random_bytes(ID_SIZE)
        key_id = _crypto.random_bytes(ID_SIZE)
        data_key = bytearray(_crypto.random_bytes(_crypto.KEY_SIZE))
        keys = _Keys(data_key, vault_id)
        try:
            keyring_slot = (
                _keyring_slot(store, vault_id, key_id, data_key) if use_keyring else None
            )
            passphrase_slot = (
                _passphrase_slot(passphrase, vault_id, key_id, data_key, kdf or DEFAULT_ARGON2)
                if passphrase is not None
                else None
            )
            vf = VaultFile(
                vault_id=vault_id,
                key_id=key_id,
                generation=1,
                keyring=keyring_slot,
                passphrase=passphrase_slot,
                records=(),
            )
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            raw = _serialize(vf, keys)
            with _file_lock(target):
                if target.exists():
                    raise VaultExistsError(f"a vault already exists at {target}")
                _atomic_write(target, raw)
        except BaseException:
            keys.wipe()
            if use_keyring:  # a KEK for a vault that was never written is litter
                with contextlib.suppress(KeyringUnavailableError):
                    store.delete(vault_id, kek_item(key_id))
            raise
        vault._file, vault._raw, vault._keys = vf, raw, keys
        vault._rollback_protected = write_generation(store, vault_id, 1)
        vault._last_used = vault._now(now)
        vault._index_secrets()
        return vault

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        keystore: KeyStore | None = None,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> Vault:
        """Open an existing vault file, locked.

        Args:
            path: The vault file.
            keystore: The keyring to use (default: :func:`~vault.keystore.default_keystore`).
            idle_timeout: Seconds of idleness before auto-lock; ``None`` disables it.
            clock: The clock ``now`` refers to.

        Returns:
            The locked vault; its :attr:`unlock_methods` are known.

        Raises:
            VaultNotFoundError: There is no file at ``path``.
            VaultCorruptError: The file is not a readable vault.
        """
        store = keystore if keystore is not None else default_keystore()
        vault = cls(Path(path), keystore=store, idle_timeout=idle_timeout, clock=clock)
        vault._file, vault._raw = vault._read()[:2]
        return vault

    # ------------------------------------------------------------- properties

    @property
    def path(self) -> Path:
        """The vault file."""
        return self._path

    @property
    def fingerprints_path(self) -> Path:
        """The index of the secrets' fingerprints beside the file (:mod:`vault.fingerprints`)."""
        return index_path(self._path)

    @property
    def vault_id(self) -> str:
        """The vault's random identifier (hex), stable across rotations."""
        return self._current_file().vault_id.hex()

    @property
    def generation(self) -> int:
        """How many times the file was saved; grows by one per save."""
        return self._current_file().generation

    @property
    def unlock_methods(self) -> tuple[str, ...]:
        """The enabled unlock methods: ``"keyring"`` and/or ``"passphrase"``."""
        vf = self._current_file()
        methods = []
        if vf.keyring is not None:
            methods.append(METHOD_KEYRING)
        if vf.passphrase is not None:
            methods.append(METHOD_PASSPHRASE)
        return tuple(methods)

    @property
    def is_locked(self) -> bool:
        """Whether the vault is locked (see also :meth:`lock_if_idle`)."""
        return self._keys is None

    @property
    def rollback_protected(self) -> bool:
        """Whether the last unlock or save compared/recorded the generation in the keyring."""
        return self._rollback_protected

    def __repr__(self) -> str:
        state = "locked" if self._keys is None else f"unlocked, {len(self._names)} secrets"
        return f"Vault(path={str(self._path)!r}, {state})"

    # ---------------------------------------------------------------- locking

    def unlock(
        self,
        passphrase: str | bytes | bytearray | None = None,
        *,
        accept_rollback: bool = False,
        now: float | None = None,
    ) -> None:
        """Unlock with the passphrase, or with the OS keyring when none is given.

        The file is re-read from disk, so changes made by another process are seen.

        Args:
            passphrase: The passphrase; ``None`` uses the keyring.
            accept_rollback: Accept a file older than the generation in the
                keyring (the user restored an old copy on purpose) and record
                its generation as the new reference.
            now: The current time on the vault's clock.

        Raises:
            NoUnlockMethodError: The chosen method is not enabled for this vault.
            WrongPassphraseError: The passphrase does not unwrap the data key.
            KeyringUnavailableError: The keyring cannot be used (or has no key:
                :class:`~vault.errors.KeyringKeyMissingError`).
            VaultCorruptError: The file is damaged, tampered with, or its
                keyring key is wrong.
            VaultRollbackError: The file is older than the keyring's generation.
        """
        with self._lock:
            vf, raw, signed, mac = self._read()
            keys = self._unwrap(vf, passphrase)
            try:
                if not _crypto.mac_equal(_crypto.hmac_sha256(keys.mac_key, signed), mac):
                    raise VaultCorruptError(CORRUPT_MESSAGE)
                names = _decrypt_names(vf, keys)
                self._check_generation(vf, accept_rollback)
            except BaseException:
                keys.wipe()
                raise
            self._wipe()
            self._file, self._raw, self._keys, self._names = vf, raw, keys, names
            self._last_used = self._now(now)
            self._index_secrets()

    def lock(self) -> None:
        """Forget the key material (zeroing it); records stay encrypted in memory."""
        with self._lock:
            self._wipe()

    def lock_if_idle(self, now: float | None = None) -> bool:
        """Lock the vault if it has been idle too long; return whether it is locked."""
        with self._lock:
            if self._keys is not None and self._idle_expired(self._now(now)):
                self._wipe()
            return self._keys is None

    # ---------------------------------------------------------------- secrets

    def names(self, *, now: float | None = None) -> list[str]:
        """The names of the stored secrets, sorted (never their values).

        Raises:
            VaultLockedError: The vault is locked.
        """
        with self._lock:
            self._touch(now)
            return sorted(self._names)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return self._keys is not None and name in self._names

    def get(self, name: str, *, now: float | None = None) -> bytearray:
        """Decrypt one secret. The caller must zero the returned buffer after use.

        Raises:
            VaultLockedError: The vault is locked.
            SecretNotFoundError: No secret has this name.
            VaultCorruptError: The record does not decrypt.
        """
        with self._lock:
            keys, vf = self._touch(now)
            record = vf.records[self._index(name)]
            return _decrypt_value(vf, keys, record, name)

    def add(self, name: str, value: bytes | bytearray, *, now: float | None = None) -> None:
        """Store a new secret.

        Args:
            name: 1-64 characters: letters, digits, ``_``, ``.``, ``-``; starts
                with a letter or digit.
            value: The secret (1 byte to 1 MiB). Not kept: the caller may zero it.
            now: The current time on the vault's clock.

        Raises:
            VaultLockedError: The vault is locked.
            InvalidSecretNameError: The name is not acceptable.
            InvalidSecretValueError: The value is empty or too large.
            SecretExistsError: A secret with this name exists (use :meth:`update`).
            VaultSaveError: The file could not be written (nothing changed).
        """
        with self._lock:
            keys, vf = self._touch(now)
            _check_name(name)
            _check_value(value)
            if name in self._names:
                raise SecretExistsError(f"a secret named {name!r} already exists")
            record = _seal_record(vf, keys, _crypto.random_bytes(ID_SIZE), name, 1, value)
            self._commit(replace(vf, records=(*vf.records, record)))

    def update(self, name: str, value: bytes | bytearray, *, now: float | None = None) -> None:
        """Replace the value of an existing secret (its version grows by one).

        Raises:
            VaultLockedError: The vault is locked.
            SecretNotFoundError: No secret has this name.
            InvalidSecretValueError: The value is empty or too large.
            VaultSaveError: The file could not be written (nothing changed).
        """
        with self._lock:
            keys, vf = self._touch(now)
            index = self._index(name)
            _check_value(value)
            old = vf.records[index]
            record = _seal_record(vf, keys, old.record_id, name, old.version + 1, value)
            records = list(vf.records)
            records[index] = record
            self._commit(replace(vf, records=tuple(records)))

    def delete(self, name: str, *, now: float | None = None) -> None:
        """Delete a secret.

        Raises:
            VaultLockedError: The vault is locked.
            SecretNotFoundError: No secret has this name.
            VaultSaveError: The file could not be written (nothing changed).
        """
        with self._lock:
            keys, vf = self._touch(now)
            index = self._index(name)
            self._commit(replace(vf, records=vf.records[:index] + vf.records[index + 1 :]))

    # ------------------------------------------------------- unlock methods

    def change_passphrase(
        self, new_passphrase: str | bytes | bytearray, *, kdf: Argon2Params | None = None,
        now: float | None = None,
    ) -> None:
        """Set or change the passphrase (re-wraps the data key; records untouched).

        Enables the passphrase method if the vault had only the keyring.

        Raises:
            VaultLockedError: The vault is locked.
            VaultSaveError: The file could not be written (nothing changed).
        """
        with self._lock:
            keys, vf = self._touch(now)
            old_params = vf.passphrase.params if vf.passphrase is not None else None
            slot = _passphrase_slot(
                new_passphrase, vf.vault_id, vf.key_id, keys.data_key,
                kdf or old_params or DEFAULT_ARGON2,
            )
            self._commit(replace(vf, passphrase=slot))

    def remove_passphrase(self, *, now: float | None = None) -> None:
        """Disable the passphrase method (only if the keyring method stays).

        Raises:
            VaultLockedError: The vault is locked.
            NoUnlockMethodError: The keyring is not enabled: no method would be left.
        """
        with self._lock:
            keys, vf = self._touch(now)
            if vf.keyring is None:
                raise NoUnlockMethodError(
                    "cannot remove the passphrase: it is the only way to unlock this vault"
                )
            self._commit(replace(vf, passphrase=None))

    def enable_keyring(self, *, now: float | None = None) -> None:
        """Enable the OS keyring method (a new random KEK is stored in the keyring).

        Raises:
            VaultLockedError: The vault is locked.
            KeyringUnavailableError: There is no usable keyring.
        """
        with self._lock:
            keys, vf = self._touch(now)
            slot = _keyring_slot(self._keystore, vf.vault_id, vf.key_id, keys.data_key)
            self._commit(replace(vf, keyring=slot))

    def disable_keyring(self, *, now: float | None = None) -> None:
        """Disable the OS keyring method and delete its key from the keyring.

        Raises:
            VaultLockedError: The vault is locked.
            NoUnlockMethodError: No passphrase is set: no method would be left.
        """
        with self._lock:
            keys, vf = self._touch(now)
            if vf.passphrase is None:
                raise NoUnlockMethodError(
                    "cannot disable the keyring: set a passphrase first, it is the only way in"
                )
            self._commit(replace(vf, keyring=None))
            with contextlib.suppress(KeyringUnavailableError):
                self._keystore.delete(vf.vault_id, kek_item(vf.key_id))

    def rotate_data_key(
        self, *, passphrase: str | bytes | bytearray | None = None, now: float | None = None
    ) -> None:
        """Replace the data key and re-encrypt every record under it.

        The keyring gets a new KEK; the passphrase slot is re-derived with a
        new salt, so the passphrase must be given when that method is enabled.

        Args:
            passphrase: The current passphrase (required if the vault has one).
            now: The current time on the vault's clock.

        Raises:
            VaultLockedError: The vault is locked.
            PassphraseRequiredError: The vault has a passphrase and none was given.
            WrongPassphraseError: The passphrase given is not the vault's.
            KeyringUnavailableError: The keyring method is enabled but the keyring is unreachable.
            VaultSaveError: The file could not be written (the old key stays valid).
        """
        with self._lock:
            keys, vf = self._touch(now)
            if vf.passphrase is not None:
                if passphrase is None:
                    raise PassphraseRequiredError(
                        "rotating the data key needs the vault's passphrase"
                    )
                self._unwrap(vf, passphrase).wipe()  # proves it is the current passphrase
            new_key_id = _crypto.random_bytes(ID_SIZE)
            new_keys = _Keys(bytearray(_crypto.random_bytes(_crypto.KEY_SIZE)), vf.vault_id)
            try:
                records = tuple(
                    _reseal(vf, keys, record, name, vf.vault_id, new_key_id, new_keys)
                    for name, record in self._named_records(vf)
                )
                new_vf = replace(
                    vf,
                    key_id=new_key_id,
                    records=records,
                    keyring=(
                        _keyring_slot(self._keystore, vf.vault_id, new_key_id, new_keys.data_key)
                        if vf.keyring is not None
                        else None
                    ),
                    passphrase=(
                        _passphrase_slot(
                            passphrase, vf.vault_id, new_key_id, new_keys.data_key,
                            vf.passphrase.params,
                        )
                        if vf.passphrase is not None and passphrase is not None
                        else None
                    ),
                )
                self._commit(new_vf, new_keys)
            except BaseException:
                new_keys.wipe()
                if vf.keyring is not None:
                    with contextlib.suppress(KeyringUnavailableError):
                        self._keystore.delete(vf.vault_id, kek_item(new_key_id))
                raise
            keys.wipe()
            if vf.keyring is not None:
                with contextlib.suppress(KeyringUnavailableError):
                    self._keystore.delete(vf.vault_id, kek_item(vf.key_id))

    def export_backup(
        self,
        path: str | os.PathLike[str],
        passphrase: str | bytes | bytearray,
        *,
        kdf: Argon2Params | None = None,
        now: float | None = None,
    ) -> None:
        """Write an encrypted, self-contained copy of the vault, unlocked by ``passphrase``.

        The backup is an independent vault (new vault id, new data key,
        passphrase method only), so it opens on any machine with
        ``Vault.open(path).unlock(passphrase)``.

        Raises:
            VaultLockedError: The vault is locked.
            VaultExistsError: ``path`` already exists.
            VaultSaveError: The file could not be written.
        """
        with self._lock:
            keys, vf = self._touch(now)
            target = Path(path)
            if target.exists():
                raise VaultExistsError(f"a file already exists at {target}")
            vault_id = _crypto.random_bytes(ID_SIZE)
            key_id = _crypto.random_bytes(ID_SIZE)
            new_keys = _Keys(bytearray(_crypto.random_bytes(_crypto.KEY_SIZE)), vault_id)
            try:
                backup = VaultFile(
                    vault_id=vault_id,
                    key_id=key_id,
                    generation=1,
                    keyring=None,
                    passphrase=_passphrase_slot(
                        passphrase, vault_id, key_id, new_keys.data_key,
                        kdf or (vf.passphrase.params if vf.passphrase else DEFAULT_ARGON2),
                    ),
                    records=tuple(
                        _reseal(vf, keys, record, name, vault_id, key_id, new_keys)
                        for name, record in self._named_records(vf)
                    ),
                )
                raw = _serialize(backup, new_keys)
            finally:
                new_keys.wipe()
            # No lock file next to a backup (it may go to a USB stick): the
            # existence check above is enough for a file nobody else writes.
            _atomic_write(target, raw)

    def derive_key(self, purpose: str, *, now: float | None = None) -> bytearray:
        """A 32-byte key for another component, derived from the data key (zero after use).

        For example the audit log's keyed HMAC of secret values. It changes
        when the data key is rotated.

        Raises:
            VaultLockedError: The vault is locked.
        """
        with self._lock:
            keys, vf = self._touch(now)
            return _crypto.hkdf(
                keys.data_key, salt=vf.vault_id, info=_DERIVED_INFO + purpose.encode("utf-8")
            )

    def audit_chain_key(self, *, now: float | None = None) -> tuple[str, bytearray] | None:
        """The audit log's chain key, or None while the vault is locked.

        HKDF-SHA256 of the data key (salt: the vault id, info:
        :data:`AUDIT_CHAIN_INFO`). Unlike :meth:`derive_key` it does not count
        as use: writing audit entries must not keep an idle vault unlocked.

        Returns:
            ``(data key id in hex, 32-byte key)``; zero the key after use. The
            id names which data key the entries were keyed under, so entries
            written before a rotation are told apart from tampered ones.
        """
        with self._lock:
            if self._keys is None or self._file is None:
                return None
            if self._idle_expired(self._now(now)):
                self._wipe()
                return None
            vf = self._file
            return vf.key_id.hex(), _crypto.hkdf(
                self._keys.data_key, salt=vf.vault_id, info=AUDIT_CHAIN_INFO
            )

    # -------------------------------------------------------------- internals

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _idle_expired(self, now: float) -> bool:
        return self._idle_timeout is not None and now - self._last_used > self._idle_timeout

    def _touch(self, now: float | None) -> tuple[_Keys, VaultFile]:
        t = self._now(now)
        if self._keys is None or self._file is None:
            raise VaultLockedError("the vault is locked")
        if self._idle_expired(t):
            self._wipe()
            raise VaultLockedError(
                f"the vault locked itself after {self._idle_timeout:g} s without use"
            )
        self._last_used = max(self._last_used, t)
        return self._keys, self._file

    def _index(self, name: str) -> int:
        try:
            return self._names[name]
        except KeyError:
            raise SecretNotFoundError(f"no secret named {name!r} in the vault") from None

    def _named_records(self, vf: VaultFile) -> Iterator[tuple[str, Record]]:
        by_index = {index: name for name, index in self._names.items()}
        for index, record in enumerate(vf.records):
            yield by_index[index], record

    def _current_file(self) -> VaultFile:
        if self._file is None:  # pragma: no cover - open/create always set it
            raise VaultLockedError("the vault is not loaded")
        return self._file

    def _wipe(self) -> None:
        if self._keys is not None:
            self._keys.wipe()
        self._keys = None
        self._names = {}

    def _read(self) -> tuple[VaultFile, bytes, bytes, bytes]:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            raise VaultNotFoundError(f"no vault at {self._path}") from None
        except OSError as e:
            raise VaultCorruptError(f"cannot read the vault file {self._path}: {e.strerror}") from e
        vf, signed, mac = _format.parse(raw)
        return vf, raw, signed, mac

    def _unwrap(self, vf: VaultFile, passphrase: str | bytes | bytearray | None) -> _Keys:
        if passphrase is not None:
            pslot = vf.passphrase
            if pslot is None:
                raise NoUnlockMethodError(
                    "this vault has no passphrase: unlock it with the keyring"
                )
            try:
                kek = passphrase_kek(passphrase, pslot.salt, pslot.params)
            except ValueError:
                raise WrongPassphraseError("wrong passphrase") from None
            aad = _format.wrap_aad(
                vf.vault_id, vf.key_id, METHOD_PASSPHRASE, pslot.params.encode() + pslot.salt
            )
            nonce, wrapped = pslot.nonce, pslot.wrapped
            error: VaultError = WrongPassphraseError("wrong passphrase")
        else:
            kslot = vf.keyring
            if kslot is None:
                raise NoUnlockMethodError("this vault is unlocked by its passphrase only")
            kek = load_keyring_kek(self._keystore, vf.vault_id, vf.key_id)
            aad = _format.wrap_aad(vf.vault_id, vf.key_id, METHOD_KEYRING)
            nonce, wrapped = kslot.nonce, kslot.wrapped
            error = VaultCorruptError(CORRUPT_MESSAGE)
        try:
            data_key = _crypto.open_into(kek, nonce, wrapped, aad)
        except DecryptionFailed:
            raise error from None
        finally:
            _crypto.zero(kek)
        if len(data_key) != _crypto.KEY_SIZE:
            _crypto.zero(data_key)
            raise VaultCorruptError(CORRUPT_MESSAGE)
        return _Keys(data_key, vf.vault_id)

    def _check_generation(self, vf: VaultFile, accept_rollback: bool) -> None:
        recorded = read_generation(self._keystore, vf.vault_id)
        if recorded is not None and vf.generation < recorded and not accept_rollback:
            raise VaultRollbackError(
                f"the vault file is older than the last one saved on this machine "
                f"(generation {vf.generation} < {recorded}): it may have been replaced by an "
                f"old copy; unlock with accept_rollback if you restored it on purpose"
            )
        if recorded is None or recorded != vf.generation:
            self._rollback_protected = write_generation(self._keystore, vf.vault_id, vf.generation)
        else:
            self._rollback_protected = True

    def _commit(self, vf: VaultFile, keys: _Keys | None = None) -> None:
        """Save ``vf`` as the next generation; on success it becomes the vault's state."""
        keys = keys or self._keys
        assert keys is not None  # callers hold the unlocked keys
        new = replace(vf, generation=vf.generation + 1)
        raw = _serialize(new, keys)
        names = _decrypt_names(new, keys)
        with _file_lock(self._path):
            try:
                on_disk = self._path.read_bytes()
            except OSError:
                on_disk = b""
            if on_disk != self._raw:
                raise VaultConflictError(
                    "the vault file changed on disk since it was unlocked (another Keyless?): "
                    "lock and unlock it again, then retry"
                )
            _atomic_write(self._path, raw)
            _remove_stale_temp_files(self._path)
        self._file, self._raw, self._names = new, raw, names
        if keys is not self._keys:
            self._keys = keys
        self._rollback_protected = write_generation(self._keystore, new.vault_id, new.generation)
        self._index_secrets()

    def _index_secrets(self) -> None:
        """Rewrite the fingerprints of every secret at the current generation.

        The vault itself is already saved; a failure here leaves the older
        index, which the locked redactor refuses, so it is only logged.
        Written under the vault's file lock, as the next save removes the
        temp files of writers killed mid-save, the index's included.
        """
        keys, vf = self._keys, self._file
        if keys is None or vf is None:  # pragma: no cover - callers hold the keys
            return
        values: list[bytearray] = []
        try:
            for name, record in self._named_records(vf):
                values.append(_decrypt_value(vf, keys, record, name))
            index = SecretFingerprints.build(values, generation=vf.generation)
            with _file_lock(self._path):
                index.save(self.fingerprints_path)
        except VaultError as e:
            log.warning(
                "the secrets' fingerprints were not updated (locked redaction stops): %s", e
            )
        finally:
            for value in values:
                _crypto.zero(value)


# ------------------------------------------------------------------ helpers


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidSecretNameError(
            f"invalid secret name {name!r}: use 1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )


def _check_value(value: bytes | bytearray) -> None:
    if not isinstance(value, bytes | bytearray):
        raise InvalidSecretValueError("a secret value must be bytes or bytearray")
    if not value:
        raise InvalidSecretValueError("a secret value cannot be empty")
    if len(value) > _format.MAX_SECRET_SIZE:
        raise InvalidSecretValueError(
            f"a secret value is limited to {_format.MAX_SECRET_SIZE} bytes (got {len(value)})"
        )


def _serialize(vf: VaultFile, keys: _Keys) -> bytes:
    signed = _format.encode(vf)
    return _format.seal_file(signed, _crypto.hmac_sha256(keys.mac_key, signed))


def _keyring_slot(
    store: KeyStore, vault_id: bytes, key_id: bytes, data_key: bytearray
) -> KeyringSlot:
    kek = new_keyring_kek(store, vault_id, key_id)
    try:
        nonce, wrapped = _crypto.seal(
            kek, data_key, _format.wrap_aad(vault_id, key_id, METHOD_KEYRING)
        )
    finally:
        _crypto.zero(kek)
    return KeyringSlot(nonce=nonce, wrapped=wrapped)


def _passphrase_slot(
    passphrase: str | bytes | bytearray,
    vault_id: bytes,
    key_id: bytes,
    data_key: bytearray,
    params: Argon2Params,
) -> PassphraseSlot:
    salt = _crypto.random_bytes(SALT_SIZE)
    try:
        kek = passphrase_kek(passphrase, salt, params)
    except ValueError as e:
        raise InvalidSecretValueError("the passphrase cannot be empty") from e
    try:
        nonce, wrapped = _crypto.seal(
            kek,
            data_key,
            _format.wrap_aad(vault_id, key_id, METHOD_PASSPHRASE, params.encode() + salt),
        )
    finally:
        _crypto.zero(kek)
    return PassphraseSlot(salt=salt, params=params, nonce=nonce, wrapped=wrapped)


def _seal_record(
    vf: VaultFile, keys: _Keys, record_id: bytes, name: str, version: int, value: bytes | bytearray
) -> Record:
    name_nonce, name_sealed = _crypto.seal(
        keys.record_key,
        _format.pad_name(name),
        _format.name_aad(vf.vault_id, vf.key_id, record_id, version),
    )
    nonce, sealed = _crypto.seal(
        keys.record_key, value, _format.record_aad(vf.vault_id, vf.key_id, record_id, name, version)
    )
    return Record(
        record_id=record_id,
        version=version,
        name_nonce=name_nonce,
        name_sealed=name_sealed,
        nonce=nonce,
        sealed=sealed,
    )


def _reseal(
    vf: VaultFile,
    keys: _Keys,
    record: Record,
    name: str,
    vault_id: bytes,
    key_id: bytes,
    new_keys: _Keys,
) -> Record:
    value = _decrypt_value(vf, keys, record, name)
    try:
        target = replace(vf, vault_id=vault_id, key_id=key_id)
        return _seal_record(target, new_keys, record.record_id, name, record.version, value)
    finally:
        _crypto.zero(value)


def _decrypt_names(vf: VaultFile, keys: _Keys) -> dict[str, int]:
    names: dict[str, int] = {}
    for index, record in enumerate(vf.records):
        try:
            padded = _crypto.open_into(
                keys.record_key,
                record.name_nonce,
                record.name_sealed,
                _format.name_aad(vf.vault_id, vf.key_id, record.record_id, record.version),
            )
            try:
                name = _format.unpad_name(padded)
            finally:
                _crypto.zero(padded)
        except (DecryptionFailed, ValueError):
            raise VaultCorruptError(CORRUPT_MESSAGE) from None
        if name in names:
            raise VaultCorruptError(CORRUPT_MESSAGE)
        names[name] = index
    return names


def _decrypt_value(vf: VaultFile, keys: _Keys, record: Record, name: str) -> bytearray:
    try:
        return _crypto.open_into(
            keys.record_key,
            record.nonce,
            record.sealed,
            _format.record_aad(vf.vault_id, vf.key_id, record.record_id, name, record.version),
        )
    except DecryptionFailed:
        raise VaultCorruptError(CORRUPT_MESSAGE) from None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise writers of one vault file across processes (advisory ``flock``)."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise VaultSaveError(f"cannot lock the vault file {path}: {e.strerror}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{_crypto.random_bytes(6).hex()}.tmp")


def _remove_stale_temp_files(path: Path) -> None:
    """Delete temp files left by a writer that was killed mid-save.

    Called with the file lock held, so no live writer owns any of them.
    """
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    A 0600 temp file in the same directory is written and fsynced, renamed
    over the target, and the directory is fsynced so the rename itself
    survives a power cut. On any failure the temp file is removed and the old
    file is untouched.

    Raises:
        VaultSaveError: Writing failed (disk full, permissions, ...).
    """
    directory = path.parent
    tmp = _temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        reason = e.strerror or errno.errorcode.get(e.errno or 0, type(e).__name__)
        raise VaultSaveError(f"could not save the vault to {path}: {reason}") from e
    # The rename has happened: the new vault is the vault. A directory that
    # cannot be fsynced (some filesystems refuse) must not turn that into an
    # error that makes the caller roll back key material.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
