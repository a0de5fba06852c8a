"""How the host builds a session's egress proxy (imports no mitmproxy)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EgressSettings:
    """What the host passes to :class:`agent.host.egress.proxy.EgressProxy` beyond the session.

    Attributes:
        pinned_hosts: Hosts passed through without interception (never with a
            capability).
        local_hosts: Hosts that may resolve to loopback or private addresses
            (a test server, a service the user trusts); never set by the agent.
        upstream_ca: A CA file to verify upstream servers with instead of the
            system's (tests).
        resolver: Host name to addresses (tests pin one); None: the system's.
    """

    pinned_hosts: tuple[str, ...] = ()
    local_hosts: tuple[str, ...] = ()
    upstream_ca: Path | None = None
    resolver: Callable[[str, int], list[str]] | None = None
