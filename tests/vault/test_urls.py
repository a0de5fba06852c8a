"""URL canonicalisation, path patterns and address checks."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault.errors import GrantRefused
from vault.urls import (
    CanonicalURL,
    PathPattern,
    canonical_host,
    canonicalize,
    check_addresses,
    resolve,
    system_resolver,
    with_query_param,
)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("https://API.Example.COM/v1/x", "https://api.example.com/v1/x"),
        ("https://api.example.com./v1/x", "https://api.example.com/v1/x"),
        ("https://api.example.com", "https://api.example.com/"),
        ("https://api.example.com:443/a", "https://api.example.com/a"),
        ("https://api.example.com/a/./b/../c", "https://api.example.com/a/c"),
        ("https://api.example.com/a/%2e%2E/b", "https://api.example.com/b"),
        ("https://api.example.com/../../etc", "https://api.example.com/etc"),
        ("https://api.example.com/a/..", "https://api.example.com/"),
        ("https://api.example.com/%7euser/%41", "https://api.example.com/~user/A"),
        ("https://api.example.com/a%3ab", "https://api.example.com/a%3Ab"),
        ("https://api.example.com/sp ace".replace(" ", "%20"), "https://api.example.com/sp%20ace"),
        ("https://api.example.com/ü", "https://api.example.com/%C3%BC"),
        ("https://api.example.com/a?b=1&c=%7e#frag", "https://api.example.com/a?b=1&c=~"),
        ("https://api.example.com/a?", "https://api.example.com/a?"),
        ("https://bücher.example/", "https://xn--bcher-kva.example/"),
        ("HTTPS://api.example.com/", "https://api.example.com/"),
    ],
)
def test_canonical_forms(raw: str, canonical: str) -> None:
    assert str(canonicalize(raw)) == canonical


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("https://user@api.example.com/", "url: userinfo"),
        ("https://user:pw@api.example.com/", "url: userinfo"),
        ("https://api.example.com@evil.com/", "url: userinfo"),
        ("https://api.example.com:8443/", "port: 8443 not allowed"),
        ("https://api.example.com:0/", "url: invalid port"),
        ("https://api.example.com:99999/", "url: invalid port"),
        ("https://api.example.com:+443/", "url: invalid port"),
        ("https://93.184.216.34/", "url: IP address literals"),
        ("https://[::1]/", "url: IP address literals"),
        ("https://[::1/", "url: unterminated IPv6"),
        ("https://[example.com]/", "url: malformed IPv6"),
        ("https://2130706433/", "url: numeric host"),
        ("https://0x7f.1/", "url: numeric host"),
        ("https://127.1/", "url: numeric host"),
        ("http://api.example.com/", "scheme: 'http' not allowed"),
        ("ftp://api.example.com/", "scheme: 'ftp'"),
        ("//api.example.com/", "url: not an absolute URL"),
        ("api.example.com/x", "url: not an absolute URL"),
        ("https:///path", "url: empty host"),
        ("https://api.exa mple.com/", "url: contains whitespace"),
        ("https://api.example.com/\r\nX: y", "url: contains whitespace"),
        ("https://api.example.com\\@evil.com/", "url: contains a backslash"),
        ("https://api.example.com/a%2fb", "url: encoded '/'"),
        ("https://api.example.com/a%5Cb", "url: encoded '/'"),
        ("https://api.example.com/a%00", "url: encoded '/'"),
        ("https://api.example.com/a%zz", "url: malformed percent escape in the path"),
        ("https://api.example.com/a?b=%4", "url: malformed percent escape in the query"),
        ("https://api%2eexample.com/", "url: percent escapes in the host"),
        ("https://-bad-.example.com/", "url: host is not a valid DNS name"),
        ("https://a..b/", "url: host is not a valid"),
        ("https://" + "a" * 64 + ".com/", "url: host is not a valid"),
        ("https://x.com/" + "a" * 9000, "url: longer than"),
    ],
)
def test_refusals_name_the_problem(raw: str, reason: str) -> None:
    with pytest.raises(GrantRefused) as info:
        canonicalize(raw)
    assert info.value.reason.startswith(reason), info.value.reason


def test_options_for_local_services() -> None:
    url = canonicalize("https://127.0.0.1:8443/x", allow_ip_literal=True, allow_any_port=True)
    assert url.is_ip_literal and url.host == "127.0.0.1" and url.port == 8443
    v6 = canonicalize("https://[0:0::1]:9000/", allow_ip_literal=True, allow_any_port=True)
    assert str(v6) == "https://[::1]:9000/"
    assert canonicalize("http://example.com/", schemes=("https", "http")).port == 80


def test_pinned_url_keeps_everything_but_the_host() -> None:
    url = canonicalize("https://api.example.com:8443/a?b=1", allow_any_port=True)
    assert url.pinned(ipaddress.ip_address("93.184.216.34")) == "https://93.184.216.34:8443/a?b=1"
    assert url.pinned(ipaddress.ip_address("2001:db8::1")) == "https://[2001:db8::1]:8443/a?b=1"
    assert url.host_header == "api.example.com:8443"
    assert canonicalize("https://api.example.com/").host_header == "api.example.com"


def test_with_query_param_replaces_every_spelling() -> None:
    assert with_query_param(None, "key", "s/3=&") == "key=s%2F3%3D%26"
    assert with_query_param("a=1&key=x&k%65y=y&key&b=2", "key", "v") == "a=1&b=2&key=v"
    assert with_query_param("", "api_key", "v") == "api_key=v"


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("/v1/*", ["/v1/", "/v1/a", "/v1/a/b/c"], ["/v1", "/v2/a", "/", "/v1x/a"]),
        ("/*", ["/", "/a", "/a/b"], []),
        ("/repos/+/issues", ["/repos/octo/issues"], ["/repos//issues", "/repos/a/b/issues",
                                                      "/repos/octo/issues/1", "/repos/issues"]),
        ("/repos/+/+/*", ["/repos/a/b/", "/repos/a/b/c/d"], ["/repos/a/b", "/repos/a//x"]),
        ("/exact", ["/exact"], ["/exact/", "/exactly", "/EXACT"]),
        ("/%7euser/*", ["/~user/x"], ["/%7Euser/x"]),
    ],
)
def test_path_patterns(pattern: str, yes: list[str], no: list[str]) -> None:
    compiled = PathPattern(pattern)
    for path in yes:
        assert compiled.matches(path), path
    for path in no:
        assert not compiled.matches(path), path


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("v1/*", "starts with '/'"),
        ("/v1*", "'*' may only be the whole last segment"),
        ("/*/x", "'*' may only be the whole last segment"),
        ("/a+/b", "'+' must be a whole path segment"),
        ("/a/../b", "dot segments"),
        ("/a%2fb", "encoded"),
    ],
)
def test_bad_path_patterns(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        PathPattern(pattern)


def test_pattern_checks_the_canonical_path() -> None:
    # The agent cannot escape a pattern with dot segments or escapes.
    pattern = PathPattern("/v1/*")
    for raw in ("https://a.com/v1/../admin", "https://a.com/v1/%2e%2e/admin",
                "https://a.com/v1/./../admin"):
        assert not pattern.matches(canonicalize(raw).path)


def test_canonical_host() -> None:
    assert canonical_host("Example.COM.") == "example.com"
    assert canonical_host("my_host.local") == "my_host.local"
    with pytest.raises(GrantRefused):
        canonical_host("")
    with pytest.raises(GrantRefused):
        canonical_host("1.2.3.4")


@pytest.mark.parametrize(
    ("address", "allow_local", "ok"),
    [
        ("93.184.216.34", False, True),
        ("2606:2800:220:1:248:1893:25c8:1946", False, True),
        ("127.0.0.1", False, False),
        ("127.0.0.1", True, True),
        ("10.0.0.5", False, False),
        ("10.0.0.5", True, True),
        ("192.168.1.1", False, False),
        ("172.16.0.1", False, False),
        ("100.64.0.1", False, False),
        ("::1", False, False),
        ("::1", True, True),
        ("fd00::1", False, False),
        ("::ffff:127.0.0.1", False, False),
        ("::ffff:93.184.216.34", False, True),
        ("2002:7f00:1::", False, False),  # 6to4 wrapping 127.0.0.1
        ("169.254.169.254", False, False),
        ("169.254.169.254", True, False),  # cloud metadata: never
        ("fe80::1", True, False),
        ("0.0.0.0", True, False),
        ("224.0.0.1", True, False),
        ("240.0.0.1", True, False),
    ],
)
def test_address_checks(address: str, allow_local: bool, ok: bool) -> None:
    parsed = ipaddress.ip_address(address)
    if ok:
        assert check_addresses("h", [parsed], allow_local=allow_local) == parsed
    else:
        with pytest.raises(GrantRefused, match="^address: h resolves to"):
            check_addresses("h", [parsed], allow_local=allow_local)


def test_every_resolved_address_must_pass() -> None:
    public = ipaddress.ip_address("93.184.216.34")
    private = ipaddress.ip_address("10.0.0.1")
    with pytest.raises(GrantRefused):
        check_addresses("h", [public, private], allow_local=False)
    with pytest.raises(GrantRefused, match="no address"):
        check_addresses("h", [], allow_local=True)


def test_resolve_parses_and_deduplicates() -> None:
    got = resolve("h", 443, lambda host, port: ["10.0.0.1", "fe80::1%eth0", "10.0.0.1"])
    assert got == [ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("fe80::1")]
    with pytest.raises(GrantRefused, match="non-address"):
        resolve("h", 443, lambda host, port: ["not-an-ip"])
    with pytest.raises(GrantRefused, match="no address"):
        resolve("h", 443, lambda host, port: [])


def test_system_resolver_on_localhost() -> None:
    found = resolve("localhost", 443, system_resolver)
    assert all(a.is_loopback for a in found)
    with pytest.raises(GrantRefused, match="cannot resolve"):
        system_resolver("does-not-exist.invalid", 443)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_property_only_refusals_come_out(junk: str) -> None:
    """Any string either canonicalises (idempotently) or is refused with a reason."""
    for raw in (junk, "https://" + junk, "https://a.com/" + junk):
        try:
            url = canonicalize(raw)
        except GrantRefused as e:
            assert e.reason
            continue
        assert isinstance(url, CanonicalURL)
        again = canonicalize(str(url))
        assert again == url


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v1/..;/admin",
        "https://api.example.com/v1/%2e%2e;x=1/admin",
        "https://api.example.com/v1/.;/x",
    ],
)
def test_dot_segments_with_parameters_are_refused(url: str) -> None:
    # Tomcat and Spring drop ";params" before removing dot segments: "/v1/..;/admin"
    # matches "/v1/*" here but is "/admin" to such a server.
    with pytest.raises(GrantRefused, match="dot segment"):
        canonicalize(url)
