"""``keyless memory``: look at, search, review, consolidate and undo memory from a terminal.

Subcommands: ``show [--level L]``, ``search QUERY``,
``review [--approve ID | --reject ID]``, ``consolidate [--level L]``,
``history [--limit N] [--diff]``, ``undo ID``. Every command takes
``--workspace`` (default: the app's workspace, else the current directory)
and ``--session`` (default ``cli``).

Commands that write model- or user-supplied text (``review --approve``,
``consolidate``) check it for vault secrets first; when the vault exists but
cannot be unlocked they refuse rather than write unchecked text.
"""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.cli_common import (
    CliError,
    Handler,
    add_workspace_option,
    positive_int,
    set_command,
    valid_session_id,
)
from app.paths import default_paths
from app.settings import AppSettings, SettingsError, load_settings
from memory.errors import MemoryErrorBase
from memory.service import MemoryService
from memory.settings import MemorySettings
from memory.store import LEVELS

Scanner = Callable[[str], list[str]]


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate (about 4 bytes per token), for commands that load no model."""
    return (len(text.encode("utf-8")) + 3) // 4


def register(subparsers: Any) -> None:
    """Add the ``memory`` command group to the ``keyless`` parser."""
    parser = subparsers.add_parser(
        "memory", help="show, search, review, consolidate and undo memory",
        description="Hierarchical markdown memory: user, project and session levels.",
    )
    common = argparse.ArgumentParser(add_help=False)
    add_workspace_option(common, required=False, help="workspace (default: the app's, else .)")
    common.add_argument(
        "--session", type=valid_session_id, default="cli", help="session id (default: cli)"
    )
    commands = parser.add_subparsers(dest="memory_command", metavar="COMMAND", required=True)

    show = commands.add_parser("show", parents=[common], help="print what loads into prompts")
    show.add_argument("--level", choices=LEVELS, help="only this level's files and usage")
    _set_command(show, _show)

    search = commands.add_parser("search", parents=[common], help="search every level")
    search.add_argument("query", help="words to look for (any of them)")
    search.add_argument("--limit", type=positive_int, default=10)
    _set_command(search, _search)

    review = commands.add_parser("review", parents=[common], help="memory waiting for review")
    decide = review.add_mutually_exclusive_group()
    decide.add_argument("--approve", type=int, metavar="ID", help="write this item")
    decide.add_argument("--reject", type=int, metavar="ID", help="drop this item")
    _set_command(review, _review)

    consolidate = commands.add_parser(
        "consolidate", parents=[common], help="distill with the model and keep capacities"
    )
    consolidate.add_argument("--level", choices=LEVELS, help="only this level")
    _set_command(consolidate, _consolidate)

    history = commands.add_parser("history", parents=[common], help="recent memory changes")
    history.add_argument("--limit", type=positive_int, default=20)
    history.add_argument("--diff", action="store_true", help="print each change's diff")
    _set_command(history, _history)

    undo = commands.add_parser("undo", parents=[common], help="undo one change by its id")
    undo.add_argument("change_id", type=int, metavar="ID")
    _set_command(undo, _undo)


def _set_command(parser: argparse.ArgumentParser, handler: Handler) -> None:
    set_command(parser, handler, converts=(MemoryErrorBase, SettingsError))


def _settings() -> AppSettings:
    return load_settings(default_paths())


def memory_settings(app: AppSettings) -> MemorySettings:
    """Map the app's capacity settings onto the memory package's settings."""
    caps = app.memory
    return MemorySettings.from_capacities(
        user=caps.user, project=caps.project, session=caps.session
    )


def _workspace(args: argparse.Namespace, app: AppSettings) -> Path:
    ws = args.workspace or (Path(app.workspace) if app.workspace else Path.cwd())
    ws = ws.expanduser().resolve()
    if not ws.is_dir():
        raise CliError(f"workspace {ws} is not a directory")
    return ws


def _viewing_only(text: str) -> list[str]:
    """The scanner for commands that only show the user their own files, or undo.

    Nothing they print goes to a model, and undo puts back bytes that were
    checked when first written, so there is nothing to withhold or refuse.
    """
    return []


def _open(
    args: argparse.Namespace,
    *,
    count_tokens: Callable[[str], int] = approx_tokens,
    scan: Scanner = _viewing_only,
) -> MemoryService:
    app = _settings()
    paths = default_paths().ensure()
    return MemoryService(
        user_dir=paths.memory_dir,
        workspace=_workspace(args, app),
        db_path=paths.database,
        session_id=args.session,
        count_tokens=count_tokens,
        scan_secrets=scan,
        settings=memory_settings(app),
    )


def secret_scanner(services: Any = None) -> Scanner:
    """The vault's scanner (unlocking it), or one that finds nothing when there is no vault.

    Args:
        services: The ``app.services.AppServices`` whose vault to unlock
            (default: new ones).

    Raises:
        CliError: A vault exists but cannot be opened or unlocked (fail closed).
    """
    from app.services import AppServices, ServiceUnavailableError

    services = services if services is not None else AppServices()
    try:
        vault = services.vault
        if vault is None:
            return lambda text: []
        if vault.is_locked:
            try:
                vault.unlock()
            except Exception:  # no keyring method: fall back to the passphrase
                vault.unlock(getpass.getpass("Vault passphrase (to check memory for secrets): "))
        broker = services.broker
    except ServiceUnavailableError as e:
        raise CliError(f"cannot check memory for secrets, so nothing is written: {e}") from e
    except Exception as e:  # the vault's own errors: wrong passphrase, corrupt file
        raise CliError(
            f"cannot unlock the vault to check memory for secrets, so nothing is written: {e}"
        ) from e
    scan: Scanner = broker.scan
    return scan


def _model_spec() -> Any:
    from models.factory import ModelSpec

    app = _settings()
    options = {
        "path": Path(app.model.path) if app.model.path else None,
        "n_ctx": app.model.n_ctx,
        "n_gpu_layers": app.model.n_gpu_layers,
    }
    return ModelSpec.from_options("llama.cpp", options)


def _counter() -> tuple[Callable[[str], int], bool]:
    """Count with the model's vocabulary (read without the weights, milliseconds).

    Returns:
        The counter, and whether it is the model's own (else an estimate).
    """
    from models.tokenizer import approximate_tokens, counter_for_spec

    counter = counter_for_spec(_model_spec())
    return counter, counter is not approximate_tokens


def open_memory_model() -> Any:
    """The model memory consolidation uses, in its own process (a crash ends it, not us).

    Raises:
        app.cli_common.CliError: It cannot be opened.
    """
    from models.errors import ModelError
    from models.process import open_isolated

    try:
        return open_isolated(_model_spec())
    except ModelError as e:
        raise CliError(f"cannot open the model: {e}") from e


def _show(args: argparse.Namespace) -> int:
    counter, exact = _counter()
    svc = _open(args, count_tokens=counter)
    try:
        ctx = svc.load_context()
        capacity = {u.level: u for u in svc.capacity_usage()}
        note = "" if exact else " (token counts estimated: the model's vocabulary is unavailable)"
        print(f"# memory of {svc.layout.workspace} (session {svc.session_id}){note}")
        for usage in ctx.levels:
            if args.level and usage.level != args.level:
                continue
            cap = capacity[usage.level]
            cut = ", cut" if usage.truncated else ""
            print(
                f"{usage.level:8} prompt {usage.tokens}/{usage.capacity} tokens{cut}; "
                f"topics {cap.tokens}/{cap.capacity} tokens, {cap.topics} active, "
                f"{cap.archived} archived"
            )
        for problem in ctx.problems:
            print(f"warning: {problem}")
        if args.level:
            for file in svc.list_files():
                if file.level == args.level:
                    mark = "" if file.exists else " (missing)"
                    state = " [archived]" if file.status == "archived" else ""
                    print(f"  {file.kind:6} {file.path}{state}{mark}")
        else:
            print()
            print(ctx.text or "(no memory loads yet)")
    finally:
        svc.close()
    return 0


def _search(args: argparse.Namespace) -> int:
    svc = _open(args)
    try:
        hits = svc.recall(args.query, limit=args.limit)
    finally:
        svc.close()
    if not hits:
        print("no matches")
        return 0
    for hit in hits:
        state = " [archived]" if hit.archived else ""
        snippet = " ".join(hit.snippet.split())
        print(f"{hit.level:8} {hit.path}{state}\n         {hit.title}: {snippet}")
    return 0


def _review(args: argparse.Namespace) -> int:
    scan = secret_scanner() if args.approve is not None else _viewing_only
    svc = _open(args, scan=scan)
    try:
        if args.approve is not None:
            change = svc.approve(args.approve)
            print(f"approved {args.approve}: written as change {change.id} ({change.summary})")
            return 0
        if args.reject is not None:
            svc.reject(args.reject)
            print(f"rejected {args.reject}: it will not be written")
            return 0
        items = svc.review_queue()
        if not items:
            print("nothing waits for review")
        for item in items:
            print(
                f"#{item.id} {item.level} topic {item.topic!r} from {item.source.tool or '?'} "
                f"(session {item.session_id}, {item.created:%Y-%m-%d %H:%M})"
            )
            for line in item.content.splitlines():
                print(f"    {line}")
    finally:
        svc.close()
    return 0


def _consolidate(args: argparse.Namespace) -> int:
    scan = secret_scanner()
    model = open_memory_model()
    try:
        svc = _open(args, count_tokens=model.count_tokens, scan=scan)
        try:
            report = svc.distill(model, level=args.level)
        finally:
            svc.close()
    finally:
        model.close()
    for lv in report.levels:
        head = lv.level if lv.level == lv.into else f"{lv.level} -> {lv.into}"
        print(
            f"{head}: {lv.tokens_before} -> {lv.tokens_after}/{lv.capacity} tokens; "
            f"change {lv.change_id if lv.change_id is not None else '-'}"
        )
        if lv.model_error:
            print(f"  model: {lv.model_error}")
        for op in lv.applied:
            print(f"  {op.op} {op.level}/{op.target}{': ' + op.note if op.note else ''}")
        for rej in lv.rejected:
            print(f"  skipped {rej.proposal.get('op', '?')} {rej.proposal.get('target', '')}: "
                  f"{rej.reason}")
        for name in lv.archived_for_capacity:
            print(f"  archived for capacity: {lv.into}/{name}")
    print(f"took {report.seconds:.1f} s")
    return 0


def _history(args: argparse.Namespace) -> int:
    svc = _open(args)
    try:
        changes = svc.history(args.limit)
    finally:
        svc.close()
    if not changes:
        print("no memory changes yet")
    for change in changes:
        undone = f" (undone by {change.undone_by})" if change.undone_by else ""
        print(f"{change.id:5} {change.at:%Y-%m-%d %H:%M:%S} {change.op:8} {change.summary}{undone}")
        if args.diff and change.diff:
            print(change.diff.rstrip("\n"))
    return 0


def _undo(args: argparse.Namespace) -> int:
    svc = _open(args)
    try:
        change = svc.undo(args.change_id)
    finally:
        svc.close()
    print(f"undid change {args.change_id} (recorded as change {change.id})")
    return 0
