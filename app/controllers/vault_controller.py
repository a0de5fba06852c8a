"""The vault screen's controller: setup, unlock, secrets and grants.

Every vault, grant and audit operation runs on the controller's one worker
thread (:class:`app.controllers.jobs.SerialWorker`); the view hears about the
outcome through the signals below and never touches a :class:`vault.store.Vault`
itself. Secret values travel as ``bytearray`` and are zeroed here as soon as the
vault has taken them.
"""

from __future__ import annotations

import secrets as _secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from app.controllers.jobs import WorkerController
from app.qt import QObject, QTimer, Signal

if TYPE_CHECKING:
    from vault._crypto import Argon2Params
    from vault.broker import Broker
    from vault.grants import CapabilityGrant, GrantRecord, GrantStore
    from vault.keystore import KeyStore
    from vault.store import Vault

VaultState = Literal["missing", "locked", "unlocked"]


@dataclass(frozen=True)
class GrantRow:
    """What the vault screen shows of one capability grant (never the secret)."""

    handle: str
    secret_name: str
    description: str
    methods: tuple[str, ...]
    host: str
    path_pattern: str
    expires_at: datetime | None
    uses_left: int | None
    max_uses: int | None
    session_id: str
    revoked: bool

    def expired(self, now: datetime) -> bool:
        """Whether the grant's expiry is past at ``now``."""
        return self.expires_at is not None and self.expires_at <= now


InjectionKind = Literal["header", "query", "basic"]


@dataclass(frozen=True)
class GrantRequest:
    """The scopes the user chose in the grant editor.

    ``injection_detail`` is ``"Header: template with {}"`` for a header, the
    parameter name for a query parameter, the user name for basic auth.
    """

    secret_name: str
    injection_kind: InjectionKind
    injection_detail: str
    methods: tuple[str, ...]
    host: str
    path_pattern: str
    expires_at: datetime | None
    max_uses: int | None
    port: int = 443
    allow_local: bool = False


def build_grant(
    request: GrantRequest, *, session_id: str, approved_by: str, now: datetime
) -> CapabilityGrant:
    """Turn the editor's request into a validated :class:`vault.grants.CapabilityGrant`.

    Raises:
        ValueError: A scope is invalid; the message says which and why.
    """
    from pydantic import ValidationError

    from vault import grants

    try:
        injection: grants.HeaderInjection | grants.QueryInjection | grants.BasicAuthInjection
        if request.injection_kind == "header":
            injection = grants.header_injection(request.injection_detail)
        elif request.injection_kind == "query":
            injection = grants.QueryInjection(param=request.injection_detail)
        else:
            injection = grants.BasicAuthInjection(username=request.injection_detail)
        return grants.CapabilityGrant(
            secret_name=request.secret_name,
            injection=injection,
            methods=request.methods,
            host=request.host,
            port=request.port,
            path_pattern=request.path_pattern,
            expires_at=request.expires_at,
            max_uses=request.max_uses,
            session_id=session_id,
            approved_by=approved_by,
            approved_at=now,
            allow_local=request.allow_local,
        )
    except ValidationError as e:
        raise ValueError(validation_message(e)) from e


def validation_message(error: Exception) -> str:
    """The first problem pydantic found, as ``field: reason``."""
    from pydantic import ValidationError

    if not isinstance(error, ValidationError) or not error.errors():
        return str(error)
    first = error.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if not isinstance(p, int))
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def zero(buffer: bytearray) -> None:
    """Overwrite a secret buffer in place (as far as Python allows)."""
    for i in range(len(buffer)):
        buffer[i] = 0


def detect_keyring(keystore: KeyStore | None = None) -> bool:
    """Whether a usable OS keyring backend exists (Secret Service, Keychain, ...)."""
    from vault.keystore import default_keystore

    return bool((keystore or default_keystore()).available())


def describe_error(error: Exception) -> str:
    """Turn a vault exception into a sentence for the user (no secret in it)."""
    from vault import errors

    match error:
        case errors.WrongPassphraseError():
            return "Wrong passphrase. Try again."
        case errors.VaultRollbackError():
            return (
                "The vault file is older than the last one this keyring saw "
                "(restored or rolled back); it was not opened."
            )
        case errors.VaultCorruptError():
            return "The vault file cannot be decrypted or verified; it was left untouched."
        case errors.KeyringKeyMissingError():
            return "The keyring holds no key for this vault. Unlock with the passphrase."
        case errors.KeyringUnavailableError():
            return "The OS keyring is not available. Unlock with the passphrase."
        case errors.VaultLockedError():
            return "The vault is locked. Unlock it first."
        case errors.SecretExistsError():
            return f"A secret with that name already exists ({error})."
        case errors.SecretNotFoundError():
            return f"No such secret ({error})."
        case errors.VaultConflictError():
            return "The vault file was changed by another program; unlock again to reload it."
        case errors.VaultSaveError():
            return f"The vault could not be saved; the old file is intact ({error})."
        case errors.NoUnlockMethodError():
            return f"That unlock method is not enabled for this vault ({error})."
        case errors.GrantRefused():
            return f"Grant refused: {error.reason}"
        case errors.VaultError():
            return str(error) or type(error).__name__
        case OSError():
            return f"Cannot access the vault file: {error.strerror or error}"
        case ValueError():
            return str(error)
    return f"Unexpected error ({type(error).__name__}): {error}"


class VaultController(WorkerController):
    """Drives the vault: first-run setup, unlock/lock, secrets and grants.

    Signals:
        state_changed: ``"missing"``, ``"locked"`` or ``"unlocked"``.
        names_changed: The sorted secret names (never values).
        grants_changed: A list of :class:`GrantRow`.
        secret_revealed: ``(name, value: bytearray)`` on an explicit reveal; the
            receiver owns the buffer and must zero it.
        grant_created: The new grant's handle.
        vault_opened: The :class:`vault.store.Vault` each time it becomes
            unlocked, for the host to share with the errands' broker (the
            object is thread-safe).
        error: A sentence for the user.
        busy_changed: Whether work is in flight.
    """

    state_changed = Signal(str)
    names_changed = Signal(list)
    grants_changed = Signal(list)
    secret_revealed = Signal(str, object)
    grant_created = Signal(str)
    vault_opened = Signal(object)
    error = Signal(str)

    def __init__(
        self,
        vault_path: Path,
        db_path: Path,
        *,
        keyring_available: bool | None = None,
        session_id: str | None = None,
        auto_lock_minutes: float = 10,
        vault: Vault | None = None,
        keystore: KeyStore | None = None,
        kdf: Argon2Params | None = None,
        parent: QObject | None = None,
    ) -> None:
        """Prepare the controller; nothing is read until :meth:`refresh`.

        Args:
            vault_path: The vault file (created on first-run setup).
            db_path: ``keyless.db`` (grants and audit log).
            keyring_available: Whether an OS keyring exists; detected when None.
            session_id: The session new grants belong to.
            auto_lock_minutes: Lock after this long without a vault operation.
            vault: An opened vault to drive (shared with the errands' broker);
                when None the controller opens ``vault_path`` itself.
            keystore: The keyring the vault uses (default: the OS keyring).
            kdf: Argon2id parameters for a new passphrase (default: the vault's).
            parent: The Qt parent.
        """
        super().__init__(parent)
        self._keystore = keystore
        self._kdf = kdf
        self._auto_lock_minutes = auto_lock_minutes
        self._vault_path = Path(vault_path)
        self._db_path = Path(db_path)
        self._keyring_available = keyring_available
        self._session_id = session_id or "user-" + _secrets.token_hex(8)
        self._state: VaultState = "missing"
        # Owned by the worker thread: created, used and dropped only there.
        self._vault: Vault | None = vault
        self._broker: Broker | None = None
        self._grants: GrantStore | None = None
        self._methods: tuple[str, ...] = ()
        self._idle = QTimer(self)
        self._idle.setSingleShot(True)
        self._idle.timeout.connect(self._idle_check)
        self.set_auto_lock_minutes(auto_lock_minutes)

    # -- properties -----------------------------------------------------------------

    @property
    def state(self) -> VaultState:
        """The last state reported through :attr:`state_changed`."""
        return self._state

    @property
    def keyring_available(self) -> bool:
        """Whether an OS keyring can hold the vault key (detected once if not given)."""
        if self._keyring_available is None:
            self._keyring_available = detect_keyring(self._keystore)
        return self._keyring_available

    @property
    def unlock_methods(self) -> tuple[str, ...]:
        """The vault's enabled unlock methods (``keyring``, ``passphrase``), once known."""
        return self._methods

    @property
    def auto_lock_minutes(self) -> float:
        """Minutes without a vault operation before the vault locks itself."""
        return self._auto_lock_minutes

    @property
    def session_id(self) -> str:
        """The session new grants belong to."""
        return self._session_id

    @property
    def vault_path(self) -> Path:
        """The vault file."""
        return self._vault_path

    def set_session_id(self, session_id: str) -> None:
        """Make new grants belong to ``session_id`` and list that session's grants."""
        self._session_id = session_id
        if self._state == "unlocked":
            self.refresh_grants()

    def set_auto_lock_minutes(self, minutes: float) -> None:
        """Lock the vault after ``minutes`` without a vault operation."""
        self._auto_lock_minutes = max(minutes, 0.001)
        self._idle.setInterval(max(100, int(self._auto_lock_minutes * 60_000)))

    # -- actions --------------------------------------------------------------------

    def refresh(self) -> None:
        """Find out whether a vault exists and whether it is unlocked."""
        self._run(self._do_refresh, self._report_state)

    def create(self, *, use_keyring: bool, passphrase: bytearray | None) -> None:
        """Create the vault (first run) and leave it unlocked.

        Args:
            use_keyring: Keep the key-encryption key in the OS keyring.
            passphrase: Also (or only) unlock with this passphrase; zeroed after use.
        """
        if not use_keyring and not passphrase:
            self.error.emit("Choose a passphrase or the OS keyring to protect the vault.")
            return

        def work() -> VaultState:
            from vault.store import Vault

            try:
                self._vault = Vault.create(
                    self._vault_path,
                    passphrase=passphrase or None,
                    use_keyring=use_keyring,
                    keystore=self._keystore,
                    kdf=self._kdf,
                    idle_timeout=self._auto_lock_minutes * 60.0,
                )
            finally:
                if passphrase is not None:
                    zero(passphrase)
            return self._after_unlock()

        self._run(work, self._report_state)

    def unlock(self, passphrase: bytearray | None = None) -> None:
        """Unlock with the passphrase, or with the keyring when ``passphrase`` is None."""

        def work() -> VaultState:
            vault = self._open()
            try:
                vault.unlock(passphrase or None)
            finally:
                if passphrase is not None:
                    zero(passphrase)
            return self._after_unlock()

        self._run(work, self._report_state)

    def lock(self) -> None:
        """Lock the vault: the data key is dropped from memory."""
        self._idle.stop()

        def work() -> VaultState:
            if self._vault is not None:
                self._vault.lock()
            self._broker = None
            return "locked" if self._vault_path.exists() else "missing"

        self._run(work, self._report_state)

    def _idle_check(self) -> None:
        """Lock when the vault itself says it has been idle long enough.

        The vault may be shared with the errands' broker, whose use does not
        pass through this controller; the vault's own clock has the last word.
        """

        def work() -> VaultState | None:
            vault = self._vault
            if vault is None or vault.is_locked:
                return None
            if vault.lock_if_idle():
                self._broker = None
                return "locked"
            return None

        def done(state: VaultState | None) -> None:
            if state is not None:
                self._report_state(state)
            elif self._state == "unlocked":
                self._idle.start()

        self._worker.submit(work, done, self._report_error)

    def add_secret(self, name: str, value: bytearray) -> None:
        """Store a new secret; ``value`` is zeroed once stored."""
        self._secret_op(lambda v: v.add(name, value), value)

    def update_secret(self, name: str, value: bytearray) -> None:
        """Replace a secret's value; ``value`` is zeroed once stored."""
        self._secret_op(lambda v: v.update(name, value), value)

    def delete_secret(self, name: str) -> None:
        """Delete a secret (its grants stop working: the broker finds no secret)."""
        self._secret_op(lambda v: v.delete(name), None)

    def reveal(self, name: str) -> None:
        """Fetch one value for display; emitted through :attr:`secret_revealed`."""

        def work() -> tuple[str, bytearray]:
            vault = self._unlocked()
            return name, vault.get(name)

        def done(result: tuple[str, bytearray]) -> None:
            self.secret_revealed.emit(*result)

        self._touch()
        self._worker.submit(work, done, self._report_error)

    def create_grant(self, request: GrantRequest) -> None:
        """Grant the agent one capability over a secret, for this session."""
        session_id = self._session_id

        def work() -> str:
            grant = build_grant(
                request, session_id=session_id, approved_by="gui", now=datetime.now(UTC)
            )
            info = self._get_broker().grant(grant)
            return str(info.handle)

        def done(handle: str) -> None:
            self.grant_created.emit(handle)
            self.refresh_grants()

        self._touch()
        self._worker.submit(work, done, self._report_error)

    def revoke_grant(self, handle: str) -> None:
        """Revoke a grant; the handle is useless from now on."""

        def work() -> None:
            self._get_broker().revoke(handle)

        self._touch()
        self._worker.submit(work, lambda _: self.refresh_grants(), self._report_error)

    def refresh_grants(self) -> None:
        """Reload the grants with their remaining uses and expiry."""
        self._worker.submit(self._list_grants, self.grants_changed.emit, self._report_error)

    # -- worker-thread helpers ---------------------------------------------------------

    def _open(self) -> Vault:
        if self._vault is None:
            from vault.store import Vault

            self._vault = Vault.open(
                self._vault_path,
                keystore=self._keystore,
                idle_timeout=self._auto_lock_minutes * 60.0,
            )
        return self._vault

    def _unlocked(self) -> Vault:
        from vault.errors import VaultLockedError

        vault = self._open()
        if vault.is_locked:
            raise VaultLockedError("the vault is locked")
        return vault

    def _get_broker(self) -> Broker:
        if self._broker is None:
            from vault.audit import AuditLog
            from vault.broker import Broker

            vault = self._unlocked()
            from vault.keystore import default_keystore

            keystore = self._keystore if self._keystore is not None else default_keystore()
            audit = AuditLog(self._db_path, vault=vault, keystore=keystore)
            self._broker = Broker(vault, self._grant_store(), audit)
        return self._broker

    def _do_refresh(self) -> VaultState:
        if self._vault is None and not self._vault_path.exists():
            return "missing"
        vault = self._open()
        self._methods = vault.unlock_methods
        return "locked" if vault.is_locked else "unlocked"

    def _after_unlock(self) -> VaultState:
        if self._vault is not None:
            self._methods = self._vault.unlock_methods
        return "unlocked"

    def _list_grants(self) -> list[GrantRow]:
        rows = [_grant_row(g) for g in self._grant_store().all()]
        rows.reverse()  # newest first
        return rows

    def _grant_store(self) -> GrantStore:
        if self._grants is None:
            from vault.grants import GrantStore

            self._grants = GrantStore(self._db_path)
        return self._grants

    # -- GUI-thread plumbing -------------------------------------------------------------

    def _run(self, work: Callable[[], VaultState], done: Callable[[VaultState], None]) -> None:
        self._worker.submit(work, done, self._report_error)

    def _secret_op(self, op: Callable[[Vault], Any], value: bytearray | None) -> None:
        def work() -> list[str]:
            try:
                vault = self._unlocked()
                op(vault)
                return sorted(vault.names())
            finally:
                if value is not None:
                    zero(value)

        self._touch()
        self._worker.submit(work, self.names_changed.emit, self._report_error)

    def _touch(self) -> None:
        if self._state == "unlocked":
            self._idle.start()

    def _report_state(self, state: VaultState) -> None:
        self._state = state
        self.state_changed.emit(state)
        if state == "unlocked":
            self._idle.start()
            self.vault_opened.emit(self._vault)
            self._worker.submit(
                lambda: sorted(self._unlocked().names()),
                self.names_changed.emit,
                self._report_error,
            )
            self.refresh_grants()
        else:
            self._idle.stop()
            self.names_changed.emit([])
            self.grants_changed.emit([])

    def _report_error(self, error: Exception) -> None:
        self.error.emit(describe_error(error))


def _grant_row(record: GrantRecord) -> GrantRow:
    """Build the display row of one stored grant (never the secret)."""
    grant = record.grant
    host = grant.host if grant.port == 443 else f"{grant.host}:{grant.port}"
    return GrantRow(
        handle=record.handle,
        secret_name=grant.secret_name,
        description=grant.describe(),
        methods=tuple(grant.methods),
        host=host,
        path_pattern=grant.path_pattern,
        expires_at=grant.expires_at,
        uses_left=record.uses_left,
        max_uses=grant.max_uses,
        session_id=grant.session_id,
        revoked=record.revoked_at is not None,
    )
