"""The secret broker: redeems capability handles at the moment of a call.

The broker is the only code that reads a secret out of the vault for the
network. For a call with a handle it:

1. canonicalises the URL and checks every scope of the grant (session,
   revocation, expiry, method, scheme, host, port, path), then resolves the
   host and refuses it if *any* of its addresses is private, loopback or
   link-local (unless the grant allows local hosts; link-local never);
2. uses the grant once, atomically, *before* the call;
3. strips every auth-like header the agent supplied and injects the secret
   only where the grant says;
4. connects only to the addresses it checked, in order (the URL's host is
   replaced by the address; the name still goes in ``Host`` and in TLS SNI
   and certificate verification), so a DNS answer that changes between check
   and connect cannot redirect the request; every request says
   ``Connection: close`` so no TLS connection is reused for another name;
5. does not follow redirects on its own: each hop is re-checked against the
   grant (another host, path or method is refused and the secret is not sent);
6. streams the response, stops at a size limit, and redacts every form of
   the secret from the body and headers, across chunk boundaries.

Every grant, redemption, refusal, failed request and revocation is recorded
in the audit log; secret values never reach it.
"""

from __future__ import annotations

import base64
import codecs
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urljoin

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from vault.audit import AuditLog
from vault.errors import (
    BrokerRequestError,
    GrantRefused,
    RedactionError,
    SecretNotFoundError,
    VaultError,
    VaultLockedError,
)
from vault.fingerprints import SecretFingerprints, WithholdingRedactor, index_path
from vault.grants import (
    KNOWN_METHODS,
    BasicAuthInjection,
    CapabilityGrant,
    GrantRecord,
    GrantStore,
    HeaderInjection,
    QueryInjection,
)
from vault.handle import CapabilityInfo, is_handle
from vault.redact import Redactor, StreamRedactor
from vault.urls import (
    CanonicalURL,
    IPAddress,
    Resolver,
    canonicalize,
    check_addresses,
    resolve,
    system_resolver,
    with_query_param,
)

__all__ = [
    "Broker",
    "BrokeredResponse",
    "HttpCall",
    "SecretSource",
    "is_auth_header",
]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers the agent may never set: credentials and what the transport owns.
_AUTH_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "cookie2",
        "x-api-key",
        "api-key",
        "apikey",
        "x-auth-token",
        "x-access-token",
        "x-csrf-token",
        "x-xsrf-token",
    }
)
_AUTH_PARTS = ("auth", "token", "cookie", "secret", "passw", "api-key", "apikey", "api_key",
               "session", "credential", "signature", "bearer")
_TRANSPORT_HEADERS = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "content-length",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
        "expect",
        # Would let a server run another method or path than the one checked.
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-rewrite-url",
        "x-override-url",
    }
)


def is_auth_header(name: str) -> bool:
    """Whether a request header name looks like it carries a credential."""
    lower = name.lower()
    return lower in _AUTH_HEADERS or any(part in lower for part in _AUTH_PARTS)


@runtime_checkable
class SecretSource(Protocol):
    """Where the broker reads secrets from; ``vault.store.Vault`` satisfies it."""

    def get(self, name: str) -> bytearray:
        """The secret's value (a fresh copy the caller may zero).

        Raises:
            VaultLockedError: The vault is locked.
            SecretNotFoundError: No such secret.
        """
        ...

    def names(self) -> list[str]:
        """Names of the stored secrets."""
        ...


class HttpCall(BaseModel):
    """The request the agent asked for, before the broker touches it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str = "GET"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | bytes | None = None

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if not _TOKEN_RE.fullmatch(value):
            raise ValueError(f"not an HTTP method: {value!r}")
        return value.upper()


class BrokeredResponse(BaseModel):
    """What goes back to the agent: redacted and size-limited.

    Attributes:
        status: HTTP status of the last hop.
        headers: Response headers, lower-case names, redacted.
        body: Body text (decoded with the response's charset, UTF-8 by
            default), NUL characters dropped, redacted, at most the broker's
            size limit.
        truncated: The body was cut at the size limit (the last few
            characters before the cut are dropped too, since they could hold
            the incomplete start of a secret).
        redacted: Names of the secrets that were found and replaced.
        url: Canonical URL of the last hop, without injected secrets.
    """

    model_config = ConfigDict(frozen=True)

    status: int
    headers: dict[str, str]
    body: str
    truncated: bool
    redacted: list[str]
    url: str


@dataclass
class _Hop:
    """One request on the way to the final response."""

    method: str
    url: CanonicalURL
    body: bytes | None


@dataclass
class EgressRedemption:
    """A redeemed handle for the egress proxy: where the secret goes, and the secret.

    The caller zeroes ``secret`` once it is injected.
    """

    secret_name: str
    injection: HeaderInjection | QueryInjection | BasicAuthInjection
    secret: bytearray
    addresses: list[IPAddress]

    def __repr__(self) -> str:
        return f"EgressRedemption(secret_name={self.secret_name!r})"


def _zero(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))


def _check_injectable(
    injection: HeaderInjection | QueryInjection | BasicAuthInjection, secret: bytearray
) -> None:
    """Refuse, before the grant is used, a secret that cannot go where the grant says."""
    if isinstance(injection, QueryInjection):
        if _utf8(secret) is None:
            raise _refused("injection: the secret is not text and cannot go in a query")
    elif any(b < 0x20 and b != 0x09 or b == 0x7F for b in secret):
        raise _refused("injection: the secret holds control bytes and cannot go in a header")


def _utf8(value: bytearray) -> str | None:
    # The UnicodeDecodeError would hold the secret's bytes: never let it escape.
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return None


_ASCII = bytes(range(128))


def _body_encoding(charset: str | None) -> str:
    """The response's charset if it is ASCII-compatible, else UTF-8.

    The server chooses the charset. Under one that is not a superset of ASCII
    (UTF-16, UTF-7, EBCDIC) an echoed secret decodes to text no redaction
    pattern matches, and the agent re-encodes it: such bodies are read as UTF-8.
    A secret the server encoded in UTF-16 or UTF-32 then reads as the secret
    with NULs between its characters, so :meth:`Broker._read` drops NULs.
    """
    if not charset:
        return "utf-8"
    try:
        if _ASCII.decode(charset) == _ASCII.decode("ascii"):
            return codecs.lookup(charset).name
    except (LookupError, UnicodeError, ValueError):  # unknown or not a text codec
        pass
    return "utf-8"


def _without_nul(text: str) -> str:
    """``text`` without NUL characters, which no text body needs and which hide a secret."""
    return text.replace("\x00", "")


def _now() -> datetime:
    return datetime.now(UTC)


def _refused(reason: str) -> GrantRefused:
    return GrantRefused(reason)


class Broker:
    """Redeems capability handles; the only path from a secret to the network."""

    def __init__(
        self,
        vault: SecretSource,
        grants: GrantStore,
        audit: AuditLog,
        *,
        transport: httpx.BaseTransport | None = None,
        resolver: Resolver = system_resolver,
        local_hosts: Iterable[str] = (),
        canaries: Iterable[str] = (),
        max_response_bytes: int = 1 << 20,
        max_request_bytes: int = 8 << 20,
        max_redirects: int = 5,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        fingerprints: Path | None = None,
    ) -> None:
        """Create a broker.

        Args:
            vault: Secret source (the unlocked :class:`vault.store.Vault`).
            grants: Grant state.
            audit: Audit log.
            transport: httpx transport (tests pass one trusting their CA).
                Whatever it is, the broker sends ``Connection: close`` so a
                TLS connection is never reused for another host name.
            resolver: DNS resolution used for the address checks and pinning.
            local_hosts: Hosts that calls *without* a handle may reach on
                loopback or private addresses, on any port (e.g. a local
                service the user trusts). Grants say so with ``allow_local``.
            canaries: Extra strings :meth:`scan` reports as ``canary``.
            max_response_bytes: Body size limit (decoded bytes).
            max_request_bytes: Request body size limit.
            max_redirects: Redirect hops followed at most.
            timeout: Seconds allowed for each network step (connect, each
                read) and, in total, for reading one response body, so a server
                trickling bytes cannot hold the call forever.
            clock: Monotonic seconds, for that total deadline.
            fingerprints: Where the locked redactor's index of the secrets
                lives (:mod:`vault.fingerprints`); default: beside the vault
                file (``<vault>.fingerprints``), or none for a source without
                a ``path``.
        """
        self._vault = vault
        if fingerprints is None:
            vault_path = getattr(vault, "path", None)
            if isinstance(vault_path, Path):
                fingerprints = index_path(vault_path)
        self._fingerprints_path = fingerprints
        self._indexed_generation: int | None = None
        # The last index loaded and its file's (inode, mtime, size): a long
        # secret's index runs to megabytes, and a locked errand redacts often.
        self._loaded_index: tuple[tuple[int, int, int], SecretFingerprints] | None = None
        self._grants = grants
        self._audit = audit
        self._resolver = resolver
        self._local_hosts = frozenset(h.lower().rstrip(".") for h in local_hosts)
        self._canaries = [c for c in canaries if c]
        self.max_response_bytes = max_response_bytes
        self.max_request_bytes = max_request_bytes
        self.max_redirects = max_redirects
        self.timeout = timeout
        self._clock = clock
        self._client = httpx.Client(
            transport=transport
            or httpx.HTTPTransport(retries=0, limits=httpx.Limits(max_keepalive_connections=0)),
            follow_redirects=False,
            trust_env=False,  # no proxy or CA from the environment
            timeout=timeout,
        )

    # ------------------------------------------------------------------ grants

    def grant(self, grant: CapabilityGrant, *, now: datetime | None = None) -> CapabilityInfo:
        """Store a grant the user approved and return what the agent may see.

        Raises:
            SecretNotFoundError: The vault has no such secret.
            VaultLockedError: The vault is locked.
        """
        if grant.secret_name not in self._vault.names():
            raise SecretNotFoundError(f"no secret named {grant.secret_name!r} in the vault")
        record = self._grants.add(grant, now=now)
        self._audit.record(
            "grant",
            session_id=grant.session_id,
            decision="allow",
            details={
                "handle": record.handle,
                "secret": grant.secret_name,
                "description": grant.describe(),
                "expires_at": None if grant.expires_at is None else grant.expires_at.isoformat(),
                "max_uses": grant.max_uses,
                "approved_by": grant.approved_by,
                "approved_at": grant.approved_at.isoformat(),
                "allow_local": grant.allow_local,
            },
            now=now,
        )
        return record.info()

    def revoke(self, handle: str, *, now: datetime | None = None) -> bool:
        """Revoke one grant; returns whether a live grant was revoked."""
        done = self._grants.revoke(handle, now=now)
        record = self._grants.get(handle)
        self._audit.record(
            "revoke",
            session_id=None if record is None else record.grant.session_id,
            details={"handle": handle if is_handle(handle) else "(malformed)", "revoked": done},
            now=now,
        )
        return done

    def end_session(self, session_id: str, *, now: datetime | None = None) -> list[str]:
        """Revoke every live grant of a session (grants expire with their session)."""
        handles = self._grants.revoke_session(session_id, now=now)
        self._audit.record(
            "revoke", session_id=session_id, details={"handles": handles, "session_end": True},
            now=now,
        )
        return handles

    revoke_session = end_session

    def capabilities(self, session_id: str, *, now: datetime | None = None) -> list[CapabilityInfo]:
        """What the agent of ``session_id`` may currently use."""
        return [r.info() for r in self._grants.active(session_id, now=now)]

    def check_capabilities_usable(self, session_id: str, *, now: datetime | None = None) -> None:
        """Refuse a session whose grants cannot be redeemed now.

        Raises:
            VaultLockedError: ``session_id`` has active grants and the vault is locked.
        """
        active = self._grants.active(session_id, now=now)
        if not active:
            return
        try:
            _zero(self._vault.get(active[0].grant.secret_name))
        except VaultLockedError as e:
            raise VaultLockedError("the vault is locked; the session's capabilities need it") from e
        except SecretNotFoundError:
            pass  # redeeming says so, for that one grant

    # --------------------------------------------------------------- redaction

    def _session_secrets(self, session_id: str) -> list[tuple[str, bytearray]]:
        names = sorted({r.grant.secret_name for r in self._grants.for_session(session_id)})
        return [(name, self._vault.get(name)) for name in names]

    def redact(self, text: str, *, session_id: str) -> tuple[str, list[str]]:
        """Redact the secrets the agent must never see from ``text``.

        While the vault is unlocked: every secret in it (those granted to
        ``session_id`` and every other one, so a key that sits in a workspace
        ``.env`` or a server's answer is caught too) and the canaries, in every
        form, variant and near-copy. While it is locked: every region that
        matches the secrets' fingerprints is withheld
        (:mod:`vault.fingerprints`); where there is no current index, redaction
        fails rather than let a secret through. A secret spelled with NULs
        between its characters (UTF-16 or UTF-32 text read as UTF-8) is caught
        as well; the NULs are then dropped.

        Returns:
            The redacted text and the names found.

        Raises:
            RedactionError: Redaction could not run (the vault is locked and
                its secrets were never indexed, ...).
        """
        redactor = self._redactor(session_id)
        redacted, names = redactor.redact(text)
        if "\x00" in redacted:
            # A secret in UTF-16 or UTF-32 (a file the shell printed) reads
            # as the secret with NULs between its characters: where that
            # hides one, the NULs go (elsewhere they may be data: -print0).
            squeezed, hidden = redactor.redact(_without_nul(redacted))
            if hidden:
                redacted, names = squeezed, sorted(set(names) | set(hidden))
        return redacted, names

    def redact_stream(self, *, session_id: str) -> StreamRedactor:
        """A streaming redactor over the same secrets as :meth:`redact`.

        For text that reaches a screen piece by piece (model tokens): the
        stream holds back what may still turn out to be a secret.

        Raises:
            RedactionError: As :meth:`redact`.
        """
        return self._redactor(session_id).stream()

    def _redactor(self, session_id: str) -> Redactor | WithholdingRedactor:
        try:
            pairs: list[tuple[str, bytearray | str]] = list(self._session_secrets(session_id))
        except VaultError as e:
            locked = self._locked_redactor()
            if locked is not None:
                return locked
            raise RedactionError(f"cannot read the session's secrets to redact: {e}") from e
        try:
            others = self._other_secrets({name for name, _ in pairs})
            if others is None:
                locked = self._locked_redactor()
                if locked is not None:
                    return locked
                others = [("canary", c) for c in self._canaries]
            else:
                self._refresh_fingerprints([v for n, v in pairs + others if n != "canary"])
            pairs += others
            return Redactor(pairs)
        finally:
            for _, value in pairs:
                if isinstance(value, bytearray):
                    _zero(value)

    def _generation(self) -> int | None:
        generation = getattr(self._vault, "generation", None)
        return generation if isinstance(generation, int) else None

    def _refresh_fingerprints(self, values: list[bytearray | str]) -> None:
        """Re-index the secrets when the vault changed since the stored index."""
        path = self._fingerprints_path
        if path is None:
            return
        generation = self._generation()
        if generation is not None and generation == self._indexed_generation:
            return
        current = SecretFingerprints.load(path)
        if current is None or generation is None or current.generation != generation:
            SecretFingerprints.build(values, generation=generation).save(path)
        self._indexed_generation = generation

    def _locked_redactor(self) -> WithholdingRedactor | None:
        """The fingerprints' redactor while locked; None without an index path.

        Raises:
            RedactionError: No index, or one older than the vault.
        """
        path = self._fingerprints_path
        if path is None:
            return None
        index = self._load_index(path)
        if index is None:
            raise RedactionError(
                "the vault is locked and its secrets were never indexed; unlock it once"
            )
        generation = self._generation()
        if generation is not None and index.generation != generation:
            raise RedactionError(
                "the vault changed since its secrets were last indexed; unlock it to continue"
            )
        canaries = Redactor([("canary", c) for c in self._canaries])
        return index.redactor(canaries)

    def _load_index(self, path: Path) -> SecretFingerprints | None:
        """:meth:`SecretFingerprints.load`, reusing the last load while the file is the same.

        The index is always replaced by a rename, so a new index is a new inode.
        """
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RedactionError(f"cannot read the secret fingerprints {path}: {e}") from e
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        loaded = self._loaded_index
        if loaded is not None and loaded[0] == key:
            return loaded[1]
        index = SecretFingerprints.load(path)
        if index is not None:
            self._loaded_index = (key, index)
        return index

    def _other_secrets(self, have: set[str]) -> list[tuple[str, bytearray | str]] | None:
        """Every other vault secret and the canaries; None while locked."""
        found: list[tuple[str, bytearray | str]] = []
        try:
            for name in self._vault.names():
                if name not in have:
                    found.append((name, self._vault.get(name)))
        except VaultError:
            # Locked (or locked while reading): the caller falls back to the
            # fingerprints, or to the granted secrets it holds.
            for _, value in found:
                if isinstance(value, bytearray):
                    _zero(value)
            return None
        found.extend(("canary", c) for c in self._canaries)
        return found

    def scan(self, text: str) -> list[str]:
        """Names of the vault secrets (and ``canary`` for canaries) found in ``text``.

        Raises:
            RedactionError: The scan could not run (the vault is locked, ...).
        """
        pairs: list[tuple[str, bytearray | str]] = []
        try:
            try:
                for name in self._vault.names():
                    pairs.append((name, self._vault.get(name)))
            except VaultError as e:
                raise RedactionError(f"cannot read the vault to scan: {e}") from e
            pairs.extend(("canary", c) for c in self._canaries)
            return Redactor(pairs).scan(text)
        finally:
            for _, value in pairs:
                if isinstance(value, bytearray):
                    _zero(value)

    # ------------------------------------------------------------------ egress

    def egress_redactor(self, session_id: str) -> Redactor:
        """A redactor for what the egress proxy streams back to a sandbox.

        The same secrets as :meth:`redact` (the session's grants, every other
        readable secret, the canaries); bytes are redacted as latin-1 text, so
        a secret that is not ASCII is also matched as its UTF-8 bytes seen
        that way.

        Raises:
            RedactionError: The session's secrets cannot be read.
        """
        pairs: list[tuple[str, bytearray | str]] = list(self._session_secrets_or_refuse(session_id))
        try:
            others = self._other_secrets({name for name, _ in pairs})
            # Locked since the session's secrets were read: those are the ones
            # the proxy can put in play; the canaries still go.
            pairs += others if others is not None else [("canary", c) for c in self._canaries]
            extra = [
                (name, bytes(value).decode("latin-1"))
                for name, value in pairs
                if isinstance(value, bytearray) and not value.isascii()
            ]
            return Redactor([*pairs, *extra])
        finally:
            for _, value in pairs:
                if isinstance(value, bytearray):
                    _zero(value)

    def redeem_egress(
        self,
        handle: str,
        *,
        method: str,
        url: str,
        session_id: str,
        command: str,
        now: datetime | None = None,
    ) -> EgressRedemption:
        """Redeem ``handle`` for one request a sandboxed command sends through the proxy.

        The same checks as :meth:`call` (session, state, method, scheme, host,
        port, path, addresses), then one use is spent. The caller injects the
        secret, zeroes it, and connects only to the addresses returned.

        Raises:
            GrantRefused: A scope check failed (audited as a refusal).
            VaultError: The vault could not provide the secret.
        """
        at = now or _now()
        details = {"handle": handle if is_handle(handle) else "(malformed)", "method": method,
                   "url": url[:2000], "command": command[:500]}
        try:
            record = self._grants.get(handle) if is_handle(handle) else None
            if record is None or record.grant.session_id != session_id:
                raise _refused("handle: unknown capability handle")
            state = record.refusal(at)
            if state is not None:
                raise _refused(state)
            grant = record.grant
            canonical = canonicalize(
                url, schemes=("https",), allow_ip_literal=grant.allow_local, allow_any_port=True
            )
            addresses = self._check_scope(record, _Hop(method.upper(), canonical, None))
        except GrantRefused as refusal:
            self._audit.record("refuse", session_id=session_id, tool="egress", decision="deny",
                               reason=refusal.reason, details=details, now=at)
            raise
        secret = self._vault.get(grant.secret_name)
        try:
            _check_injectable(grant.injection, secret)
            uses_left = self._grants.consume(handle, session_id=session_id, now=at)
        except BaseException:
            _zero(secret)
            raise
        self._audit.record(
            "redeem", session_id=session_id, tool="egress", decision="allow",
            details={**details, "url": str(canonical), "secret": grant.secret_name,
                     "uses_left": uses_left},
            now=at,
        )
        return EgressRedemption(grant.secret_name, grant.injection, secret, addresses)

    # ------------------------------------------------------------------- calls

    def call(
        self,
        handle: str | None,
        call: HttpCall,
        *,
        session_id: str,
        now: datetime | None = None,
    ) -> BrokeredResponse:
        """Perform ``call``, redeeming ``handle`` when one is given.

        Without a handle the request carries no secret but the URL and address
        checks still apply (http and https, default ports, public addresses
        unless the host is one of ``local_hosts``).

        Raises:
            GrantRefused: A scope check failed; ``reason`` names it.
            RedactionError: The response could not be redacted; nothing returned.
            BrokerRequestError: The request itself failed (connection, TLS,
                timeout, a broken response); the message holds no secret.
            VaultError: The vault could not provide the secret (locked, deleted).
        """
        at = now or _now()
        try:
            if handle is None:
                return self._plain(call, session_id=session_id, now=at)
            return self._redeem(handle, call, session_id=session_id, now=at)
        except GrantRefused as refusal:
            self._audit.record(
                "refuse",
                session_id=session_id,
                tool="http_request",
                decision="deny",
                reason=refusal.reason,
                details={
                    "handle": handle if handle is None or is_handle(handle) else "(malformed)",
                    "method": call.method,
                    "url": call.url[:2000],
                },
                now=at,
            )
            raise
        except BrokerRequestError as failure:
            # A redemption has spent a use by now: the log must say where it went.
            self._audit.record(
                "request_failed",
                session_id=session_id,
                tool="http_request",
                reason=str(failure),
                details={
                    "handle": handle if handle is None or is_handle(handle) else "(malformed)",
                    "method": call.method,
                    "url": call.url[:2000],
                },
                now=at,
            )
            raise

    def _plain(self, call: HttpCall, *, session_id: str, now: datetime) -> BrokeredResponse:
        if call.method not in KNOWN_METHODS:
            raise _refused(f"method: {call.method} not allowed")
        url = self._plain_url(call.url, local_ok=True)
        # A public site must not bounce the broker onto a local service.
        local_ok = url.host in self._local_hosts
        body = self._body(call)
        headers, stripped = self._agent_headers(call.headers, extra=())
        pairs = self._session_secrets_or_refuse(session_id)
        try:
            redactor = Redactor(pairs)
            response, hops, address = self._send(
                _Hop(call.method, url, body),
                headers,
                redactor,
                check=lambda hop: self._plain_hop(hop, local_ok=local_ok),
            )
            self._audit.record(
                "request",
                session_id=session_id,
                tool="http_request",
                decision="allow",
                details={
                    "method": call.method,
                    "url": str(url),
                    "final_url": response.url,
                    "address": str(address),
                    "status": response.status,
                    "redirects": hops,
                    "truncated": response.truncated,
                    "redacted": response.redacted,
                    "stripped_headers": stripped,
                },
                secret_values=[v for _, v in pairs],
                now=now,
            )
            return response
        finally:
            for _, value in pairs:
                _zero(value)

    def _session_secrets_or_refuse(self, session_id: str) -> list[tuple[str, bytearray]]:
        try:
            return self._session_secrets(session_id)
        except VaultError as e:
            raise RedactionError(f"cannot read the session's secrets to redact: {e}") from e

    def _plain_url(self, raw: str, *, local_ok: bool) -> CanonicalURL:
        loose = canonicalize(
            raw, schemes=("https", "http"), allow_ip_literal=True, allow_any_port=True
        )
        if local_ok and loose.host in self._local_hosts:
            return loose
        return canonicalize(raw, schemes=("https", "http"))

    def _plain_hop(self, hop: _Hop, *, local_ok: bool) -> list[IPAddress]:
        url = self._plain_url(str(hop.url), local_ok=local_ok)
        return self._address(url, allow_local=local_ok and url.host in self._local_hosts)

    def _address(self, url: CanonicalURL, *, allow_local: bool) -> list[IPAddress]:
        """Every address of the host, all checked; connections try them in order."""
        addresses = resolve(url.host, url.port, self._resolver)
        check_addresses(url.host, addresses, allow_local=allow_local)
        return addresses

    def _check_scope(self, record: GrantRecord, hop: _Hop) -> list[IPAddress]:
        grant = record.grant
        if hop.method not in grant.methods:
            raise _refused(
                f"method: {hop.method} not allowed (allowed: {', '.join(grant.methods)})"
            )
        url = hop.url
        if url.scheme != "https":
            raise _refused("scheme: grants are for https only")
        if url.host != grant.host:
            raise _refused(f"host: {url.host} is not {grant.host}")
        if url.port != grant.port:
            raise _refused(f"port: {url.port} is not {grant.port}")
        if not grant.pattern.matches(url.path):
            raise _refused(f"path: {url.path} is outside {grant.path_pattern}")
        return self._address(url, allow_local=grant.allow_local)

    def _redeem(
        self, handle: str, call: HttpCall, *, session_id: str, now: datetime
    ) -> BrokeredResponse:
        record = self._grants.get(handle) if is_handle(handle) else None
        if record is None or record.grant.session_id != session_id:
            # Same reason for a forged handle and another session's handle.
            raise _refused("handle: unknown capability handle")
        state = record.refusal(now)
        if state is not None:
            raise _refused(state)
        grant = record.grant
        url = canonicalize(
            call.url, schemes=("https",), allow_ip_literal=grant.allow_local, allow_any_port=True
        )
        body = self._body(call)
        first = _Hop(call.method, url, body)
        addresses = self._check_scope(record, first)  # refuse before using the grant up
        injection = grant.injection
        extra = (injection.header,) if isinstance(injection, HeaderInjection) else ()
        headers, stripped = self._agent_headers(call.headers, extra=extra)
        # Read the secret first so that a locked vault does not cost a use.
        secret = self._vault.get(grant.secret_name)
        try:
            _check_injectable(injection, secret)
            uses_left = self._grants.consume(handle, session_id=session_id, now=now)
            redactor = Redactor([(grant.secret_name, secret)])

            response, hops, address = self._send(
                first,
                headers,
                redactor,
                check=lambda hop: self._check_scope(record, hop),
                inject=(injection, secret),
                first_addresses=addresses,
            )
            self._audit.record(
                "redeem",
                session_id=session_id,
                tool="http_request",
                decision="allow",
                details={
                    "handle": handle,
                    "secret": grant.secret_name,
                    "method": call.method,
                    "url": str(url),
                    "final_url": response.url,
                    "address": str(address),
                    "status": response.status,
                    "redirects": hops,
                    "truncated": response.truncated,
                    "redacted": response.redacted,
                    "stripped_headers": stripped,
                    "uses_left": uses_left,
                },
                secret_values=[secret],
                now=now,
            )
            return response
        finally:
            _zero(secret)

    def _body(self, call: HttpCall) -> bytes | None:
        if call.body is None:
            return None
        data = call.body.encode("utf-8") if isinstance(call.body, str) else bytes(call.body)
        if len(data) > self.max_request_bytes:
            raise _refused(f"body: larger than {self.max_request_bytes} bytes")
        return data

    @staticmethod
    def _agent_headers(
        headers: dict[str, str], *, extra: Sequence[str]
    ) -> tuple[dict[str, str], list[str]]:
        extra_lower = {h.lower() for h in extra}
        kept: dict[str, str] = {}
        stripped: list[str] = []
        for name, value in headers.items():
            lower = name.lower()
            if not _TOKEN_RE.fullmatch(name):
                raise _refused(f"headers: invalid header name {name[:100]!r}")
            if any(ord(ch) < 0x20 and ch != "\t" or ord(ch) == 0x7F for ch in value):
                raise _refused(f"headers: control characters in the value of {name}")
            if lower in _TRANSPORT_HEADERS or lower in extra_lower or is_auth_header(lower):
                stripped.append(lower)
                continue
            kept[name] = value
        return kept, sorted(set(stripped))

    # --------------------------------------------------------------- transport

    def _send(
        self,
        first: _Hop,
        agent_headers: dict[str, str],
        redactor: Redactor,
        *,
        check: Callable[[_Hop], list[IPAddress]],
        inject: tuple[HeaderInjection | QueryInjection | BasicAuthInjection, bytearray]
        | None = None,
        first_addresses: list[IPAddress] | None = None,
    ) -> tuple[BrokeredResponse, int, IPAddress]:
        hop = first
        for hops in range(self.max_redirects + 1):
            refusal = None
            try:
                if hops == 0 and first_addresses is not None:
                    addresses = first_addresses  # checked just before the grant was used
                else:
                    addresses = check(hop)
            except GrantRefused as e:
                if hops == 0:
                    raise
                # The target came from the server and may echo a secret: redact,
                # and raise outside the handler so the raw reason is not chained.
                refusal = _refused(redactor.redact(f"redirect to {hop.url}: {e.reason}")[0])
            if refusal is not None:
                raise refusal
            response, address = self._connect(hop, addresses, agent_headers, redactor, inject)
            try:
                location = response.headers.get("location")
                if response.status_code in REDIRECT_STATUSES and location is not None:
                    hop = self._next_hop(hop, response.status_code, location)
                    continue
                result = self._read(hop, response, redactor)
                return result, hops, address
            finally:
                response.close()
        raise _refused(f"redirect: more than {self.max_redirects} hops")

    def _connect(
        self,
        hop: _Hop,
        addresses: list[IPAddress],
        agent_headers: dict[str, str],
        redactor: Redactor,
        inject: tuple[HeaderInjection | QueryInjection | BasicAuthInjection, bytearray] | None,
    ) -> tuple[httpx.Response, IPAddress]:
        """Send to the first checked address that accepts a connection."""
        for index, address in enumerate(addresses):
            request = self._build(hop, agent_headers, address, inject)
            try:
                return self._client.send(request, stream=True), address
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                # Nothing was sent: another address of the same name may answer.
                if index + 1 < len(addresses):
                    continue
                error: httpx.HTTPError = e
            except httpx.HTTPError as e:
                error = e
            # The message may quote the URL, which may carry an injected secret.
            text = redactor.redact(str(error))[0]
            raise BrokerRequestError(
                f"request to {hop.url.host} failed: {type(error).__name__}: {text}"
            ) from None
        raise BrokerRequestError(f"{hop.url.host} has no address")  # resolve() never returns none

    @staticmethod
    def _next_hop(hop: _Hop, status: int, location: str) -> _Hop:
        target = urljoin(str(hop.url), location)
        try:
            url = canonicalize(
                target, schemes=("https", "http"), allow_ip_literal=True, allow_any_port=True
            )
        except GrantRefused as e:
            raise _refused(f"redirect: {e.reason}") from None
        method, body = hop.method, hop.body
        if status == 303 and method != "HEAD" or status in (301, 302) and method == "POST":
            method, body = "GET", None
        return _Hop(method, url, body)

    @staticmethod
    def _build(
        hop: _Hop,
        agent_headers: dict[str, str],
        address: IPAddress,
        inject: tuple[HeaderInjection | QueryInjection | BasicAuthInjection, bytearray] | None,
    ) -> httpx.Request:
        url = hop.url
        headers = [(k.encode("ascii"), v.encode("utf-8")) for k, v in agent_headers.items()]
        headers.append((b"Host", url.host_header.encode("ascii")))
        headers.append((b"Connection", b"close"))
        if inject is not None:
            injection, secret = inject
            if isinstance(injection, HeaderInjection):
                prefix, _, suffix = injection.template.partition("{}")
                value = prefix.encode("ascii") + bytes(secret) + suffix.encode("ascii")
                headers.append((injection.header.encode("ascii"), value))
            elif isinstance(injection, BasicAuthInjection):
                token = base64.b64encode(injection.username.encode("utf-8") + b":" + bytes(secret))
                headers.append((b"Authorization", b"Basic " + token))
            else:
                text = _utf8(secret)
                if text is None:  # _check_injectable refused it before the grant was used
                    raise _refused("injection: the secret is not text and cannot go in a query")
                url = url.with_query(with_query_param(url.query, injection.param, text))
        extensions: dict[str, Any] = {}
        if not url.is_ip_literal:
            extensions["sni_hostname"] = url.host
        return httpx.Request(
            hop.method,
            url.pinned(address),
            headers=headers,
            content=hop.body,
            extensions=extensions,
        )

    def _read(self, hop: _Hop, response: httpx.Response, redactor: Redactor) -> BrokeredResponse:
        decoder = codecs.getincrementaldecoder(_body_encoding(response.charset_encoding))(
            errors="replace"
        )
        stream: StreamRedactor = redactor.stream()
        parts: list[str] = []
        total = 0
        truncated = False
        deadline = self._clock() + self.timeout
        failure: BrokerRequestError | None = None
        try:
            for chunk in response.iter_bytes():
                if self._clock() > deadline:
                    raise BrokerRequestError(
                        f"the response from {hop.url.host} took longer than {self.timeout:g} s"
                    )
                room = self.max_response_bytes - total
                if len(chunk) > room:
                    chunk, truncated = chunk[:room], True
                total += len(chunk)
                parts.append(stream.feed(_without_nul(decoder.decode(chunk))))
                if truncated:
                    break
        except httpx.HTTPError as e:
            failure = BrokerRequestError(
                f"reading the response from {hop.url.host} failed: {type(e).__name__}"
            )
        if failure is not None:
            raise failure  # outside the handler: the httpx error is not chained
        if truncated:
            # Drop the held-back tail: it may hold the start of a secret that
            # the cut left incomplete, which no pattern would match.
            parts.append(stream.feed(_without_nul(decoder.decode(b"", final=True))))
        else:
            parts.append(stream.feed(_without_nul(decoder.decode(b"", final=True))))
            parts.append(stream.finish())
        found = set(stream.found)
        headers: dict[str, str] = {}
        for name in {k.lower() for k in response.headers}:
            joined = ", ".join(response.headers.get_list(name))
            text, names = redactor.redact(joined)
            headers[name] = text
            found.update(names)
        return BrokeredResponse(
            status=response.status_code,
            headers=headers,
            body="".join(parts),
            truncated=truncated,
            redacted=sorted(found),
            # A redirect target came from the server and may echo a secret.
            url=redactor.redact(str(hop.url))[0],
        )

    # --------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def __enter__(self) -> Broker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
