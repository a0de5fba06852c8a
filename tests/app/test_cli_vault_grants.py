"""``keyless vault grant | grants | revoke | audit`` through ``app.cli.main``.

Real components throughout: a passphrase-mode vault with a low-cost KDF, and
the real GrantStore, AuditLog and Broker on a tmp ``keyless.db``. Standard
input is a pipe, so the passphrase is its first line.
"""

from __future__ import annotations

import io
import os
import re
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from app.cli import main
from app.cli_common import ExitStatus
from app.cli_vault_grants import ttl
from app.paths import default_paths
from vault._crypto import Argon2Params
from vault.audit import AuditLog
from vault.broker import Broker, HttpCall
from vault.errors import AuditLogError, GrantRefused, VaultError
from vault.grants import CapabilityGrant, GrantStore, HeaderInjection, QueryInjection
from vault.handle import is_handle
from vault.keystore import NoKeyring
from vault.redact import secret_forms
from vault.store import Vault

PASS = "correct horse battery staple"
SECRET = b"ghp_cliGrantSecret0123456789abcdef"
NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
GITHUB = [
    "--host", "api.github.com",
    "--methods", "GET,POST",
    "--path", "/repos/+/issues/*",
    "--inject", "header:Authorization: Bearer {}",
    "--ttl", "1h",
    "--uses", "10",
]  # fmt: skip


@pytest.fixture(autouse=True)
def no_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYLESS_NO_KEYRING", "1")


@pytest.fixture
def vault_file(tmp_path: Path) -> Path:
    path = tmp_path / "vault.kls"
    vault = Vault.create(
        path,
        passphrase=PASS,
        use_keyring=False,
        keystore=NoKeyring(),
        kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64),
        idle_timeout=None,
    )
    vault.add("GITHUB_TOKEN", SECRET)
    vault.lock()
    return path


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "keyless.db"


def run(
    monkeypatch: pytest.MonkeyPatch,
    vault_file: Path,
    *args: str,
    db: Path | None = None,
    stdin: bytes = b"",
) -> int:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    extra = [] if db is None else ["--db", str(db)]
    return main(["vault", "--vault", str(vault_file), *args, *extra])


def grant(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, db: Path | None, *args: str
) -> int:
    return run(
        monkeypatch, vault_file, "grant", "GITHUB_TOKEN", *args, db=db,
        stdin=f"{PASS}\n".encode(),
    )  # fmt: skip


def assert_no_secret(text: str | bytes) -> None:
    data = text.encode("utf-8") if isinstance(text, str) else text
    for form in secret_forms(SECRET):
        assert form.encode("utf-8") not in data


def broker_for(vault_file: Path, db: Path, **kwargs: object) -> tuple[Broker, Vault]:
    vault = Vault.open(vault_file, keystore=NoKeyring(), idle_timeout=None)
    vault.unlock(PASS)
    return Broker(vault, GrantStore(db), AuditLog(db), **kwargs), vault  # type: ignore[arg-type]


# -------------------------------------------------------------------- grant


def test_grant_prints_the_handle_and_description_and_stores_the_grant(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert grant(monkeypatch, vault_file, db, *GITHUB) == 0
    out, err = capsys.readouterr()
    handle, description, summary = out.splitlines()
    assert is_handle(handle)
    assert description == (
        "GET,POST https://api.github.com/repos/+/issues/* "
        "with secret GITHUB_TOKEN as Authorization header"
    )
    assert summary.startswith("session cli; 10 uses; expires ")
    record = GrantStore(db).get(handle)
    assert record is not None
    g = record.grant
    assert (g.secret_name, g.methods, g.host, g.port, g.path_pattern) == (
        "GITHUB_TOKEN", ("GET", "POST"), "api.github.com", 443, "/repos/+/issues/*",
    )  # fmt: skip
    assert g.injection == HeaderInjection(header="Authorization", template="Bearer {}")
    assert (g.max_uses, record.uses_left, g.session_id, g.approved_by) == (10, 10, "cli", "cli")
    assert g.expires_at is not None and g.expires_at - g.approved_at == timedelta(hours=1)
    assert not g.allow_local
    (entry,) = AuditLog(db).entries()
    assert (entry.kind, entry.details["handle"], entry.details["approved_by"]) == (
        "grant", handle, "cli",
    )  # fmt: skip
    assert_no_secret(out + err)
    assert_no_secret(db.read_bytes())


def test_a_cli_grant_is_redeemed_by_the_broker_inside_its_scope_only(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--host", "127.0.0.1", "--port", "8443", "--path", "/v1/*", "--inject",
            "query:api_key", "--ttl", "none", "--uses", "1", "--session", "s9", "--allow-local"]
    assert grant(monkeypatch, vault_file, db, *args) == 0
    handle = capsys.readouterr().out.splitlines()[0]
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, text="fine")

    broker, vault = broker_for(vault_file, db, transport=httpx.MockTransport(answer))
    with pytest.raises(GrantRefused, match="path"):
        broker.call(handle, HttpCall(url="https://127.0.0.1:8443/v2/x"), session_id="s9", now=NOW)
    with pytest.raises(GrantRefused, match="handle"):
        broker.call(handle, HttpCall(url="https://127.0.0.1:8443/v1/x"), session_id="s1", now=NOW)
    response = broker.call(
        handle, HttpCall(url="https://127.0.0.1:8443/v1/x"), session_id="s9", now=NOW
    )
    assert response.status == 200 and response.body == "fine"
    (request,) = sent
    assert parse_qs(urlsplit(str(request.url)).query)["api_key"] == [SECRET.decode()]
    with pytest.raises(GrantRefused, match="uses"):  # --uses 1
        broker.call(handle, HttpCall(url="https://127.0.0.1:8443/v1/x"), session_id="s9", now=NOW)
    broker.close()
    vault.lock()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--path": "/repos/+/issues*"}, "--path: '*' may only be the whole last segment"),
        ({"--path": "repos/*"}, "--path: a path pattern starts with '/'"),
        ({"--methods": "GET,FETCH"}, "--methods: unknown HTTP method(s): FETCH"),
        ({"--methods": "GET,"}, "--methods: expected comma-separated method names"),
        ({"--host": "10.0.0.1"}, "--host: an IP address as host needs allow_local"),
        ({"--host": "bad host"}, "--host: invalid host"),
        ({"--inject": "bearer"}, "--inject: expected 'header:Name: template with {}'"),
        ({"--inject": "header:Authorization"}, "--inject: a header injection reads"),
        ({"--inject": "header:Host: {}"}, "--inject: the Host header cannot carry a secret"),
        ({"--inject": "header:X-Key: {} {}"}, "--inject: a header template holds exactly one"),
        ({"--inject": "query:a=b"}, "--inject: not a usable query parameter name"),
        ({"--inject": "basic:a:b"}, "--inject: a basic-auth user name cannot contain ':'"),
    ],
)
def test_bad_grant_arguments_are_named_before_any_unlock(
    monkeypatch: pytest.MonkeyPatch,
    vault_file: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, str],
    message: str,
) -> None:
    args = list(GITHUB) + ["--session", "s1"]
    for option, value in change.items():
        args[args.index(option) + 1] = value
    # No passphrase on stdin: had the command tried to unlock, it would say so.
    # A wrong argument is a usage error, whether argparse or the grant's checks find it.
    status = run(monkeypatch, vault_file, "grant", "GITHUB_TOKEN", *args, db=db)
    assert status == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert f"keyless vault grant: error: {message}" in err
    assert "passphrase" not in err
    assert GrantStore(db).all() == []
    assert AuditLog(db).entries() == []


def test_unknown_secret_and_wrong_passphrase_store_nothing(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stdin = f"{PASS}\n".encode()
    assert run(monkeypatch, vault_file, "grant", "NOPE", *GITHUB, db=db, stdin=stdin) == 1
    assert "NAME: no secret named 'NOPE' in the vault" in capsys.readouterr().err
    assert run(monkeypatch, vault_file, "grant", "GITHUB_TOKEN", *GITHUB, db=db,
               stdin=b"wrong\n") == 1  # fmt: skip
    assert "passphrase" in capsys.readouterr().err
    assert GrantStore(db).all() == []
    assert AuditLog(db).entries() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ttl", "5y"], "argument --ttl: expected a duration such as 90s"),
        (["--ttl", "0m"], "argument --ttl: the duration must be longer than 0 s"),
        (["--ttl", "400d"], "argument --ttl: the duration is longer than 365 days"),
        (["--uses", "0"], "argument --uses: expected a whole number of at least 1"),
        (["--uses", "ten"], "argument --uses: expected a whole number, got 'ten'"),
        (["--port", "70000"], "argument --port: expected a port from 1 to 65535"),
        (["--session", ""], "argument --session: invalid session id ''"),
        (["--session", "a/b"], "argument --session: invalid session id 'a/b'"),
    ],
)
def test_malformed_numbers_and_durations_are_usage_errors(
    monkeypatch: pytest.MonkeyPatch,
    vault_file: Path,
    db: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    with pytest.raises(SystemExit) as info:
        grant(monkeypatch, vault_file, db, *GITHUB, *args)
    assert info.value.code == ExitStatus.USAGE
    assert f"keyless vault grant: error: {message}" in capsys.readouterr().err
    assert not db.exists()


def test_ttl_parsing() -> None:
    assert ttl("90s") == timedelta(seconds=90)
    assert ttl("1h30m") == timedelta(minutes=90)
    assert ttl("7d") == timedelta(days=7)
    assert ttl("None") is None


def test_grant_uses_the_data_dir_database_by_default(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert grant(monkeypatch, vault_file, None, *GITHUB) == 0
    handle = capsys.readouterr().out.splitlines()[0]
    assert GrantStore(default_paths().database).get(handle) is not None


# ------------------------------------------------------------ grants, revoke


def _grant_obj(**changes: object) -> CapabilityGrant:
    fields: dict[str, object] = {
        "secret_name": "GITHUB_TOKEN",
        "injection": QueryInjection(param="key"),
        "methods": ("GET",),
        "host": "api.example.com",
        "path_pattern": "/v1/*",
        "session_id": "s1",
        "approved_by": "test",
        "approved_at": NOW,
    }
    fields.update(changes)
    return CapabilityGrant.model_validate(fields)


def _rows(out: str) -> dict[str, list[str]]:
    """Table rows by handle; columns are two or more spaces apart."""
    lines = out.splitlines()
    columns = ["HANDLE", "SECRET", "SCOPE", "USES LEFT", "EXPIRES", "STATE"]
    assert re.split(r"\s{2,}", lines[0]) == columns
    rows = [re.split(r"\s{2,}", line) for line in lines[1:]]
    assert all(len(row) == len(columns) for row in rows)
    return {row[0]: row for row in rows}


def test_grants_table_shows_uses_expiry_and_state(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    later = datetime.now(UTC) + timedelta(hours=2)
    broker, vault = broker_for(vault_file, db)
    active = broker.grant(_grant_obj(max_uses=5, expires_at=later)).handle
    expired = broker.grant(_grant_obj(expires_at=NOW - timedelta(days=1))).handle
    revoked = broker.grant(_grant_obj(session_id="s2")).handle
    used_up = broker.grant(_grant_obj(max_uses=1)).handle
    broker.revoke(revoked)
    GrantStore(db).consume(used_up, session_id="s1", now=datetime.now(UTC))
    broker.close()
    vault.lock()

    assert run(monkeypatch, vault_file, "grants", db=db) == 0
    rows = _rows(capsys.readouterr().out)
    assert set(rows) == {active, expired, revoked, used_up}
    assert rows[active][1:] == [
        "GITHUB_TOKEN",
        "GET https://api.example.com/v1/* (query parameter 'key')",
        "5/5",
        later.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "active",
    ]
    assert rows[expired][3:] == ["unlimited", "2026-11-26 06:00:00 UTC", "expired"]
    assert rows[revoked][3:] == ["unlimited", "session end", "revoked"]
    assert rows[used_up][3:] == ["0/1", "session end", "used up"]

    assert run(monkeypatch, vault_file, "grants", "--active", db=db) == 0
    assert set(_rows(capsys.readouterr().out)) == {active}
    assert run(monkeypatch, vault_file, "grants", "--session", "s2", db=db) == 0
    assert set(_rows(capsys.readouterr().out)) == {revoked}
    assert run(monkeypatch, vault_file, "grants", "--session", "s3", db=db) == 0
    out, err = capsys.readouterr()
    assert out == "" and "no grants in this session" in err


def test_revoke_a_handle_then_the_broker_refuses_it(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert grant(monkeypatch, vault_file, db, *GITHUB, "--session", "s1") == 0
    handle = capsys.readouterr().out.splitlines()[0]
    # Revoking needs no passphrase (stdin is empty).
    assert run(monkeypatch, vault_file, "revoke", handle, db=db) == 0
    assert capsys.readouterr().out == f"revoked {handle}\n"
    assert run(monkeypatch, vault_file, "revoke", handle, db=db) == 0
    assert "already revoked" in capsys.readouterr().out
    record = GrantStore(db).get(handle)
    assert record is not None and record.revoked_at is not None
    entries = AuditLog(db).entries("revoke")
    assert [e.details for e in entries] == [
        {"handle": handle, "revoked": False},
        {"handle": handle, "revoked": True},
    ]
    broker, vault = broker_for(vault_file, db)
    with pytest.raises(GrantRefused, match="revoked"):
        broker.call(
            handle, HttpCall(url="https://api.github.com/repos/o/issues/1"),
            session_id="s1", now=datetime.now(UTC),
        )  # fmt: skip
    broker.close()
    vault.lock()


def test_revoke_errors_name_the_handle(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:  # a malformed handle is a usage error
        run(monkeypatch, vault_file, "revoke", "cap_nothex", db=db)
    assert info.value.code == ExitStatus.USAGE
    assert "argument HANDLE: 'cap_nothex' is not a capability handle" in capsys.readouterr().err
    unknown = "cap_" + "0" * 32
    assert run(monkeypatch, vault_file, "revoke", unknown, db=db) == 1
    assert f"HANDLE: no grant with handle {unknown}" in capsys.readouterr().err
    assert AuditLog(db).entries() == []
    with pytest.raises(SystemExit):  # neither a handle nor --session
        run(monkeypatch, vault_file, "revoke", db=db)
    assert "one of the arguments HANDLE --session is required" in capsys.readouterr().err


def test_revoke_a_whole_session(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    handles = []
    for session in ("s1", "s1", "s2"):
        assert grant(monkeypatch, vault_file, db, *GITHUB, "--session", session) == 0
        handles.append(capsys.readouterr().out.splitlines()[0])
    assert run(monkeypatch, vault_file, "revoke", "--session", "s1", db=db) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "revoked 2 grants of session s1"
    assert sorted(lines[1:]) == sorted(handles[:2])
    store = GrantStore(db)
    assert [store.get(h).revoked_at is not None for h in handles] == [True, True, False]  # type: ignore[union-attr]


# -------------------------------------------------------------------- audit


def _fill(db: Path) -> AuditLog:
    log = AuditLog(db)
    log.record("grant", session_id="s1", decision="allow", details={"handle": "cap_a"})
    log.record("refuse", session_id="s1", tool="http_request", decision="deny",
               reason="host: evil.example is not api.example.com")  # fmt: skip
    log.record("revoke", session_id="s1", details={"handle": "cap_a", "revoked": True})
    return log


def test_audit_prints_entries_oldest_first_and_filters(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(db)
    assert run(monkeypatch, vault_file, "audit", db=db) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["#1", "#2", "#3"]
    assert "refuse  session=s1  tool=http_request  decision=deny  reason=host: evil.example" in (
        lines[1]
    )
    assert lines[2].endswith('{"handle": "cap_a", "revoked": true}')
    assert run(monkeypatch, vault_file, "audit", "--kind", "refuse", db=db) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["#2"]
    assert run(monkeypatch, vault_file, "audit", "--limit", "2", db=db) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["#2", "#3"]
    assert run(monkeypatch, vault_file, "audit", "--kind", "nothing", db=db) == 0
    out, err = capsys.readouterr()
    assert out == "" and "no audit entries of kind 'nothing'" in err
    with pytest.raises(SystemExit):
        run(monkeypatch, vault_file, "audit", "--limit", "-1", db=db)
    assert "argument --limit: expected a whole number of at least 0" in capsys.readouterr().err


def test_audit_verify_passes_then_catches_an_edited_row(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _fill(db)
    head = log.verify().head
    assert run(monkeypatch, vault_file, "audit", "--verify", db=db) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"audit chain: ok (3 entries, head {head[:16]})"
    )
    # Someone with the file edits history behind the app's back.
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("UPDATE audit_log SET reason = 'nothing to see' WHERE id = 2")
    conn.commit()
    conn.close()
    assert run(monkeypatch, vault_file, "audit", "--verify", db=db) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == "audit chain: BROKEN at entry #2: row was edited (3 entries)"
    # Without --verify the listing still works (and says nothing about the chain).
    assert run(monkeypatch, vault_file, "audit", db=db) == 0
    assert "audit chain" not in capsys.readouterr().out


def test_audit_verify_catches_a_deleted_last_row(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(db)
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER audit_log_no_delete")
    conn.execute("DELETE FROM audit_log WHERE id = 3")
    conn.commit()
    conn.close()
    assert run(monkeypatch, vault_file, "audit", "--verify", "--limit", "0", db=db) == 1
    assert capsys.readouterr().out == (
        "audit chain: BROKEN at entry #3: rows after the last one were deleted (2 entries)\n"
    )


def test_audit_escapes_terminal_control_characters(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    AuditLog(db).record(
        "refuse", reason="redirect to https://x/\x1b]0;owned\x07\x1b[2J", details={"u": "a\rb"}
    )
    assert run(monkeypatch, vault_file, "audit", db=db) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "\\x1b]0;owned\\x07\\x1b[2J" in out


def test_unopenable_database_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, vault_file: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    folder = tmp_path / "a-directory.db"
    folder.mkdir()
    with pytest.raises(AuditLogError) as info:
        AuditLog(folder)
    assert isinstance(info.value, VaultError)
    for command in (["audit"], ["grants"], ["revoke", "--session", "s1"]):
        assert run(monkeypatch, vault_file, *command, db=folder) == 1
        assert f"cannot open the {'audit log' if command == ['audit'] else 'grants database'}" in (
            capsys.readouterr().err
        )


@pytest.mark.keyring
def test_grant_with_a_keyring_vault_needs_no_passphrase(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.environ.get("KEYLESS_SECRET_SERVICE") != "1":
        pytest.skip("needs a real Secret Service (KEYLESS_SECRET_SERVICE=1)")
    monkeypatch.delenv("KEYLESS_NO_KEYRING")
    path = tmp_path / "keyring-vault.kls"
    assert run(monkeypatch, path, "init", "--no-passphrase") == 0
    assert run(monkeypatch, path, "add", "GITHUB_TOKEN", stdin=SECRET) == 0
    capsys.readouterr()
    # Empty stdin: a passphrase prompt would fail the command.
    assert run(monkeypatch, path, "grant", "GITHUB_TOKEN", *GITHUB, db=db) == 0
    handle = capsys.readouterr().out.splitlines()[0]
    record = GrantStore(db).get(handle)
    assert record is not None and record.grant.secret_name == "GITHUB_TOKEN"
