"""How the host builds a session's egress proxy (imports no mitmproxy)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def pinned_host(text: str) -> str:
    """``text`` as the proxy matches a pinned host: lower case, IDNA (``xn--``), no trailing dot.

    The proxy compares a tunnel's host (``CONNECT`` target) with the pinned
    set exactly, so only a bare host name or IP address can ever match:
    anything else is refused here, where the user typed it, not silently
    never matched.

    Raises:
        ValueError: ``text`` is not a bare host name or IP address; the
            message names what is wrong.
    """
    host = text.strip().lower().rstrip(".")
    if not host:
        raise ValueError("a pinned host cannot be empty")
    if "://" in host or "/" in host:
        raise ValueError(f"{text.strip()!r}: pin a host name, not a URL (e.g. example.com)")
    if "*" in host:
        raise ValueError(f"{text.strip()!r}: a pinned host is one exact host, not a wildcard")
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if ":" in host:
        raise ValueError(f"{text.strip()!r}: pin a host name without a port")
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise ValueError(f"{text.strip()!r} is not a valid host name") from e
    if len(ascii_host) > 253 or not all(_LABEL.fullmatch(p) for p in ascii_host.split(".")):
        raise ValueError(f"{text.strip()!r} is not a valid host name")
    return ascii_host


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
