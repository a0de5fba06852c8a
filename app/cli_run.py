"""``keyless run "TASK" --workspace DIR``: one errand from the terminal.

The headless host: the same :class:`agent.host.errand.AgentHost` as the GUI, with a
:class:`app.terminal_prompt.TerminalPrompt` for permissions. Progress (the model's
streamed steps, each tool call, decision and result) goes to stderr; the final
answer and a summary of the tool calls go to stdout, so a script can keep
them. ``--yes-read-only`` answers "once" for reads without asking; deny rules
are applied before any prompt, so no flag bypasses them. Ctrl-C cancels the
errand (a second Ctrl-C stops waiting).

A credential the host withheld from a tool result is named as it happens. On
a terminal, once the errand is over, each one (once per value) is offered:
"Move NAME (kind, file:line) into the vault? [y/N]"; yes stores it the way
``keyless vault add`` does and prints the ``keyless vault grant`` command that
makes it a capability. Without a terminal the line says which commands to run.

Every errand is recorded in the session store (``keyless sessions``) as it
runs. ``--session ID`` continues a session: the errand joins its transcript
and its earlier answers are the agent's history. ``--resume ERRAND`` goes on
with an interrupted errand from its last completed tool step; a write, shell,
network or memory call that was allowed but never reported a result may have
run, so it is shown and you choose: run it again, skip it, or stop.

Exit status (:class:`app.cli_common.ExitStatus`): OK answered, ERROR failed
(model error, agent crash), USAGE a bad argument, LIMIT stopped by the step or
token limit, INTERRUPTED cancelled.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from app.cli_chat import add_model_options, spec_from_args
from app.cli_common import (
    CliError,
    ExitStatus,
    add_workspace_option,
    existing_file,
    fail,
    new_session_id,
    positive_int,
    set_command,
    valid_session_id,
)
from app.cli_mcp import mcp_hub
from app.withheld import OfferBook, offer_from_event, vault_name

if TYPE_CHECKING:
    from agent.host.errand import AgentHost
    from agent.host.events import AgentEvent, ErrandResult

log = logging.getLogger(__name__)

# ExitStatus's members under the names this command's callers use.
EXIT_OK = ExitStatus.OK
EXIT_FAILED = ExitStatus.ERROR
EXIT_LIMIT = ExitStatus.LIMIT
EXIT_CANCELLED = ExitStatus.INTERRUPTED


def register(subparsers: Any) -> None:
    """Add the ``run`` command to the ``keyless`` parser."""
    parser = subparsers.add_parser(
        "run",
        help="run one errand in a workspace, asking for permissions on the terminal",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("task", nargs="?", help="what the agent should do (not with --resume)")
    add_workspace_option(
        parser,
        required=False,
        help="the directory the errand works in (default with --session/--resume: the session's)",
    )
    parser.add_argument(
        "--yes-read-only",
        action="store_true",
        help="allow read-only tool calls without asking (deny rules still hold)",
    )
    parser.add_argument(
        "--scripted-model",
        type=existing_file,
        metavar="FILE",
        help="run the scripted fake model (a JSON list of replies) instead of the real one",
    )
    parser.add_argument(
        "--max-steps", type=positive_int, default=12, help="model turns allowed (12)"
    )
    model = parser.add_argument_group(
        "model",
        "The model the settings choose, unless --model FILE names a GGUF file or "
        "--backend openai --base-url URL --model-name NAME a compatible server "
        "(which gets no API key from the settings unless it is the configured server).",
    )
    add_model_options(model, fake=False, default_backend=None)
    parser.add_argument(
        "--no-isolation",
        action="store_true",
        help="run the agent process without bubblewrap (it still gets a scrubbed environment)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="do not stream the model")
    parser.add_argument(
        "--session",
        type=valid_session_id,
        metavar="ID",
        help="continue this session (its earlier errands are the agent's history; grants "
        "made with `keyless vault grant --session ID` are offered); a fresh one by default",
    )
    parser.add_argument(
        "--resume",
        metavar="ERRAND",
        help="resume an interrupted errand from its last completed tool step "
        "(see `keyless sessions show`)",
    )
    set_command(parser, run_command)


def run_command(args: argparse.Namespace) -> int:
    """Run the errand ``args`` describe and return the exit status."""
    return run_errand_cli(args, stdin=sys.stdin, out=sys.stdout, err=sys.stderr)


def run_errand_cli(
    args: argparse.Namespace,
    *,
    stdin: IO[str],
    out: IO[str],
    err: IO[str],
    interactive: bool | None = None,
) -> int:
    """The body of ``keyless run`` with its streams as parameters (tests).

    ``interactive`` (default: whether ``stdin`` is a terminal) decides whether
    withheld credentials are offered for the vault after the errand.
    """
    from pydantic import ValidationError

    from agent.errors import AgentError
    from agent.host.errand import AgentHost
    from agent.host.policy import PolicyEngine
    from agent.protocol import ErrandLimits
    from app.services import AppServices, ServiceUnavailableError
    from app.sessions import ErrandRecorder, SessionStoreError, run_recorded
    from app.terminal_prompt import TerminalPrompt
    from models.backends import runs_in_host
    from models.errors import ModelError
    from vault.errors import VaultError

    if args.resume is not None and args.task is not None:
        usage = CliError("give a task or --resume ERRAND, not both", ExitStatus.USAGE)
        return fail("run", usage, err)
    model_problem = _model_options_problem(args)
    if model_problem is not None:
        return fail("run", CliError(model_problem, ExitStatus.USAGE), err)
    if args.resume is None and not (args.task or "").strip():
        usage = CliError(
            "what should the agent do? (give a task, or --resume ERRAND)", ExitStatus.USAGE
        )
        return fail("run", usage, err)
    opened = _open_session(args, err)
    if isinstance(opened, int):
        return opened
    sessions, known, plan = opened
    workspace = (
        args.workspace.expanduser().resolve() if args.workspace is not None
        else Path(known.workspace) if known is not None else Path()
    )
    choice = "skip"
    problem: CliError | None = None
    limits = None
    if known is not None and workspace != Path(known.workspace):
        problem = CliError(f"session {known.id} works in {known.workspace}, not {workspace}")
    elif plan is not None and plan.maybe_ran is not None:
        choice = _ask_maybe_ran(plan.describe_maybe_ran(), stdin, err)
        if choice == "stop":
            problem = CliError(
                f"errand {plan.errand.id} stays interrupted", ExitStatus.INTERRUPTED
            )
    if problem is None and not workspace.is_dir():
        problem = CliError(f"workspace {workspace} is not a directory")
    if problem is None:
        try:
            limits = ErrandLimits(max_steps=args.max_steps)
        except ValidationError as e:
            problem = CliError(f"--max-steps: {e.errors()[0]['msg']}", ExitStatus.USAGE)
    if problem is not None:
        if sessions is not None:
            sessions.close()
        return fail("run", problem, err)
    services = AppServices()
    warning = services.workspace_warning(workspace)
    if warning is not None:
        err.write(f"warning: {warning}\n")
    session_id = args.session or new_session_id()
    if sessions is not None:
        try:
            sessions.ensure_session(
                session_id,
                workspace=workspace,
                title=args.task or "",
                model=_model_identity(args, services),
            )
        except SessionStoreError as e:
            err.write(f"note: this errand is not recorded ({e})\n")
            sessions.close()
            sessions = None
    store = None
    rules: list[Any] = []
    try:
        store = services.rule_store(workspace)
        rules = list(store.rules(workspace))
    except (ServiceUnavailableError, AgentError) as e:
        err.write(f"note: saved permission rules unavailable ({e}); using the defaults\n")
    broker = _unlocked_broker(services, err)
    audit = _optional(lambda: services.audit, "audit log", err)
    spec = None if args.scripted_model is not None else model_spec(args, services)
    from models.tokenizer import counter_for_spec

    # A scripted model gets the same services as a real one (it is how the
    # memory tools are exercised from the command line); it counts ~4 chars a token.
    count_tokens = counter_for_spec(spec)
    memory = _optional(
        lambda: services.memory_service(
            workspace=workspace, session_id=session_id, count_tokens=count_tokens
        ),
        "memory",
        err,
    )
    relay = None
    if runs_in_host(spec):
        try:
            relay = remote_model_with_key(spec, services, broker)
        except (ModelError, VaultError) as e:
            services.close()
            if sessions is not None:
                sessions.close()
            return fail("run", CliError(f"cannot use the remote model: {e}"), err)
    if interactive is None:
        interactive = stdin.isatty()
    offers = OfferBook() if interactive else None
    printer = EventPrinter(err, stream_tokens=not args.quiet, offers=offers)
    recorder = ErrandRecorder(sessions, then=printer) if sessions is not None else printer
    host = AgentHost(
        spec,
        workspace=workspace,
        broker=broker,
        memory=memory,
        policy=PolicyEngine(rules),
        prompt=TerminalPrompt(stdin, err, allow_reads=args.yes_read_only),
        audit=audit,
        session_id=session_id,
        listener=recorder,
        rule_store=store,
        scripted_model=args.scripted_model.resolve() if args.scripted_model else None,
        limits=limits,
        isolate=not args.no_isolation,
        hidden_paths=services.protected_paths(),
        relay_model=relay,
        mcp=mcp_hub(services, workspace),
        egress=services.egress_settings(),
        **services.kv_states(),
    )
    # Every line the terminal shows goes through the redactor the agent's results do.
    printer.redact = host.redact
    try:
        if sessions is not None and isinstance(recorder, ErrandRecorder):
            result = run_recorded(
                host,
                sessions,
                recorder,
                session_id=session_id,
                task=args.task or "",
                run=lambda task: _run_cancellable(host, task, err),
                resume=plan,
                choice="again" if choice == "again" else "skip",
            )
        else:
            result = _run_cancellable(host, args.task, err)
    finally:
        host.close()
        for owned in (store, memory, sessions):
            if owned is not None and callable(getattr(owned, "close", None)):
                owned.close()
        services.close()
    print_result(result, out, redact=host.redact)
    if offers is not None:
        offer_to_vault(offers, stdin=stdin, err=err, session_id=session_id)
    return _exit_status(result)


def model_spec_from_settings(services: Any) -> Any:
    """The ``models.factory.ModelSpec`` the user's settings describe.

    Raises:
        CliError: The settings name an unknown backend or an invalid setting.
    """
    from models.errors import ModelError

    try:
        return services.model_spec()
    except (ModelError, ValueError) as e:
        raise CliError(f"the model settings are not usable: {e}") from e


def model_chosen_on_command_line(args: argparse.Namespace) -> bool:
    """Whether ``--model`` or ``--backend`` chose the model (else the settings do)."""
    return args.model is not None or args.backend is not None


def model_spec(args: argparse.Namespace, services: Any) -> Any:
    """The ``models.factory.ModelSpec`` of the errand: the options' or the settings'."""
    if model_chosen_on_command_line(args):
        return spec_from_args(args)
    return model_spec_from_settings(services)


def _model_options_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the model options, or None.

    The backend's own settings say what it takes (the registry, not its name):
    a ``base_url`` backend needs the server and the model's name, a ``path``
    backend takes ``--model FILE``.
    """
    from models.backends import backend_for
    from models.factory import DEFAULT_BACKEND

    if args.scripted_model is not None and model_chosen_on_command_line(args):
        return "--scripted-model replaces the model: not with --model or --backend"
    backend = args.backend or DEFAULT_BACKEND
    fields = backend_for(backend).settings_model.model_fields
    if "base_url" in fields:
        if not args.base_url or not (args.model_name or args.model):
            return f"--backend {backend} needs --base-url URL and --model-name NAME"
    elif args.base_url or args.model_name or args.allow_local:
        return f"--base-url, --model-name and --allow-local do not go with --backend {backend}"
    if "path" in fields and args.model is not None and not args.model.is_file():
        return f"--model {args.model}: no such file"
    return None


def remote_model_with_key(spec: Any, services: Any, broker: Any) -> Any:
    """Open the remote model in the host with its API key from the vault.

    See :meth:`app.services.AppServices.remote_model`; ``broker`` None means
    no vault is available here. The settings' API key goes only to the
    server the settings name: one given on the command line gets none.
    """
    configured = model_spec_from_settings(services)
    url = getattr(spec.settings, "base_url", None)
    if configured.backend != spec.backend or getattr(configured.settings, "base_url", None) != url:
        from models.factory import open_model

        return open_model(spec)
    return services.remote_model(spec, vault_available=broker is not None)


class EventPrinter:
    """Writes the host's events as terminal lines.

    Every line goes through ``redact`` (the host's, :meth:`agent.host.errand.AgentHost.redact`)
    and is shown with escapes instead of control characters. Streamed tokens
    are shown a line at a time, so a secret split across tokens is redacted whole.

    Args:
        err: Where the lines go.
        stream_tokens: Show the model's streamed text.
        redact: Replaces secrets in a line; set to the host's once it exists.
        offers: Keeps withheld credentials to offer after the errand; None
            prints the commands that move one into the vault instead.
    """

    def __init__(
        self,
        err: IO[str],
        *,
        stream_tokens: bool,
        redact: Callable[[str], str] | None = None,
        offers: OfferBook | None = None,
    ) -> None:
        self._err = err
        self._stream = stream_tokens
        self.redact: Callable[[str], str] = redact or (lambda text: text)
        self._pending = ""
        self._offers = offers

    def __call__(self, event: AgentEvent) -> None:
        """Print one :class:`agent.host.events.AgentEvent`."""
        kind = event.kind
        if kind == "token":
            if self._stream:
                lines = (self._pending + event.text).split("\n")
                self._pending = lines.pop()
                for line in lines:
                    self._line(line)
            return
        if self._pending:
            self._line(self._pending)
            self._pending = ""
        data = event.data
        if kind == "os_isolation":
            state = "on" if data.get("isolated") else "OFF"
            self._line(f"[OS isolation {state}: {data.get('reason', '')}]")
        elif kind == "progress":
            self._line(f"[step {data.get('step')}/{data.get('max_steps')}]")
        elif kind == "tool_call":
            self._line(f"-> {event.tool} {data.get('arguments', '')}")
        elif kind == "decision":
            self._line(f"   {data.get('action')} ({data.get('reason', '')})")
        elif kind == "tool_result":
            flags = [("ok" if data.get("ok") else "failed"), f"{len(event.text)} chars"]
            if data.get("truncated"):
                flags.append("truncated")
            if data.get("redacted"):
                flags.append("redacted: " + ", ".join(data["redacted"]))
            self._line(f"<- {', '.join(flags)}")
        elif kind == "secret_found":
            name = vault_name(data.get("name"), str(data.get("kind", "")))
            self._line(
                f"!! a credential ({data.get('kind')}) at {data.get('file')}:{data.get('line')} "
                "was withheld from the agent"
            )
            offer = offer_from_event(event.tool, data) if self._offers is not None else None
            if offer is not None and self._offers is not None:
                if self._offers.add(offer):
                    self._line("   after the errand you are asked whether to store it in the vault")
            else:
                self._line(
                    f"   move it into the vault: keyless vault add {name}  "
                    f"(then grant it: keyless vault grant {name} ...)"
                )
        elif kind == "egress":  # a request the running shell command sent through the proxy
            self._line(f"   net {data.get('method')} {data.get('host')}{data.get('path')}: "
                       f"{data.get('decision')} ({data.get('reason', '')})")
        elif kind == "error":
            self._line(f"error: {event.text}")
        elif kind in ("memory_problems", "notice"):
            self._line(event.text)
        elif kind == "agent_crashed":
            self._line(f"the agent process failed: {event.text}")
            tail = str(data.get("stderr", "")).strip()
            if tail:
                self._line("  its last log lines:\n    " + tail.replace("\n", "\n    "))

    def _line(self, text: str) -> None:
        self._err.write(_shown(self.redact(text)) + "\n")
        self._err.flush()


def offer_to_vault(
    offers: OfferBook,
    *,
    stdin: IO[str],
    err: IO[str],
    session_id: str,
    vault_file: Path | None = None,
) -> None:
    """Ask, for each withheld credential, whether to move it into the vault.

    A yes stores it as ``keyless vault add`` does (the OS keyring, else the
    passphrase, asked without echo) and prints the ``keyless vault grant``
    command that lends it to this session as a capability. Every value is
    zeroed once answered; end of input answers no to the rest.

    Args:
        offers: The errand's offers (emptied here).
        stdin: Where the answers come from.
        err: Where the questions go.
        session_id: The errand's session, named in the grant command.
        vault_file: The vault (default: the data dir's ``vault.kls``).
    """
    from app.cli_vault import store_secret
    from vault.errors import VaultError, VaultNotFoundError

    answered_all = False
    for notice in offers.pending():
        offer = offers.take(notice.offer_id)
        if offer is None:
            continue
        if answered_all:
            offer.discard()
            continue
        err.write(
            _shown(f"Move {notice.name} ({notice.kind}, {notice.where}) into the vault? [y/N] ")
        )
        err.flush()
        answer = stdin.readline()
        if not answer:
            err.write("\n")
            answered_all = True
        if answer.strip().lower() not in ("y", "yes"):
            offer.discard()
            continue
        name = notice.name
        try:
            store_secret(name, offer.take_value(), vault_file=vault_file)
        except VaultNotFoundError:
            err.write(
                "   no vault yet: create it with `keyless vault init`, then "
                f"`keyless vault add {name}`\n"
            )
            continue
        except (VaultError, CliError) as e:
            err.write(_shown(f"   not stored: {e}") + "\n")
            continue
        finally:
            offer.discard()
        err.write(
            f"   stored {name} in the vault. To let an errand of this session use it:\n"
            f"     keyless vault grant {name} --session {session_id} --host HOST "
            "--path '/*' --inject 'header:Authorization: Bearer {}'\n"
            f"     keyless run --session {session_id} ...\n"
        )
        err.flush()


def _run_cancellable(host: AgentHost, task: str, err: IO[str]) -> ErrandResult:
    """Run the errand; the first Ctrl-C cancels it, a second one stops waiting.

    The errand runs on this (the main) thread: the rule store's SQLite
    connection belongs to the thread that opened it.
    """
    if threading.current_thread() is not threading.main_thread():
        return host.run_errand(task)
    presses = 0

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            raise KeyboardInterrupt
        err.write("\ncancelling (Ctrl-C again to stop waiting)...\n")
        host.cancel()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        return host.run_errand(task)
    finally:
        signal.signal(signal.SIGINT, previous)


def _shown(text: str) -> str:
    """Model text made safe for a terminal (escape sequences shown, not obeyed)."""
    from app.terminal_prompt import terminal_text

    return terminal_text(text)


def print_result(result: ErrandResult, out: IO[str], *, redact: Callable[[str], str]) -> None:
    """Write the answer and the tool-call summary, each line redacted and escaped."""

    def shown(text: str) -> str:
        return _shown(redact(text))

    if result.text:
        out.write(shown(result.text.rstrip()) + "\n")
    elif result.outcome == "crashed":
        out.write("(no answer: the agent process failed)\n")  # why was said on stderr
    elif result.error:
        out.write(shown(f"(no answer: {result.error})") + "\n")
    else:
        out.write(f"(no answer: {result.outcome})\n")
    if result.tool_calls:
        out.write(f"\n{len(result.tool_calls)} tool call(s):\n")
        for record in result.tool_calls:
            status = "ok" if record.ok else "failed"
            # Redacted before it is cut: a cut secret would no longer be recognised.
            args = redact(json.dumps(record.arguments, ensure_ascii=False))
            if len(args) > 80:
                args = args[:79] + "…"
            line = f"{record.call_id:>4}  {record.tool:<13} {record.decision:<8} {status:<6}"
            out.write(shown(f"  {line} {args}") + "\n")
    out.flush()


def _exit_status(result: ErrandResult) -> int:
    if result.outcome in ("final", "finish"):
        return EXIT_OK
    if result.outcome in ("max_steps", "max_tokens"):
        return EXIT_LIMIT
    if result.outcome == "cancelled":
        return EXIT_CANCELLED
    return EXIT_FAILED


def _optional(build: Any, what: str, err: IO[str]) -> Any:
    from app.services import ServiceUnavailableError

    try:
        return build()
    except ServiceUnavailableError as e:
        err.write(f"note: running without {what}: {e}\n")
        return None


def _unlocked_broker(services: Any, err: IO[str]) -> Any:
    """The broker when the vault unlocks with the OS keyring; None otherwise.

    A terminal errand never asks for the passphrase (stdin answers the
    permission prompts); without the vault, http_request has no broker and
    no capability handles are offered.
    """
    from app.services import ServiceUnavailableError
    from vault.errors import VaultError

    try:
        vault = services.vault
        if vault is None:
            return None
        if vault.is_locked:
            vault.unlock()
        return services.broker
    except (ServiceUnavailableError, VaultError) as e:
        err.write(f"note: the vault stays locked ({e}); http_request is unavailable\n")
        return None


def _open_session(args: argparse.Namespace, err: IO[str]) -> Any:
    """The session store, the session continued (or None) and the resume plan (or None).

    Marks errands left running by a dead process as interrupted (and says
    so). Returns an exit status instead when the session or errand asked for
    cannot be used. Without ``--session``/``--resume``, a store that cannot be
    opened only means this errand is not recorded.
    """
    from app.paths import default_paths
    from app.sessions import SessionStore, SessionStoreError, UnknownSessionError, resume_plan

    wanted = args.session is not None or args.resume is not None
    try:
        sessions = SessionStore(default_paths().database)
    except SessionStoreError as e:
        if wanted:
            err.write(f"keyless run: {e}\n")
            return EXIT_FAILED
        err.write(f"note: this errand is not recorded ({e})\n")
        return None, None, None
    try:
        for errand_id in sessions.recover():
            err.write(
                f"note: errand {errand_id} was interrupted; resume it with "
                f"`keyless run --resume {errand_id}`\n"
            )
        plan = None
        if args.resume is not None:
            plan = resume_plan(sessions, args.resume)
            args.session = plan.errand.session_id
        known = None
        if args.session is not None:
            try:
                known = sessions.session(args.session)
            except UnknownSessionError:
                # A new session under the id given (grants may have been made for it already).
                if args.workspace is None:
                    raise
    except SessionStoreError as e:
        sessions.close()
        err.write(f"keyless run: {e}\n")
        return EXIT_FAILED
    if known is None and args.workspace is None:
        sessions.close()
        err.write("keyless run: --workspace DIR is needed for a new session\n")
        return EXIT_FAILED
    return sessions, known, plan


def _ask_maybe_ran(what: str, stdin: IO[str], err: IO[str]) -> str:
    """Ask what to do with a call that may have run: "again", "skip" or "stop".

    End of input answers "stop": nothing is repeated without a yes.
    """
    err.write(_shown(f"The errand was interrupted during: {what}\n"))
    err.write("It may have run. [r]un it again / [s]kip it / s[t]op here: ")
    err.flush()
    while True:
        line = stdin.readline()
        if not line:
            err.write("\n")
            return "stop"
        answer = line.strip().lower()
        if answer in ("r", "run", "again"):
            return "again"
        if answer in ("s", "skip"):
            return "skip"
        if answer in ("t", "stop"):
            return "stop"
        err.write("Answer r, s or t: ")
        err.flush()


def _model_identity(args: argparse.Namespace, services: Any) -> str:
    """What the session's model is, in a line (kept with the session)."""
    if args.scripted_model is not None:
        return f"scripted:{args.scripted_model.name}"
    try:
        spec = model_spec(args, services)
    except Exception as e:  # noqa: BLE001  # only a label: the errand reports model problems
        return f"unknown ({type(e).__name__})"
    return str(spec.label())
