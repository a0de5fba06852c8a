"""``keyless sessions``: the recorded sessions, their transcripts and errands.

Subcommands: ``list``, ``show ID``, ``rm ID``, ``close ID``. ``show`` prints
the transcript as the agent saw it (tool results redacted by the host before
they were recorded), each errand's state, and the session's capability grants.
An interrupted errand is named with the command that resumes it
(``keyless run --resume ERRAND``); ``keyless run --session ID`` continues a
session. ``close`` ends a session: its session-level notes are distilled into
the project's memory (untrusted notes go to the review queue) and it is
marked closed. The model merges them with the project's notes when it can be
opened (in its own process, as ``keyless memory consolidate`` does);
``--no-model``, or a model that cannot be opened, promotes them as they are.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import IO, Any

from app import cli_memory
from app.cli_common import CliError, ExitStatus, set_command, valid_session_id
from app.paths import default_paths
from app.services import AppServices
from app.sessions import MessageRecord, SessionStore, SessionStoreError, close_session


def register(subparsers: Any) -> None:
    """Add the ``sessions`` command group to the ``keyless`` parser."""
    parser = subparsers.add_parser(
        "sessions",
        help="list, show, remove and close recorded sessions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="sessions_command", metavar="COMMAND", required=True)
    listing = commands.add_parser("list", help="every session, the most recent first")
    _set_command(listing, _list)
    show = commands.add_parser("show", help="a session's errands, transcript and grants")
    show.add_argument("session_id", metavar="ID", type=valid_session_id)
    show.add_argument(
        "--full", action="store_true", help="print tool results whole (default: cut at 400 chars)"
    )
    _set_command(show, _show)
    rm = commands.add_parser("rm", help="delete a session and its transcript")
    rm.add_argument("session_id", metavar="ID", type=valid_session_id)
    _set_command(rm, _rm)
    close = commands.add_parser(
        "close", help="end a session: distill its notes into the project's memory"
    )
    close.add_argument("session_id", metavar="ID", type=valid_session_id)
    close.add_argument(
        "--no-model",
        action="store_true",
        help="promote the notes as they are, without merging them with the model",
    )
    _set_command(close, _close)


def _set_command(
    parser: argparse.ArgumentParser, handler: Callable[[argparse.Namespace, IO[str]], int]
) -> None:
    set_command(parser, lambda args: handler(args, sys.stdout), converts=(SessionStoreError,))


def _store() -> SessionStore:
    store = SessionStore(default_paths().database)
    store.recover()
    return store


def _shown(text: str) -> str:
    from app.terminal_prompt import terminal_text

    return terminal_text(text)


def _list(args: argparse.Namespace, out: IO[str]) -> int:
    store = _store()
    try:
        sessions = store.sessions()
        if not sessions:
            out.write("no sessions yet\n")
        for s in sessions:
            errands = store.errands(s.id)
            waiting = sum(1 for e in errands if e.state == "interrupted")
            note = f", {waiting} interrupted" if waiting else ""
            out.write(
                _shown(
                    f"{s.id}  {s.updated:%Y-%m-%d %H:%M}  {s.state:<6} "
                    f"{len(errands)} errand(s){note}  {s.title}"
                )
                + "\n"
            )
    finally:
        store.close()
    return ExitStatus.OK


def _show(args: argparse.Namespace, out: IO[str]) -> int:
    store = _store()
    try:
        s = store.session(args.session_id)
        errands = store.errands(s.id)
        messages = store.messages(s.id)
    finally:
        store.close()
    out.write(_shown(f"session {s.id}: {s.title}") + "\n")
    out.write(_shown(f"  workspace {s.workspace}; model {s.model or '?'}; {s.state}") + "\n")
    out.write(f"  created {s.created:%Y-%m-%d %H:%M:%S}, last used {s.updated:%Y-%m-%d %H:%M:%S}\n")
    limit = None if args.full else 400
    by_errand: dict[str, list[MessageRecord]] = {}
    for m in messages:
        by_errand.setdefault(m.errand_id, []).append(m)
    for errand in errands:
        state = errand.state + (f" ({errand.outcome})" if errand.outcome else "")
        out.write(f"\nerrand {errand.id}: {state}\n")
        if errand.state == "interrupted":
            out.write(
                f"  interrupted after step {errand.last_step}; resume it with "
                f"`keyless run --resume {errand.id}`\n"
            )
        for m in by_errand.get(errand.id, []):
            out.write(_shown(_message_line(m, limit)) + "\n")
    grants = _grants(s.id)
    out.write("\ngrants:\n" if grants else "\nno grants in this session\n")
    for line in grants:
        out.write(_shown(f"  {line}") + "\n")
    return ExitStatus.OK


def _message_line(m: MessageRecord, limit: int | None) -> str:
    def cut(text: str) -> str:
        if limit is not None and len(text) > limit:
            return text[:limit] + f"… [{len(text)} chars]"
        return text

    if m.kind == "task":
        return f"  > {m.text}"
    if m.kind == "tool_call":
        return f"  -> {m.tool} {m.arguments or ''}"
    if m.kind == "decision":
        return f"     {m.text} ({m.data.get('reason', '')})"
    if m.kind == "tool_result":
        flags = ["ok" if m.data.get("ok") else "failed"]
        if m.data.get("truncated"):
            flags.append("truncated")
        if m.data.get("redacted"):
            flags.append("redacted: " + ", ".join(map(str, m.data["redacted"])))
        body = cut(m.text).replace("\n", "\n     ")
        return f"  <- {', '.join(flags)}\n     {body}"
    if m.kind == "final":
        return f"  = {m.text}"
    return f"  [{m.kind}] {m.text}"


def _grants(session_id: str) -> list[str]:
    """The session's capability grants, one line each (never a secret)."""
    from datetime import UTC, datetime

    from vault.errors import VaultError
    from vault.grants import GrantStore

    try:
        grants = GrantStore(default_paths().database)
    except (VaultError, OSError) as e:
        return [f"(grants unavailable: {e})"]
    try:
        records = grants.for_session(session_id)
    finally:
        grants.close()
    now = datetime.now(UTC)
    lines = []
    for r in records:
        state = r.refusal(now) or "active"
        uses = "" if r.uses_left is None else f", {r.uses_left} use(s) left"
        lines.append(f"{r.handle}  {r.grant.describe()}  [{state}{uses}]")
    return lines


def _rm(args: argparse.Namespace, out: IO[str]) -> int:
    store = _store()
    try:
        store.remove(args.session_id)
    finally:
        store.close()
    from models.kvstate import KVStateError, StateStore

    try:
        # Its saved model state goes with it (the directory, not only the file).
        StateStore(default_paths().kvstate_dir, 0).remove_session(args.session_id)
    except KVStateError as e:
        out.write(f"the session's saved model state was not deleted: {e}\n")
    out.write(f"removed session {args.session_id}\n")
    return ExitStatus.OK


def _close(args: argparse.Namespace, out: IO[str]) -> int:
    store = _store()
    try:
        s = store.session(args.session_id)
        services = AppServices()
        try:
            # Promotion scans the notes for vault secrets too: unlock the vault
            # now (keyring, else passphrase) rather than fail in the middle.
            cli_memory.secret_scanner(services)
            model, why_not = (None, "--no-model") if args.no_model else _open_model()
            try:
                report = close_session(
                    store, services, s.id, model=model,
                    count_tokens=model.count_tokens if model is not None else None,
                )
            finally:
                if model is not None:
                    model.close()
        finally:
            services.close()
    finally:
        store.close()
    out.write(f"closed session {s.id}\n")
    if model is None:
        out.write(_shown(f"  notes promoted as they are, without the model ({why_not})") + "\n")
    for line in report:
        out.write(_shown(f"  {line}") + "\n")
    return ExitStatus.OK


def _open_model() -> tuple[Any, str]:
    """The model in its own process, as ``keyless memory consolidate`` opens it.

    Returns:
        The model, or None and why it could not be opened.
    """
    try:
        return cli_memory.open_memory_model(), ""  # the one way the CLI opens it
    except CliError as e:
        return None, str(e)
