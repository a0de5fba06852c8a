"""``keyless chat``: talk to the selected model in the terminal.

Interactive by default (``/reset`` forgets the conversation, ``/quit`` or
end of input leaves, Ctrl-C stops the answer being generated); one-shot with
``--prompt TEXT``. Tokens stream as they come; every answer ends with one
stats line on stderr: tokens generated, tokens/s, time to first token,
tokens evicted from the sink cache, window shifts.

The model is the embedded default unless ``--model PATH`` names a GGUF file,
or ``--backend openai`` points at an OpenAI-compatible server.

What the model prints goes through the vault's streaming redactor when a
vault exists (a secret pasted into the conversation, or one a remote server
echoes, is not shown): over every secret if the OS keyring unlocks the vault
without a prompt, else through the secrets' fingerprints
(:mod:`vault.fingerprints`). If redaction cannot run, the answer stops there
and says why; without a vault there is nothing to redact.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TextIO

from app.cli_common import (
    ExitStatus,
    n_ctx,
    non_negative_int,
    positive_int,
    report_error,
    set_command,
)
from models.backends import backend_for, backend_names
from models.errors import ModelError
from models.eviction import EVICTION_MODES
from models.factory import ModelSpec
from models.interface import CancelToken, ChatModel, Finished, GenerationStats, Message
from models.process import open_isolated

DEFAULT_SYSTEM = "You are a helpful assistant."
CHAT_SESSION = "keyless-chat"
"""The broker session chat redacts for: it holds no grants, so every secret is "other"."""


class OutputRedactor(Protocol):
    """A streaming redactor (``vault.redact.StreamRedactor``); both raise ``VaultError``."""

    def feed(self, chunk: str) -> str:
        """Add a chunk; return the text that is now safe to print."""
        ...

    def finish(self) -> str:
        """Release what is still held back, redacted."""
        ...


Redaction = Callable[[], OutputRedactor]


class _Unchecked(Exception):
    """The vault exists but its secrets cannot be redacted from the output."""


def register(subparsers: Any) -> None:
    """Add the ``chat`` command to the ``keyless`` parser."""
    parser = subparsers.add_parser(
        "chat",
        help="chat with the model in the terminal",
        description="Chat with the local model (or a remote one) in the terminal.",
    )
    parser.add_argument("--prompt", help="ask one question, print the answer and exit")
    parser.add_argument("--max-tokens", type=positive_int, default=1024, help="tokens per answer")
    parser.add_argument("--ignore-eos", action="store_true", help="keep generating past the end")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 for greedy decoding")
    parser.add_argument("--system", default=DEFAULT_SYSTEM, help="system message ('' for none)")
    add_model_options(parser, fake=True)
    set_command(parser, run_chat)


def add_model_options(
    parser: argparse.ArgumentParser, *, fake: bool, default_backend: str | None = "llama.cpp"
) -> None:
    """Add the options that choose and tune the model (read by :func:`spec_from_args`).

    Args:
        parser: The command's parser.
        fake: Offer ``--backend fake`` with ``--scripted FILE`` (a scripted model).
        default_backend: The backend when ``--backend`` is not given; None lets
            the command tell "not given" apart (``keyless run`` then uses the settings).
    """
    parser.add_argument("--n-ctx", type=n_ctx, default=4096, help="context size in tokens")
    parser.add_argument(
        "--n-sink", type=non_negative_int, default=4, help="attention-sink tokens kept"
    )
    parser.add_argument("--model", type=Path, help="a GGUF file (default: the embedded model)")
    parser.add_argument("--threads", type=positive_int, help="CPU threads (default: all available)")
    parser.add_argument("--n-gpu-layers", type=int, help="layers to offload (default: auto)")
    parser.add_argument("--rope", choices=["none", "linear", "yarn"], default="none")
    parser.add_argument("--rope-factor", type=float, default=1.0, help="RoPE scaling factor")
    parser.add_argument(
        "--eviction", choices=list(EVICTION_MODES), default="sinks",
        help="KV-cache eviction; h2o and sinks+h2o are experimental (heavy hitters, slower)",
    )  # fmt: skip
    backends = [b for b in backend_names() if fake or b != "fake"]
    parser.add_argument(
        "--backend", choices=backends, default=default_backend,
        help="; ".join(f"{b}: {backend_for(b).description}" for b in backends),
    )  # fmt: skip
    parser.add_argument("--base-url", help="server URL for --backend openai")
    parser.add_argument("--model-name", help="model name for --backend openai")
    parser.add_argument(
        "--allow-local", action="store_true", help="let --base-url point at this machine"
    )
    if fake:
        parser.add_argument("--scripted", type=Path, help="JSON list of answers for --backend fake")
    else:
        parser.set_defaults(scripted=None)


def spec_from_args(args: argparse.Namespace) -> ModelSpec:
    """Build the model spec the arguments describe.

    Every option is offered to the chosen backend, which takes the ones it
    has settings for (:meth:`models.factory.ModelSpec.from_options`).

    Raises:
        models.errors.ModelError: Unknown backend.
        pydantic.ValidationError: An option is invalid for the backend.
    """
    from app.paths import default_paths

    # `--backend openai --model NAME`: with a server, --model names the model.
    model_named = "path" not in backend_for(args.backend or "llama.cpp").settings_model.model_fields
    options = {
        "path": None if model_named else args.model,
        "n_ctx": args.n_ctx,
        "n_sink": args.n_sink,
        "n_threads": args.threads,
        "n_gpu_layers": args.n_gpu_layers,
        "rope_scaling": args.rope,
        "rope_factor": args.rope_factor,
        "eviction": args.eviction,
        "base_url": args.base_url,
        "model_name": args.model_name or (str(args.model) if model_named and args.model else None),
        "allow_local": args.allow_local,
        "scripted_file": getattr(args, "scripted", None),
        "verified_cache": default_paths().data_dir / "verified-models.json",
    }
    return ModelSpec.from_options(args.backend or "llama.cpp", options)


def run_chat(args: argparse.Namespace) -> int:
    """Run ``keyless chat``; return the exit status."""
    with _vault_redaction() as redaction:
        if isinstance(redaction, _Unchecked):
            report_error("chat", redaction)
            return ExitStatus.ERROR
        try:
            # The model runs in a child process: a llama.cpp crash ends it, not us.
            model = open_isolated(spec_from_args(args))
        except (ModelError, ValueError) as e:
            report_error("chat", e)
            return ExitStatus.ERROR
        try:
            if args.prompt is not None:
                messages = _start(args.system) + [Message(role="user", content=args.prompt)]
                final = _answer(model, messages, args, sys.stdout, sys.stderr, redaction)
                return ExitStatus.OK if final is not None else ExitStatus.ERROR
            return _interactive(model, args, sys.stdin, sys.stdout, sys.stderr, redaction)
        finally:
            model.close()


@contextmanager
def _vault_redaction() -> Iterator[Redaction | None | _Unchecked]:
    """The output's redactor factory, over the app's vault while the chat runs."""
    from app.services import AppServices

    services = AppServices()
    try:
        yield _open_redaction(services)
    finally:
        services.close()


def _open_redaction(services: Any) -> Redaction | None | _Unchecked:
    """None without a vault; _Unchecked when its secrets cannot be redacted.

    The vault is unlocked only where the OS keyring does so without asking;
    otherwise it stays locked and the secrets' fingerprints are used.
    """
    from app.services import ServiceUnavailableError
    from vault.errors import VaultError

    try:
        vault = services.vault
        if vault is None:
            return None
        if vault.is_locked and "keyring" in vault.unlock_methods:
            try:
                vault.unlock()
            except VaultError:
                pass  # no keyring here: the locked redactor will do
        broker = services.broker

        def redaction() -> OutputRedactor:
            made: OutputRedactor = broker.redact_stream(session_id=CHAT_SESSION)
            return made

        redaction()  # fail now, before the model loads, if it cannot run
    except (ServiceUnavailableError, VaultError) as e:
        return _Unchecked(f"cannot check the model's output for vault secrets: {e}")
    return redaction


def _start(system: str) -> list[Message]:
    return [Message(role="system", content=system)] if system else []


def _interactive(
    model: ChatModel,
    args: argparse.Namespace,
    stdin: TextIO,
    out: TextIO,
    err: TextIO,
    redaction: Redaction | None = None,
) -> int:
    info = model.info
    print(
        f"{info.name} ({info.backend}, n_ctx {info.n_ctx}). /reset forgets, /quit leaves.",
        file=err,
    )
    messages = _start(args.system)
    while True:
        if stdin.isatty():
            print("> ", end="", file=out, flush=True)
        line = stdin.readline()
        if not line:
            return ExitStatus.OK
        text = line.strip()
        if not text:
            continue
        if text in {"/quit", "/exit"}:
            return ExitStatus.OK
        if text == "/reset":
            model.reset()
            messages = _start(args.system)
            print("(conversation forgotten)", file=err)
            continue
        messages.append(Message(role="user", content=text))
        final = _answer(model, messages, args, out, err, redaction)
        if final is None:
            return ExitStatus.ERROR
        messages.append(Message(role="assistant", content=final.text))


def _answer(
    model: ChatModel,
    messages: list[Message],
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    redaction: Redaction | None = None,
) -> Finished | None:
    """Stream one answer (redacted); return its Finished event, or None after an error."""
    from vault.errors import VaultError

    cancel = CancelToken()
    try:
        shown = redaction() if redaction is not None else None
    except VaultError as e:
        report_error("chat", f"cannot check the answer for vault secrets: {e}", err)
        return None
    try:
        stream = model.stream_chat(
            messages,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            ignore_eos=args.ignore_eos,
            cancel=cancel,
        )
    except ModelError as e:
        report_error("chat", e, err)
        return None
    final: Finished | None = None
    pieces: list[str] = []
    try:
        for event in stream:
            if isinstance(event, Finished):
                final = event
            else:
                pieces.append(event.text)
                out.write(event.text if shown is None else shown.feed(event.text))
                out.flush()
        if shown is not None:
            out.write(shown.finish())
    except VaultError as e:
        cancel.cancel()
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        print(
            f"\nkeyless chat: error: the rest of the answer is not shown: it could not be "
            f"checked for vault secrets ({e})",
            file=err,
        )
        return None
    except KeyboardInterrupt:
        # Ctrl-C stops this answer, not the chat. The interrupt may have landed
        # between llama.cpp and the cache's bookkeeping, so start the cache afresh.
        cancel.cancel()
        close = getattr(stream, "close", None)  # a generator holds the model until closed
        if close is not None:
            close()
        model.reset()
        final = Finished(
            text="".join(pieces),
            stats=GenerationStats(
                n_prompt_tokens=0,
                n_generated=len(pieces),
                time_to_first_token_s=None,
                tokens_per_second=0.0,
                stop_reason="cancelled",
            ),
        )
    except ModelError as e:
        print(file=err)  # the answer's partial line
        report_error("chat", e, err)
        return None
    print(file=out)
    if final is None:
        report_error("chat", "the model ended without a final event", err)
        return None
    print(stats_line(final.stats), file=err)
    return final


def stats_line(stats: GenerationStats) -> str:
    """One line summarising a generation."""
    ttft = (
        f"{stats.time_to_first_token_s:.3f} s"
        if stats.time_to_first_token_s is not None
        else "n/a"
    )
    return (
        f"[{stats.n_generated} tokens, {stats.tokens_per_second:.1f} tok/s, "
        f"first token {ttft}, {stats.n_evicted} evicted, {stats.n_shifts} shifts, "
        f"stop: {stats.stop_reason}]"
    )
