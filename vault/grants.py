"""Capability grants and their persistent state.

A :class:`CapabilityGrant` is what the user approved: one secret, one way of
injecting it, methods, an https host (and port), a path pattern, an expiry, a
maximum number of uses and the session it belongs to. :class:`GrantStore`
keeps grants and their mutable state (uses left, revocation) in SQLite
(``keyless.db``) so that the use count is decremented atomically, across
threads and processes, by a single conditional ``UPDATE``.
"""

from __future__ import annotations

import ipaddress
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from vault._sqlite import open_shared_database
from vault.errors import GrantRefused, VaultError
from vault.handle import CapabilityInfo, is_handle, new_handle
from vault.urls import PathPattern, canonical_host

__all__ = [
    "BasicAuthInjection",
    "CapabilityGrant",
    "GrantRecord",
    "GrantStore",
    "HeaderInjection",
    "Injection",
    "QueryInjection",
    "header_injection",
]

_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers whose meaning belongs to the transport, not to a credential.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer"}
)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_TABLE = "capability_grants"


def _has_control(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


class HeaderInjection(BaseModel):
    """Put the secret in a request header: ``header: template.format(secret)``.

    Example: ``HeaderInjection(header="Authorization", template="Bearer {}")``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["header"] = "header"
    header: str
    template: str = "{}"

    @field_validator("header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not _TOKEN_RE.fullmatch(value):
            raise ValueError(f"not a valid HTTP header name: {value!r}")
        if value.lower() in _RESERVED_HEADERS:
            raise ValueError(f"the {value} header cannot carry a secret")
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        rest = value.replace("{}", "", 1)
        if value.count("{}") != 1 or "{" in rest or "}" in rest:
            raise ValueError("a header template holds exactly one '{}' and no other braces")
        if _has_control(value) or not value.isascii():
            raise ValueError("a header template is printable ASCII")
        return value

    def describe(self) -> str:
        """Short human text for the capability description."""
        return f"{self.header} header"


class QueryInjection(BaseModel):
    """Put the secret in a query parameter (replacing any the agent supplied)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["query"] = "query"
    param: str = Field(min_length=1, max_length=200)

    @field_validator("param")
    @classmethod
    def _param(cls, value: str) -> str:
        if _has_control(value) or any(ch in value for ch in "&=#? "):
            raise ValueError(f"not a usable query parameter name: {value!r}")
        return value

    def describe(self) -> str:
        """Short human text for the capability description."""
        return f"query parameter {self.param!r}"


class BasicAuthInjection(BaseModel):
    """HTTP basic auth with a fixed user name and the secret as password."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["basic"] = "basic"
    username: str = Field(max_length=200)

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        if ":" in value or _has_control(value):
            raise ValueError("a basic-auth user name cannot contain ':' or control characters")
        return value

    def describe(self) -> str:
        """Short human text for the capability description."""
        return f"basic auth as {self.username!r}"


Injection = Annotated[
    HeaderInjection | QueryInjection | BasicAuthInjection, Field(discriminator="kind")
]
_INJECTION_ADAPTER: TypeAdapter[HeaderInjection | QueryInjection | BasicAuthInjection] = (
    TypeAdapter(Injection)
)


def header_injection(spec: str) -> HeaderInjection:
    """Parse ``"Authorization: Bearer {}"`` into a :class:`HeaderInjection`.

    Raises:
        ValueError: The text is not ``Name: template``.
    """
    name, sep, template = spec.partition(":")
    if not sep:
        raise ValueError("a header injection reads 'Header-Name: template with {}'")
    return HeaderInjection(header=name.strip(), template=template.strip())


def _aware(value: datetime | None, field: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{field} must be timezone-aware")
    return value


class CapabilityGrant(BaseModel):
    """What the user approved for one secret.

    Attributes:
        secret_name: Name of the vault secret.
        injection: Where the broker puts the secret.
        methods: Allowed HTTP methods (upper case).
        host: The exact host (canonical DNS name; an IP literal only with
            ``allow_local``).
        port: The exact port (443 unless the user approved another).
        path_pattern: Path scope (see :class:`vault.urls.PathPattern`).
        expires_at: End of validity (timezone-aware); None = until the
            session ends (the broker revokes a session's grants then).
        max_uses: Maximum redemptions; None = unlimited.
        session_id: The session the grant belongs to.
        approved_by: Who approved it (user name or "cli", "gui").
        approved_at: When.
        allow_local: Permit loopback and private addresses (local services,
            tests). Public-address checks are skipped only for this grant.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    secret_name: str = Field(min_length=1, max_length=200)
    injection: Injection
    methods: tuple[str, ...] = ("GET",)
    host: str
    port: int = Field(default=443, gt=0, lt=65536)
    path_pattern: str = "/*"
    expires_at: datetime | None = None
    max_uses: int | None = Field(default=None, ge=1)
    session_id: str = Field(min_length=1, max_length=200)
    approved_by: str = Field(min_length=1, max_length=200)
    approved_at: datetime
    allow_local: bool = False

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, list | tuple | set | frozenset):
            raise ValueError("methods is a list of HTTP method names")
        methods = sorted({str(m).strip().upper() for m in value})
        if not methods:
            raise ValueError("a grant allows at least one method")
        unknown = [m for m in methods if m not in KNOWN_METHODS]
        if unknown:
            raise ValueError(f"unknown HTTP method(s): {', '.join(unknown)}")
        return tuple(methods)

    @field_validator("path_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        PathPattern(value)  # raises ValueError with the reason
        return value

    @field_validator("expires_at")
    @classmethod
    def _expires(cls, value: datetime | None) -> datetime | None:
        return _aware(value, "expires_at")

    @field_validator("approved_at")
    @classmethod
    def _approved(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("approved_at must be timezone-aware")
        return value

    @model_validator(mode="after")
    def _host(self) -> CapabilityGrant:
        try:
            literal = ipaddress.ip_address(self.host)
        except ValueError:
            literal = None
        if literal is not None:
            if not self.allow_local:
                raise ValueError("an IP address as host needs allow_local")
            canonical = literal.compressed
        else:
            try:
                canonical = canonical_host(self.host)
            except GrantRefused as e:
                raise ValueError(f"invalid host: {e.reason}") from e
        if canonical != self.host:
            object.__setattr__(self, "host", canonical)
        return self

    @property
    def pattern(self) -> PathPattern:
        """The compiled path pattern."""
        return PathPattern(self.path_pattern)

    def describe(self) -> str:
        """The one-line description the agent receives."""
        netloc = self.host if self.port == 443 else f"{self.host}:{self.port}"
        return (
            f"{','.join(self.methods)} https://{netloc}{self.path_pattern} "
            f"with secret {self.secret_name} as {self.injection.describe()}"
        )


@dataclass(frozen=True)
class GrantRecord:
    """A stored grant with its current state."""

    handle: str
    grant: CapabilityGrant
    uses_left: int | None
    revoked_at: datetime | None
    created_at: datetime

    def info(self) -> CapabilityInfo:
        """What the agent may see of this grant."""
        return CapabilityInfo(
            handle=self.handle,
            description=self.grant.describe(),
            expires_at=self.grant.expires_at,
            uses_left=self.uses_left,
        )

    def refusal(self, now: datetime) -> str | None:
        """Why the grant cannot be redeemed at ``now`` (None if it can)."""
        if self.revoked_at is not None:
            return "revoked: the grant was revoked"
        if self.grant.expires_at is not None and now >= self.grant.expires_at:
            return "expired: the grant expired"
        if self.uses_left is not None and self.uses_left <= 0:
            return "uses: no uses left"
        return None


def _ts(value: datetime) -> float:
    return value.timestamp()


def _now() -> datetime:
    return datetime.now(UTC)


class GrantStore:
    """Grant state in SQLite (table ``capability_grants`` of ``keyless.db``).

    Safe to share between threads; several stores (or processes) on one file
    stay consistent because every state change is one SQL statement.
    """

    _COLUMNS = "handle, grant_json, uses_left, revoked_at, created_at"

    def __init__(self, db_path: Path | str) -> None:
        """Open (and create if needed) the grants table.

        Raises:
            VaultError: The database cannot be opened.
        """
        self.path = Path(db_path)
        self._lock = threading.Lock()
        try:
            _, self._db = open_shared_database(self.path)
            self._db[_TABLE].create(  # type: ignore[union-attr]  # Table, not View
                {
                    "handle": str,
                    "grant_json": str,
                    "session_id": str,
                    "secret_name": str,
                    "expires_at": float,
                    "uses_left": int,
                    "revoked_at": float,
                    "created_at": float,
                },
                pk="handle",
                not_null={"grant_json", "session_id", "secret_name", "created_at"},
                if_not_exists=True,
            )
            self._db[_TABLE].create_index(  # type: ignore[union-attr]
                ["session_id"], if_not_exists=True
            )
        except (sqlite3.Error, OSError) as e:
            raise VaultError(f"cannot open the grants database {self.path}: {e}") from e

    @contextmanager
    def _sql(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db.conn
            except sqlite3.Error as e:
                raise VaultError(f"grants database error: {e}") from e

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.conn.close()

    def add(self, grant: CapabilityGrant, *, now: datetime | None = None) -> GrantRecord:
        """Store a grant under a fresh handle.

        Returns:
            The stored record (``uses_left`` = ``max_uses``).
        """
        created = now or _now()
        handle = new_handle()
        with self._sql() as conn:
            conn.execute(
                f"INSERT INTO {_TABLE} (handle, grant_json, session_id, secret_name, "
                "expires_at, uses_left, revoked_at, created_at) VALUES (?,?,?,?,?,?,NULL,?)",
                (
                    handle,
                    grant.model_dump_json(),
                    grant.session_id,
                    grant.secret_name,
                    None if grant.expires_at is None else _ts(grant.expires_at),
                    grant.max_uses,
                    _ts(created),
                ),
            )
        return GrantRecord(handle, grant, grant.max_uses, None, created)

    def _record(self, row: tuple[object, ...]) -> GrantRecord:
        handle, grant_json, uses_left, revoked_at, created_at = row
        grant = CapabilityGrant.model_validate_json(str(grant_json))
        return GrantRecord(
            handle=str(handle),
            grant=grant,
            uses_left=None if uses_left is None else int(str(uses_left)),
            revoked_at=None
            if revoked_at is None
            else datetime.fromtimestamp(float(str(revoked_at)), UTC),
            created_at=datetime.fromtimestamp(float(str(created_at)), UTC),
        )

    def get(self, handle: str) -> GrantRecord | None:
        """The grant behind ``handle``, or None for an unknown or malformed handle."""
        if not is_handle(handle):
            return None
        with self._sql() as conn:
            row = conn.execute(
                f"SELECT {self._COLUMNS} FROM {_TABLE} WHERE handle = ?", (handle,)
            ).fetchone()
        return None if row is None else self._record(row)

    def for_session(self, session_id: str) -> list[GrantRecord]:
        """Every grant of a session, revoked and expired ones included, oldest first."""
        with self._sql() as conn:
            rows = conn.execute(
                f"SELECT {self._COLUMNS} FROM {_TABLE} WHERE session_id = ? "
                "ORDER BY created_at, handle",
                (session_id,),
            ).fetchall()
        return [self._record(r) for r in rows]

    def all(self) -> list[GrantRecord]:
        """Every stored grant, oldest first."""
        with self._sql() as conn:
            rows = conn.execute(
                f"SELECT {self._COLUMNS} FROM {_TABLE} ORDER BY created_at, handle"
            ).fetchall()
        return [self._record(r) for r in rows]

    def active(self, session_id: str, *, now: datetime | None = None) -> list[GrantRecord]:
        """Grants of a session that can still be redeemed at ``now``."""
        at = now or _now()
        return [r for r in self.for_session(session_id) if r.refusal(at) is None]

    def consume(self, handle: str, *, session_id: str, now: datetime) -> int | None:
        """Use the grant once, atomically, before the call it authorises.

        One conditional ``UPDATE`` checks revocation, expiry, session and the
        remaining count and decrements it, so N racing callers of a grant with
        ``max_uses=k`` get exactly k successes, across threads and processes.

        Returns:
            Uses left after this one (None when unlimited).

        Raises:
            GrantRefused: Unknown handle, other session, revoked, expired or used up.
        """
        if not is_handle(handle):
            raise GrantRefused("handle: unknown capability handle")
        with self._sql() as conn:
            row = conn.execute(
                f"UPDATE {_TABLE} SET uses_left = uses_left - 1 "
                "WHERE handle = ? AND session_id = ? AND revoked_at IS NULL "
                "AND (expires_at IS NULL OR expires_at > ?) "
                "AND (uses_left IS NULL OR uses_left > 0) RETURNING uses_left",
                (handle, session_id, _ts(now)),
            ).fetchone()
        if row is not None:
            return None if row[0] is None else int(row[0])
        record = self.get(handle)
        if record is None or record.grant.session_id != session_id:
            raise GrantRefused("handle: unknown capability handle")
        raise GrantRefused(record.refusal(now) or "uses: no uses left")

    def revoke(self, handle: str, *, now: datetime | None = None) -> bool:
        """Revoke one grant. Returns whether a live grant was revoked."""
        if not is_handle(handle):
            return False
        with self._sql() as conn:
            cur = conn.execute(
                f"UPDATE {_TABLE} SET revoked_at = ? WHERE handle = ? AND revoked_at IS NULL",
                (_ts(now or _now()), handle),
            )
            return cur.rowcount == 1

    def revoke_session(self, session_id: str, *, now: datetime | None = None) -> list[str]:
        """Revoke every live grant of a session. Returns the revoked handles."""
        with self._sql() as conn:
            rows = conn.execute(
                f"UPDATE {_TABLE} SET revoked_at = ? WHERE session_id = ? "
                "AND revoked_at IS NULL RETURNING handle",
                (_ts(now or _now()), session_id),
            ).fetchall()
        return sorted(str(r[0]) for r in rows)
