"""Errors raised by the vault package.

Every failure that leaves ``vault/`` is a :class:`VaultError`; foreign
exceptions (``cryptography``, ``keyring``, OS, SQLite, HTTP) are converted at
the boundary with ``raise ... from e``.

No message built here or by a caller may contain a secret value: messages
name the problem (and at most a secret's *name*), never its bytes.
"""

from __future__ import annotations


class VaultError(Exception):
    """Base class for every error of the vault package."""


class VaultLockedError(VaultError):
    """The vault is locked (never unlocked, locked, or auto-locked after idle)."""


class VaultCorruptError(VaultError):
    """The vault file cannot be decrypted or verified.

    Deliberately opaque: a flipped byte, a truncated file, a moved or swapped
    record, a rolled-back file and a wrong data key all raise this one error
    with the same kind of message, so the error is no oracle about the cause.
    """


class VaultRollbackError(VaultCorruptError):
    """The file is authentic but older than the generation recorded in the keyring.

    A subclass of :class:`VaultCorruptError`, so callers that only care about
    "this file cannot be trusted" need not distinguish it.
    """


class WrongPassphraseError(VaultError):
    """The passphrase does not unwrap the data key.

    Separate from :class:`VaultCorruptError` so the user can be told to retry;
    it carries no further detail (no oracle beyond "wrong passphrase").
    """


class KeyringUnavailableError(VaultError):
    """No usable OS keyring backend, or the keyring refused to answer."""


class KeyringKeyMissingError(KeyringUnavailableError):
    """The keyring works but holds no key for this vault (deleted, other machine)."""


class NoUnlockMethodError(VaultError):
    """The requested unlock method is not enabled for this vault, or none is left."""


class VaultExistsError(VaultError):
    """Creating a vault where a vault file already exists."""


class VaultNotFoundError(VaultError):
    """Opening a vault file that does not exist."""


class VaultSaveError(VaultError):
    """Writing the vault file failed (disk full, permissions); the old file is intact."""


class VaultConflictError(VaultError):
    """The vault file changed on disk since it was unlocked (another process saved it)."""


class PassphraseRequiredError(VaultError):
    """The operation needs the vault's passphrase and none was given."""


class SecretNotFoundError(VaultError):
    """No secret with the requested name is stored in the vault."""


class SecretExistsError(VaultError):
    """Adding a secret under a name that is already taken (use update)."""


class InvalidSecretNameError(VaultError, ValueError):
    """A secret name is empty, too long or contains characters outside the allowed set."""


class InvalidSecretValueError(VaultError, ValueError):
    """A secret value (or a new passphrase) is empty, too large or not bytes."""


class GrantRefused(VaultError):
    """The broker refused to redeem a capability handle.

    Attributes:
        reason: A short human-readable reason (never containing a secret value).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RedactionError(VaultError):
    """Redaction could not run; nothing is returned to the agent (fail closed)."""


class BrokerRequestError(VaultError):
    """The brokered request itself failed: connection, TLS, timeout or a broken response.

    Raised after the scope checks passed (a redemption has used the grant
    once). The message names the host and the kind of failure; any text from
    the transport in it has been redacted, so it never holds a secret.
    """


class AuditLogError(VaultError):
    """The audit log database cannot be opened, read or written."""


class SecretScanError(VaultError):
    """A tool result could not be checked for credentials (the caller withholds it)."""
