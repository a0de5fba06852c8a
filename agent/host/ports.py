"""What the host-side tools need from the vault broker and the memory service.

The tools talk to those services through these structural protocols, so a
test can hand them a small fake; the real ``vault.broker.Broker`` and
``memory.service.MemoryService`` satisfy them without inheriting from them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable


class BrokeredResponseLike(Protocol):
    """What comes back from the broker: already redacted and size-limited."""

    @property
    def status(self) -> int:
        """The HTTP status code."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Response headers (redacted)."""
        ...

    @property
    def body(self) -> str:
        """Response body as text (redacted, possibly truncated)."""
        ...

    @property
    def truncated(self) -> bool:
        """Whether the body was cut at the broker's size limit."""
        ...

    @property
    def redacted(self) -> Sequence[str]:
        """Names of the secrets whose values were removed from the response."""
        ...


class CapabilityLike(Protocol):
    """The agent-visible description of a capability (``vault.handle.CapabilityInfo``)."""

    @property
    def handle(self) -> str:
        """The opaque ``cap_…`` handle."""
        ...

    @property
    def description(self) -> str:
        """What the capability allows, in words."""
        ...


@runtime_checkable
class BrokerPort(Protocol):
    """The part of ``vault.broker.Broker`` the ``http_request`` tool uses."""

    def call(
        self, handle: str | None, call: Any, *, session_id: str, now: datetime
    ) -> BrokeredResponseLike:
        """Perform ``call`` (an ``HttpCall``), redeeming ``handle`` if given.

        ``call`` is typed ``Any`` on purpose: the broker's own request type lives
        in ``vault.broker``, which this module must not import.

        Raises:
            vault.errors.GrantRefused: The handle is unknown, expired, used up,
                or does not cover this method, host or path.
        """
        ...

    def capabilities(self, session_id: str) -> Sequence[CapabilityLike]:
        """The capabilities granted to ``session_id``."""
        ...


@runtime_checkable
class MemoryPort(Protocol):
    """The part of ``memory.service.MemoryService`` the memory tools use."""

    def remember(self, topic: str, content: str, *, level: Any, source: Any) -> Any:
        """Write ``content`` under ``topic`` at ``level``, stamped with ``source``.

        ``level`` and ``source`` are the memory package's own types
        (``"project"``-like level names and a ``Provenance``); the tools pass
        what :attr:`agent.host.tools.base.ToolContext.memory_source` builds, so this
        module never imports ``memory``. The result is shown to the model as text.
        """
        ...

    def recall(self, query: str, *, limit: int) -> Sequence[Any]:
        """Search memory for ``query``; at most ``limit`` hits."""
        ...

    def forget(self, level: Any, name: str, *, reason: str) -> Any:
        """Archive the topic ``name`` at ``level`` (never deletes it silently)."""
        ...


class AuditSink(Protocol):
    """The audit log as the host uses it (vault.audit.AuditLog satisfies it)."""

    def record(
        self,
        kind: str,
        *,
        session_id: str | None = None,
        tool: str | None = None,
        decision: str | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        secret_values: Sequence[bytes | bytearray | str] = (),
    ) -> Any:
        """Append one entry.

        Raises:
            Exception: Any error when the entry was not written; the host then
                stops the errand rather than act unaudited.
        """
        ...


class StreamRedaction(Protocol):
    """A streaming redactor (:class:`vault.redact.StreamRedactor`'s interface).

    Both methods raise :class:`vault.errors.VaultError` when redaction cannot
    run; the stream is unusable afterwards.
    """

    def feed(self, chunk: str) -> str:
        """Add a chunk; return the text that is now safe to release."""
        ...

    def finish(self) -> str:
        """Release everything still held back, redacted."""
        ...


class HostBroker(BrokerPort, Protocol):
    """What the host needs of vault.broker.Broker: the tools' port plus redaction."""

    def redact(self, text: str, *, session_id: str) -> tuple[str, list[str]]:
        """Remove every secret value from ``text``; return it and the names removed."""
        ...

    def redact_stream(self, *, session_id: str) -> StreamRedaction:
        """A streaming redactor over the same secrets as :meth:`redact`.

        Raises:
            vault.errors.VaultError: Redaction cannot run (fail closed).
        """
        ...

    def check_capabilities_usable(self, session_id: str) -> None:
        """Refuse a session whose capabilities cannot be used right now.

        Raises:
            vault.errors.VaultLockedError: It has grants and the vault is locked.
        """
        ...


class HostMemory(MemoryPort, Protocol):
    """What the host needs of memory.service.MemoryService: the tools' port plus loading."""

    def load_context(self) -> Any:
        """The memory to show the agent (an object with ``.text``)."""
        ...
