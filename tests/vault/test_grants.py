"""Capability grants: validation, persistence, atomic use counting, revocation."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from vault.errors import GrantRefused
from vault.grants import (
    BasicAuthInjection,
    CapabilityGrant,
    GrantStore,
    HeaderInjection,
    QueryInjection,
    header_injection,
)
from vault.handle import is_handle, new_handle

NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)


def make(**kw: Any) -> CapabilityGrant:
    base: dict[str, Any] = {
        "secret_name": "GITHUB_TOKEN",
        "injection": header_injection("Authorization: Bearer {}"),
        "methods": ["get", "POST"],
        "host": "API.GitHub.com",
        "path_pattern": "/repos/+/issues",
        "expires_at": NOW + timedelta(minutes=30),
        "max_uses": 3,
        "session_id": "s1",
        "approved_by": "alice",
        "approved_at": NOW,
    }
    base.update(kw)
    return CapabilityGrant(**base)


def test_grant_normalises_and_describes() -> None:
    g = make()
    assert g.methods == ("GET", "POST")
    assert g.host == "api.github.com"
    assert g.port == 443
    assert g.describe() == (
        "GET,POST https://api.github.com/repos/+/issues with secret GITHUB_TOKEN "
        "as Authorization header"
    )
    assert "\n" not in g.describe()
    assert make(methods="GET, delete").methods == ("DELETE", "GET")
    local = make(host="127.0.0.1", port=8443, allow_local=True)
    assert "127.0.0.1:8443" in local.describe()
    # Round trip through JSON (how the store keeps it).
    assert CapabilityGrant.model_validate_json(g.model_dump_json()) == g


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"methods": []}, "at least one method"),
        ({"methods": ["FETCH"]}, "unknown HTTP method"),
        ({"host": "1.2.3.4"}, "needs allow_local"),
        ({"host": "bad host"}, "invalid host"),
        ({"host": "user@x.com"}, "invalid host"),
        ({"path_pattern": "/a*"}, "'*' may only"),
        ({"path_pattern": "nope"}, "starts with '/'"),
        ({"expires_at": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"approved_at": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"max_uses": 0}, "greater than or equal to 1"),
        ({"port": 0}, "greater than 0"),
        ({"session_id": ""}, "at least 1"),
        ({"secret_name": ""}, "at least 1"),
        ({"extra": 1}, "Extra inputs"),
    ],
)
def test_invalid_grants_say_why(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("*", r"\*")):
        make(**kw)


def test_injections() -> None:
    h = header_injection("X-Api-Key:{}")
    assert h == HeaderInjection(header="X-Api-Key", template="{}")
    assert header_injection("Authorization: token {}").template == "token {}"
    for bad in ("no colon {}", "Authorization: Bearer", "Authorization: {} {}",
                "Authorization: {x}{}", "Bad Name: {}", "Host: {}", "Content-Length: {}",
                "X: a\r\nInjected: {}", "X: é {}"):
        with pytest.raises(ValueError):
            header_injection(bad)
    with pytest.raises(ValidationError):
        QueryInjection(param="a&b")
    with pytest.raises(ValidationError):
        QueryInjection(param="")
    with pytest.raises(ValidationError):
        BasicAuthInjection(username="a:b")
    g = make(injection={"kind": "query", "param": "api_key"})
    assert isinstance(g.injection, QueryInjection)


def test_store_round_trip_and_listing(tmp_path: Path) -> None:
    store = GrantStore(tmp_path / "keyless.db")
    a = store.add(make(), now=NOW)
    b = store.add(make(session_id="s2", max_uses=None), now=NOW + timedelta(seconds=1))
    assert is_handle(a.handle) and a.handle != b.handle
    got = store.get(a.handle)
    assert got is not None and got.grant == a.grant and got.uses_left == 3
    assert store.get(new_handle()) is None
    assert store.get("'; DROP TABLE capability_grants; --") is None
    assert [r.handle for r in store.for_session("s1")] == [a.handle]
    assert [r.handle for r in store.all()] == [a.handle, b.handle]
    info = a.info()
    assert info.handle == a.handle and info.uses_left == 3
    # A second store on the same file sees the same state.
    other = GrantStore(tmp_path / "keyless.db")
    assert other.get(b.handle) is not None
    store.close()
    other.close()


def test_consume_counts_down_and_refuses_with_reasons(tmp_path: Path) -> None:
    store = GrantStore(tmp_path / "keyless.db")
    rec = store.add(make(max_uses=2), now=NOW)
    assert store.consume(rec.handle, session_id="s1", now=NOW) == 1
    assert store.consume(rec.handle, session_id="s1", now=NOW) == 0
    with pytest.raises(GrantRefused, match="^uses: no uses left$"):
        store.consume(rec.handle, session_id="s1", now=NOW)
    unlimited = store.add(make(max_uses=None), now=NOW)
    for _ in range(5):
        assert store.consume(unlimited.handle, session_id="s1", now=NOW) is None
    with pytest.raises(GrantRefused, match="^handle: unknown"):
        store.consume(unlimited.handle, session_id="other", now=NOW)
    with pytest.raises(GrantRefused, match="^handle: unknown"):
        store.consume(new_handle(), session_id="s1", now=NOW)
    with pytest.raises(GrantRefused, match="^handle: unknown"):
        store.consume("not a handle", session_id="s1", now=NOW)
    with pytest.raises(GrantRefused, match="^expired"):
        store.consume(unlimited.handle, session_id="s1", now=NOW + timedelta(minutes=30))
    assert store.revoke(unlimited.handle, now=NOW)
    with pytest.raises(GrantRefused, match="^revoked"):
        store.consume(unlimited.handle, session_id="s1", now=NOW)
    assert not store.revoke("nonsense")


def test_active_and_revoke_session(tmp_path: Path) -> None:
    store = GrantStore(tmp_path / "keyless.db")
    a = store.add(make(), now=NOW)
    b = store.add(make(expires_at=NOW + timedelta(seconds=1)), now=NOW)
    c = store.add(make(session_id="s2"), now=NOW)
    assert {r.handle for r in store.active("s1", now=NOW)} == {a.handle, b.handle}
    assert [r.handle for r in store.active("s1", now=NOW + timedelta(seconds=5))] == [a.handle]
    assert store.revoke_session("s1", now=NOW) == sorted([a.handle, b.handle])
    assert store.revoke_session("s1", now=NOW) == []
    assert store.active("s1", now=NOW) == []
    assert [r.handle for r in store.active("s2", now=NOW)] == [c.handle]
    revoked = store.get(a.handle)
    assert revoked is not None and revoked.revoked_at == NOW


@pytest.mark.parametrize("separate_stores", [False, True])
def test_racing_consumers_get_exactly_max_uses(tmp_path: Path, separate_stores: bool) -> None:
    """One shared store (threads) or one store per thread (separate SQLite connections)."""
    path = tmp_path / "keyless.db"
    first = GrantStore(path)
    rec = first.add(make(max_uses=3), now=NOW)
    n = 16
    stores = [GrantStore(path) if separate_stores else first for _ in range(n)]
    barrier = threading.Barrier(n)
    results: list[object] = []
    lock = threading.Lock()

    def worker(store: GrantStore) -> None:
        barrier.wait()
        try:
            out: object = store.consume(rec.handle, session_id="s1", now=NOW)
        except GrantRefused as e:
            out = e.reason
        with lock:
            results.append(out)

    threads = [threading.Thread(target=worker, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r for r in results if isinstance(r, int)) == [0, 1, 2]
    assert results.count("uses: no uses left") == n - 3
    final = first.get(rec.handle)
    assert final is not None and final.uses_left == 0


def test_unopenable_database_is_a_vault_error(tmp_path: Path) -> None:
    from vault.errors import VaultError

    (tmp_path / "dir.db").mkdir()
    with pytest.raises(VaultError, match="cannot open the grants database"):
        GrantStore(tmp_path / "dir.db")
