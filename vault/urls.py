"""URL canonicalisation, path patterns and address checks for the broker.

The broker checks a grant's scope against the *canonical* form of a URL and
then sends exactly that form, so the server never sees a URL other than the
one that was checked. Canonicalisation is strict: anything ambiguous (userinfo,
backslashes, encoded slashes, numeric hosts, bad escapes) is refused rather
than guessed at. Refusals raise :class:`vault.errors.GrantRefused` whose reason
names the failed check and never contains a secret (a URL given to these
functions comes from the agent and holds none).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote_plus

from vault.errors import GrantRefused

__all__ = [
    "DEFAULT_PORTS",
    "MAX_URL_LENGTH",
    "CanonicalURL",
    "IPAddress",
    "PathPattern",
    "Resolver",
    "canonical_host",
    "canonicalize",
    "check_addresses",
    "resolve",
    "system_resolver",
    "with_query_param",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]
"""Maps (host, port) to the IP address strings it resolves to."""

MAX_URL_LENGTH = 8192
DEFAULT_PORTS = {"https": 443, "http": 80}

_URL_RE = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)"
    r"(?P<path>[^?#]*)(?:\?(?P<query>[^#]*))?(?:#.*)?",
    re.DOTALL,
)
_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar minus percent: characters a path segment may carry verbatim.
_PCHAR = _UNRESERVED | frozenset("!$&'()*+,;=:@")
_QUERY_CHARS = _PCHAR | frozenset("/?")
_HEX = frozenset("0123456789abcdefABCDEF")
# Escapes that would change how a server splits the path: encoded '/', '\' and NUL.
_FORBIDDEN_PATH_ESCAPES = frozenset({"%2F", "%5C", "%00"})


def _refuse(reason: str) -> GrantRefused:
    return GrantRefused(reason)


def _normalise_component(text: str, allowed: frozenset[str], what: str) -> str:
    """Percent-encoding normal form of a path segment or query.

    Escapes of unreserved characters are decoded, other escapes upper-cased,
    characters outside ``allowed`` encoded as UTF-8 escapes.
    """
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "%":
            hexpart = text[i + 1 : i + 3]
            if len(hexpart) != 2 or not set(hexpart) <= _HEX:
                raise _refuse(f"url: malformed percent escape in the {what}")
            decoded = chr(int(hexpart, 16))
            if decoded in _UNRESERVED:
                out.append(decoded)
            else:
                out.append("%" + hexpart.upper())
            i += 3
            continue
        if ch in allowed:
            out.append(ch)
        else:
            out.append(quote(ch, safe=""))
        i += 1
    return "".join(out)


def _canonical_path(raw: str) -> str:
    if raw == "":
        return "/"
    segments = raw.split("/")[1:]  # raw always starts with "/" here
    normalised = [_normalise_component(s, _PCHAR, "path") for s in segments]
    for seg in normalised:
        upper = seg.upper()
        if any(bad in upper for bad in _FORBIDDEN_PATH_ESCAPES):
            raise _refuse("url: encoded '/', '\\' or NUL in the path")
        if ";" in seg and seg.split(";", 1)[0] in (".", ".."):
            # Tomcat/Spring strip ";params" and then remove the dot segment.
            raise _refuse("url: dot segment with ';' parameters in the path")
    # RFC 3986 remove_dot_segments on already-split segments.
    stack: list[str] = []
    for index, seg in enumerate(normalised):
        last = index == len(normalised) - 1
        if seg == ".":
            if last:
                stack.append("")
        elif seg == "..":
            if stack:
                stack.pop()
            if last:
                stack.append("")
        else:
            stack.append(seg)
    return "/" + "/".join(stack)


def _looks_numeric(host: str) -> bool:
    """Hosts whose last label is a number are IP literals in inet_aton's eyes."""
    last = host.rsplit(".", 1)[-1]
    return last.isdigit() or bool(re.fullmatch(r"0x[0-9a-f]*", last))


def canonical_host(host: str) -> str:
    """Return the canonical (IDNA, lower-case, no trailing dot) form of a DNS name.

    Args:
        host: A host name as typed in a URL or a grant.

    Returns:
        The ASCII form compared for exact-host scope checks.

    Raises:
        GrantRefused: The name is empty, not a valid DNS name, or numeric.
    """
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise _refuse("url: empty host")
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError as e:
        raise _refuse("url: host is not a valid internationalised domain name") from e
    if len(ascii_host) > 253:
        raise _refuse("url: host name too long")
    for label in ascii_host.split("."):
        if not _LABEL_RE.fullmatch(label):
            raise _refuse("url: host is not a valid DNS name")
    if _looks_numeric(ascii_host):
        raise _refuse("url: numeric host (an IP address in disguise)")
    return ascii_host


@dataclass(frozen=True)
class CanonicalURL:
    """A URL in the canonical form the broker checks and sends.

    Attributes:
        scheme: ``https`` or ``http``.
        host: Canonical DNS name, or the compressed text of an IP literal
            (only when the caller allowed literals).
        port: Effective port (the scheme's default when none was given).
        path: Canonical path, always starting with ``/``.
        query: Canonical query without ``?``, or None when the URL had none.
        is_ip_literal: Whether ``host`` is an IP address.
    """

    scheme: str
    host: str
    port: int
    path: str
    query: str | None
    is_ip_literal: bool = False

    @property
    def default_port(self) -> bool:
        """Whether the port is the scheme's default."""
        return DEFAULT_PORTS.get(self.scheme) == self.port

    def _netloc(self, host: str, *, bracket: bool) -> str:
        text = f"[{host}]" if bracket else host
        return text if self.default_port else f"{text}:{self.port}"

    @property
    def host_header(self) -> str:
        """The ``Host`` header value for this URL."""
        return self._netloc(self.host, bracket=":" in self.host)

    @property
    def target(self) -> str:
        """Path and query, as sent on the request line."""
        return self.path if self.query is None else f"{self.path}?{self.query}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.target}"

    def pinned(self, address: IPAddress) -> str:
        """The same URL with its host replaced by an already-checked address."""
        netloc = self._netloc(address.compressed, bracket=address.version == 6)
        return f"{self.scheme}://{netloc}{self.target}"

    def with_query(self, query: str | None) -> CanonicalURL:
        """A copy with another (already canonical) query."""
        return CanonicalURL(
            self.scheme, self.host, self.port, self.path, query, self.is_ip_literal
        )


def canonicalize(
    url: str,
    *,
    schemes: Sequence[str] = ("https",),
    allow_ip_literal: bool = False,
    allow_any_port: bool = False,
) -> CanonicalURL:
    """Parse and canonicalise a URL, refusing anything ambiguous.

    Args:
        url: Absolute URL given by the agent.
        schemes: Schemes accepted (lower case).
        allow_ip_literal: Accept a literal IP address as host (local services).
        allow_any_port: Accept a port other than the scheme's default.

    Returns:
        The canonical URL; its fragment is dropped.

    Raises:
        GrantRefused: The reason names the problem (``url: ...``).
    """
    if not isinstance(url, str):
        raise _refuse("url: not a string")
    if len(url) > MAX_URL_LENGTH:
        raise _refuse(f"url: longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise _refuse("url: contains whitespace or control characters")
    if "\\" in url:
        raise _refuse("url: contains a backslash")
    match = _URL_RE.fullmatch(url)
    if match is None:
        raise _refuse("url: not an absolute URL (scheme://host/path)")
    scheme = match["scheme"].lower()
    if scheme not in schemes:
        raise _refuse(f"scheme: {scheme!r} not allowed (allowed: {', '.join(schemes)})")
    authority = match["authority"]
    if "@" in authority:
        raise _refuse("url: userinfo ('user@' or 'user:pass@') is not allowed")
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise _refuse("url: unterminated IPv6 literal")
        host_text, rest = authority[1:end], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise _refuse("url: junk after IPv6 literal")
        port_text = rest[1:] if rest else None
        bracketed = True
    else:
        host_text, sep, port_after = authority.partition(":")
        port_text = port_after if sep else None
        bracketed = False
    default_port = DEFAULT_PORTS[scheme] if scheme in DEFAULT_PORTS else 443
    if port_text is None or port_text == "":
        port = default_port
    else:
        if not _PORT_RE.fullmatch(port_text) or not 0 < int(port_text) < 65536:
            raise _refuse("url: invalid port")
        port = int(port_text)
    if port != default_port and not allow_any_port:
        raise _refuse(f"port: {port} not allowed (only the default {default_port})")

    literal: IPAddress | None
    try:
        literal = ipaddress.ip_address(host_text)
    except ValueError:
        literal = None
    if bracketed and (literal is None or literal.version != 6):
        raise _refuse("url: malformed IPv6 literal")
    if literal is not None:
        if not allow_ip_literal:
            raise _refuse("url: IP address literals are not allowed, use a host name")
        host = literal.compressed
    else:
        if "%" in host_text:
            raise _refuse("url: percent escapes in the host")
        host = canonical_host(host_text)

    raw_path = match["path"]
    path = _canonical_path(raw_path)
    raw_query = match["query"]
    query = None if raw_query is None else _normalise_component(raw_query, _QUERY_CHARS, "query")
    return CanonicalURL(scheme, host, port, path, query, literal is not None)


def with_query_param(query: str | None, name: str, value: str) -> str:
    """Return ``query`` with every ``name`` parameter replaced by one ``name=value``.

    Parameters are compared after decoding, so ``api%5Fkey`` counts as
    ``api_key``: the agent cannot smuggle its own value next to the injected one.
    """
    kept = []
    if query:
        for part in query.split("&"):
            key = part.split("=", 1)[0]
            if part and unquote_plus(key) != name:
                kept.append(part)
    kept.append(f"{quote(name, safe='')}={quote(value, safe='')}")
    return "&".join(kept)


class PathPattern:
    """A grant's path scope.

    Segments are literal, ``+`` (exactly one non-empty segment) or a final
    ``*`` (any remainder, possibly empty). ``/v1/+/issues`` matches
    ``/v1/octo/issues``; ``/v1/*`` matches ``/v1/`` and ``/v1/a/b`` but not
    ``/v1``. Literals are compared in canonical form.
    """

    def __init__(self, pattern: str) -> None:
        """Compile ``pattern``.

        Raises:
            ValueError: The pattern is malformed (the message says how).
        """
        if not pattern.startswith("/"):
            raise ValueError("a path pattern starts with '/'")
        segments = pattern[1:].split("/")
        for index, seg in enumerate(segments):
            if "*" in seg and (seg != "*" or index != len(segments) - 1):
                raise ValueError("'*' may only be the whole last segment of a path pattern")
            if "+" in seg and seg != "+":
                raise ValueError("'+' must be a whole path segment")
        try:
            literal = [seg if seg in ("*", "+") else _canonical_segment(seg) for seg in segments]
        except GrantRefused as e:
            raise ValueError(f"invalid path pattern: {e.reason}") from e
        self.pattern = pattern
        self._trailing = literal[-1] == "*"
        self._fixed = literal[:-1] if self._trailing else literal

    def matches(self, path: str) -> bool:
        """Whether canonical ``path`` is inside this pattern."""
        segs = path[1:].split("/")
        if self._trailing:
            if len(segs) < len(self._fixed) + 1:
                return False
        elif len(segs) != len(self._fixed):
            return False
        for want, got in zip(self._fixed, segs, strict=False):
            if want == "+":
                if got == "":
                    return False
            elif want != got:
                return False
        return True

    def __repr__(self) -> str:
        return f"PathPattern({self.pattern!r})"


def _canonical_segment(seg: str) -> str:
    if seg in (".", ".."):
        raise _refuse("dot segments are not allowed in a path pattern")
    out = _normalise_component(seg, _PCHAR, "path")
    if any(bad in out.upper() for bad in _FORBIDDEN_PATH_ESCAPES):
        raise _refuse("encoded '/', '\\' or NUL in a path pattern")
    return out


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the operating system's resolver.

    Raises:
        GrantRefused: The name does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise _refuse(f"address: cannot resolve {host}") from e
    return [str(info[4][0]) for info in infos]


def resolve(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    """Resolve ``host`` and parse every address, in resolver order, deduplicated.

    Raises:
        GrantRefused: Nothing (or garbage) came back.
    """
    found: list[IPAddress] = []
    for text in resolver(host, port):
        try:
            # getaddrinfo may append a zone to IPv6 link-local addresses.
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError as e:
            raise _refuse(f"address: resolver returned a non-address for {host}") from e
        if address not in found:
            found.append(address)
    if not found:
        raise _refuse(f"address: {host} resolves to no address")
    return found


def _unwrap(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return mapped
    return address


def check_addresses(host: str, addresses: Sequence[IPAddress], *, allow_local: bool) -> IPAddress:
    """Refuse a host if any address it resolves to is not public.

    Every address is checked, not just the first, so a name that resolves to
    a public and a private address cannot be used to reach the private one.
    With ``allow_local``, loopback and private (RFC 1918, ULA) addresses pass;
    link-local (cloud metadata), multicast, unspecified and reserved never do.

    Args:
        host: The name, for the refusal reason.
        addresses: What it resolved to.
        allow_local: Whether loopback and private ranges are acceptable.

    Returns:
        The address to connect to (the first), so the connection is pinned
        to an address that was checked.

    Raises:
        GrantRefused: Some address is not allowed.
    """
    if not addresses:
        raise _refuse(f"address: {host} resolves to no address")
    for original in addresses:
        address = _unwrap(original)
        never = (
            address.is_link_local
            or address.is_multicast
            or address.is_unspecified
            or (address.is_reserved and not address.is_loopback)  # ::1 is in ::/8
        )
        local = address.is_loopback or address.is_private or not address.is_global
        if never or (local and not allow_local):
            kind = "link-local/reserved" if never else "private or loopback"
            raise _refuse(f"address: {host} resolves to a {kind} address ({original})")
    return addresses[0]
