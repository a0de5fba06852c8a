"""``keyless vault grant | grants | revoke | audit``: capability grants and the audit log.

These commands join the ``keyless vault`` group through
:func:`register_vault_commands`, which :mod:`app.cli_vault` calls.

- ``grant NAME --host H --path P --inject SPEC [--methods M,M] [--ttl 1h]
  [--uses N] [--session ID] [--port N] [--allow-local]`` unlocks the vault (to
  check that the secret exists; its value is never read), stores the grant and
  prints the handle and the one line the agent will see.
- ``grants [--session ID] [--active]`` lists the stored grants and their state;
  no unlock needed.
- ``revoke HANDLE`` or ``revoke --session ID`` revokes one grant or every live
  grant of a session; no unlock needed.
- ``audit [--kind K] [--limit N] [--verify]`` prints the latest audit entries,
  oldest first; with ``--verify`` also the hash-chain check, and the exit
  status is ``ExitStatus.ERROR`` (1) when the chain is broken.

An argument that is wrong, whether argparse or the grant's own checks find it,
is a usage error (``ExitStatus.USAGE``) named before the vault is unlocked.

Every change goes through :class:`vault.broker.Broker`, so the audit log
records grants and revocations exactly as it does for the app.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.cli_common import (
    CliError,
    ExitStatus,
    non_negative_int,
    positive_int,
    valid_session_id,
    whole_number,
)
from app.cli_vault import Terminal, open_unlocked, set_vault_command

if TYPE_CHECKING:
    from vault.audit import AuditEntry, AuditLog
    from vault.grants import (
        BasicAuthInjection,
        GrantRecord,
        GrantStore,
        HeaderInjection,
        QueryInjection,
    )

DEFAULT_SESSION = "cli"
"""Session of grants made from the command line unless ``--session`` says otherwise."""

DEFAULT_TTL = "1h"
MAX_TTL = timedelta(days=365)
DEFAULT_AUDIT_LIMIT = 50

_TTL_RE = re.compile(r"(?:\d+[smhd])+")
_TTL_PART_RE = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Grant fields named as the user typed them, for error messages.
_FIELD_OPTIONS = {
    "secret_name": "NAME",
    "injection": "--inject",
    "methods": "--methods",
    "host": "--host",
    "port": "--port",
    "path_pattern": "--path",
    "expires_at": "--ttl",
    "max_uses": "--uses",
    "session_id": "--session",
}
# C0/C1 controls and DEL: audit text can come from servers (URLs, reasons);
# printing them raw would let a server drive the user's terminal.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def register_vault_commands(subparsers: Any) -> None:
    """Add ``grant``, ``grants``, ``revoke`` and ``audit`` to the ``keyless vault`` group.

    Args:
        subparsers: The ``vault`` group's subparsers action.
    """
    grant = subparsers.add_parser(
        "grant",
        help="let an agent session use a secret for one API scope",
        description=(
            "Grant a capability: the agent gets an opaque handle, the broker injects the "
            "secret only into requests inside this scope."
        ),
    )
    grant.add_argument("name", metavar="NAME", help="the vault secret to grant")
    grant.add_argument("--host", required=True, help="the exact https host (no wildcards)")
    grant.add_argument(
        "--port", type=port, default=443, help="the exact port (default: 443)"
    )
    grant.add_argument(
        "--path",
        required=True,
        help="path pattern: '+' is one segment, a final '*' any rest (e.g. '/repos/+/issues/*')",
    )
    grant.add_argument(
        "--methods", default="GET", help="comma-separated HTTP methods (default: GET)"
    )
    grant.add_argument(
        "--inject",
        required=True,
        metavar="SPEC",
        help=(
            "where the secret goes: 'header:Authorization: Bearer {}', 'query:PARAM' "
            "or 'basic:USER' (basic auth with the secret as password)"
        ),
    )
    grant.add_argument(
        "--ttl",
        type=ttl,
        default=DEFAULT_TTL,
        help=f"lifetime such as 90s, 30m, 1h, 7d or 1h30m; 'none' = until revoked "
        f"(default: {DEFAULT_TTL})",
    )
    grant.add_argument(
        "--uses", type=positive_int, default=None, help="maximum uses (default: unlimited)"
    )
    grant.add_argument(
        "--session",
        type=valid_session_id,
        default=DEFAULT_SESSION,
        help=f"the agent session the grant belongs to (default: {DEFAULT_SESSION!r})",
    )
    grant.add_argument(
        "--allow-local",
        action="store_true",
        help="allow a loopback or private address (a local service); off by default",
    )
    _add_db_option(grant)
    set_vault_command(grant, _grant)

    grants = subparsers.add_parser("grants", help="list capability grants and their state")
    grants.add_argument("--session", help="only this session's grants")
    grants.add_argument(
        "--active", action="store_true", help="only grants that can still be used"
    )
    _add_db_option(grants)
    set_vault_command(grants, _grants)

    revoke = subparsers.add_parser(
        "revoke", help="revoke a grant (or every grant of a session)"
    )
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "handle", nargs="?", type=capability_handle, metavar="HANDLE", help="the cap_... handle"
    )
    target.add_argument("--session", help="revoke every live grant of this session")
    _add_db_option(revoke)
    set_vault_command(revoke, _revoke)

    audit = subparsers.add_parser("audit", help="show the audit log and check its hash chain")
    audit.add_argument("--kind", help="only entries of this kind (grant, redeem, refuse, ...)")
    audit.add_argument(
        "--limit",
        type=non_negative_int,
        default=DEFAULT_AUDIT_LIMIT,
        help=f"show at most this many of the latest entries (default: {DEFAULT_AUDIT_LIMIT})",
    )
    audit.add_argument(
        "--verify",
        action="store_true",
        help="recompute the hash chain; exit status 1 if a row was edited or deleted",
    )
    _add_db_option(audit)
    set_vault_command(audit, _audit)


def _add_db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", type=Path, help="the database holding grants and audit log (default: keyless.db)"
    )


# ------------------------------------------------------------ argument types


def ttl(text: str) -> timedelta | None:
    """Parse ``90s``, ``30m``, ``1h``, ``7d``, ``1h30m`` or ``none`` (None: until revoked)."""
    if text.strip().lower() == "none":
        return None
    if not _TTL_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90s, 30m, 1h, 7d or 1h30m (or 'none'), got {text!r}"
        )
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _TTL_PART_RE.findall(text))
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the duration must be longer than 0 s")
    if seconds > MAX_TTL.total_seconds():
        raise argparse.ArgumentTypeError(f"the duration is longer than {MAX_TTL.days} days")
    return timedelta(seconds=seconds)


def port(text: str) -> int:
    """A TCP port, 1 to 65535."""
    value = whole_number(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return value


def capability_handle(text: str) -> str:
    """A ``cap_`` handle (``cap_`` and 32 hex digits), shown escaped when it is not one."""
    from vault.handle import is_handle

    if not is_handle(text):
        raise argparse.ArgumentTypeError(
            f"{_clean(text[:80])!r} is not a capability handle ('cap_' and 32 hex digits)"
        )
    return text


def _injection(spec: str) -> HeaderInjection | QueryInjection | BasicAuthInjection:
    """Parse ``--inject``: ``header:Name: template``, ``query:PARAM`` or ``basic:USER``.

    Raises:
        CliError: The text names no known kind or the kind's value is invalid (usage).
    """
    from pydantic import ValidationError

    from vault.grants import BasicAuthInjection, QueryInjection, header_injection

    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    try:
        if sep and kind == "header":
            return header_injection(rest.strip())
        if sep and kind == "query":
            return QueryInjection(param=rest.strip())
        if sep and kind == "basic":
            return BasicAuthInjection(username=rest)
    except ValidationError as e:
        raise CliError(f"--inject: {_first_problem(e)}", ExitStatus.USAGE) from None
    except ValueError as e:
        raise CliError(f"--inject: {e}", ExitStatus.USAGE) from None
    raise CliError(
        f"--inject: expected 'header:Name: template with {{}}', 'query:PARAM' or "
        f"'basic:USER', got {spec!r}",
        ExitStatus.USAGE,
    )


def _first_problem(error: Any) -> str:
    message = str(error.errors()[0]["msg"])
    return message.removeprefix("Value error, ")


def _build_grant(args: argparse.Namespace, now: datetime) -> Any:
    """The :class:`vault.grants.CapabilityGrant` the arguments describe.

    Raises:
        CliError: An argument is invalid (usage); the message names it.
    """
    from pydantic import ValidationError

    from vault.grants import CapabilityGrant

    injection = _injection(args.inject)
    if any(not m.strip() for m in args.methods.split(",")):
        raise CliError(
            f"--methods: expected comma-separated method names such as GET,POST, "
            f"got {args.methods!r}",
            ExitStatus.USAGE,
        )
    try:
        return CapabilityGrant(
            secret_name=args.name,
            injection=injection,
            methods=args.methods,
            host=args.host,
            port=args.port,
            path_pattern=args.path,
            expires_at=None if args.ttl is None else now + args.ttl,
            max_uses=args.uses,
            session_id=args.session,
            approved_by="cli",
            approved_at=now,
            allow_local=args.allow_local,
        )
    except ValidationError as e:
        problem = e.errors()[0]
        loc = problem["loc"]
        # The host is checked by a model-level validator, which has no field.
        option = _FIELD_OPTIONS.get(str(loc[0]), "--host") if loc else "--host"
        raise CliError(f"{option}: {_first_problem(e)}", ExitStatus.USAGE) from None


# ------------------------------------------------------------------ storage


class _NoSecrets:
    """The secret source for commands that must never read a secret (revoke)."""

    def get(self, name: str) -> bytearray:
        from vault.errors import VaultLockedError

        raise VaultLockedError("this command does not unlock the vault")

    def names(self) -> list[str]:
        return []

    @property
    def is_locked(self) -> bool:
        return True


def _db_path(args: argparse.Namespace) -> Path:
    if args.db is not None:
        return Path(args.db)
    from app.paths import default_paths

    return default_paths().ensure().database


def _open_stores(args: argparse.Namespace) -> tuple[GrantStore, AuditLog]:
    from vault.audit import AuditLog
    from vault.grants import GrantStore

    path = _db_path(args)
    grants = GrantStore(path)
    try:
        return grants, AuditLog(path)
    except BaseException:
        grants.close()
        raise


# ----------------------------------------------------------------- printing


def _clean(text: object) -> str:
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def _when(value: datetime | None, *, never: str) -> str:
    if value is None:
        return never
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _state(record: GrantRecord, now: datetime) -> str:
    refusal = record.refusal(now)
    if refusal is None:
        return "active"
    return {"revoked": "revoked", "expired": "expired", "uses": "used up"}.get(
        refusal.partition(":")[0], refusal
    )


def _uses(record: GrantRecord) -> str:
    if record.grant.max_uses is None:
        return "unlimited"
    return f"{record.uses_left}/{record.grant.max_uses}"


def _scope(record: GrantRecord) -> str:
    grant = record.grant
    netloc = grant.host if grant.port == 443 else f"{grant.host}:{grant.port}"
    local = ", local allowed" if grant.allow_local else ""
    return (
        f"{','.join(grant.methods)} https://{netloc}{grant.path_pattern} "
        f"({grant.injection.describe()}{local})"
    )


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def _entry_line(entry: AuditEntry) -> str:
    parts = [f"#{entry.id}", _when(entry.ts, never=""), entry.kind]
    for label, value in (
        ("session", entry.session_id),
        ("tool", entry.tool),
        ("decision", entry.decision),
        ("reason", entry.reason),
    ):
        if value is not None:
            parts.append(f"{label}={value}")
    if entry.details:
        parts.append(json.dumps(entry.details, sort_keys=True, ensure_ascii=False))
    return _clean("  ".join(parts))


# ----------------------------------------------------------------- commands


def _grant(args: argparse.Namespace, terminal: Terminal) -> int:
    from vault.broker import Broker
    from vault.errors import SecretNotFoundError

    now = datetime.now(UTC)
    # Every argument is checked before the passphrase is asked for.
    grant = _build_grant(args, now)
    grants, audit = _open_stores(args)
    try:
        vault, _ = open_unlocked(args, terminal)
        try:
            with Broker(vault, grants, audit) as broker:
                info = broker.grant(grant, now=now)
        except SecretNotFoundError as e:
            raise CliError(f"NAME: {e}") from None
        finally:
            vault.lock()
    finally:
        grants.close()
        audit.close()
    print(info.handle)
    print(_clean(info.description))
    uses = "unlimited uses" if info.uses_left is None else f"{info.uses_left} uses"
    expiry = _when(info.expires_at, never="never (until revoked or the session ends)")
    print(f"session {_clean(grant.session_id)}; {uses}; expires {expiry}")
    return 0


def _grants(args: argparse.Namespace, terminal: Terminal) -> int:
    now = datetime.now(UTC)
    grants, audit = _open_stores(args)
    try:
        records = grants.all() if args.session is None else grants.for_session(args.session)
    finally:
        grants.close()
        audit.close()
    if args.active:
        records = [r for r in records if r.refusal(now) is None]
    if not records:
        terminal.say("no grants" + (" in this session" if args.session is not None else ""))
        return 0
    rows = [
        [
            r.handle,
            r.grant.secret_name,
            _scope(r),
            _uses(r),
            _when(r.grant.expires_at, never="session end"),
            _state(r, now),
        ]
        for r in records
    ]
    header = ["HANDLE", "SECRET", "SCOPE", "USES LEFT", "EXPIRES", "STATE"]
    for line in _table(header, [[_clean(c) for c in row] for row in rows]):
        print(line)
    return 0


def _revoke(args: argparse.Namespace, terminal: Terminal) -> int:
    from vault.broker import Broker

    grants, audit = _open_stores(args)
    try:
        with Broker(_NoSecrets(), grants, audit) as broker:
            if args.handle is None:
                handles = broker.end_session(args.session)
                print(
                    f"revoked {len(handles)} grant{'s' if len(handles) != 1 else ''} "
                    f"of session {_clean(args.session)}"
                )
                for handle in handles:
                    print(handle)
                return 0
            if grants.get(args.handle) is None:
                raise CliError(f"HANDLE: no grant with handle {args.handle}")
            if broker.revoke(args.handle):
                print(f"revoked {args.handle}")
            else:
                print(f"{args.handle} was already revoked")
            return 0
    finally:
        grants.close()
        audit.close()


def _audit(args: argparse.Namespace, terminal: Terminal) -> int:
    from vault.audit import AuditLog

    audit = AuditLog(_db_path(args))
    try:
        entries = audit.entries(kind=args.kind, limit=args.limit)
        check = audit.verify() if args.verify else None
    finally:
        audit.close()
    if not entries and args.limit > 0:
        terminal.say("no audit entries" + (f" of kind {_clean(args.kind)!r}" if args.kind else ""))
    for entry in reversed(entries):  # oldest first, like a log
        print(_entry_line(entry))
    if check is None:
        return 0
    if check.ok:
        print(f"audit chain: ok ({check.n_entries} entries, head {check.head[:16]})")
        return 0
    print(
        f"audit chain: BROKEN at entry #{check.first_bad_id}: {_clean(check.problem)} "
        f"({check.n_entries} entries)"
    )
    return ExitStatus.ERROR
