"""``keyless chat``: talk to the selected model in the terminal.

Interactive by default (``/reset`` forgets the conversation, ``/quit`` or
end of input leaves, Ctrl-C stops the answer being generated); one-shot with
``--prompt TEXT``. Tokens stream as they come; every answer ends with one
stats line on stderr: tokens generated, tokens/s, time to first token,
tokens evicted from the sink cache, window shifts.

The model is the embedded default unless ``--model PATH`` names a GGUF file,
or ``--backend openai`` points at an OpenAI-compatible server.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from models.errors import ModelError
from models.eviction import EVICTION_MODES
from models.factory import ModelSpec
from models.interface import CancelToken, ChatModel, Finished, GenerationStats, Message
from models.process import open_isolated

DEFAULT_SYSTEM = "You are a helpful assistant."


def register(subparsers: Any) -> None:
    """Add the ``chat`` command to the ``keyless`` parser."""
    parser = subparsers.add_parser(
        "chat",
        help="chat with the model in the terminal",
        description="Chat with the local model (or a remote one) in the terminal.",
    )
    parser.add_argument("--prompt", help="ask one question, print the answer and exit")
    parser.add_argument("--max-tokens", type=int, default=1024, help="tokens per answer")
    parser.add_argument("--n-ctx", type=int, default=4096, help="context size in tokens")
    parser.add_argument("--n-sink", type=int, default=4, help="attention-sink tokens kept")
    parser.add_argument("--ignore-eos", action="store_true", help="keep generating past the end")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 for greedy decoding")
    parser.add_argument("--system", default=DEFAULT_SYSTEM, help="system message ('' for none)")
    parser.add_argument("--model", type=Path, help="a GGUF file (default: the embedded model)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all available)")
    parser.add_argument("--n-gpu-layers", type=int, help="layers to offload (default: auto)")
    parser.add_argument("--rope", choices=["none", "linear", "yarn"], default="none")
    parser.add_argument("--rope-factor", type=float, default=1.0, help="RoPE scaling factor")
    parser.add_argument(
        "--eviction", choices=list(EVICTION_MODES), default="sinks",
        help="KV-cache eviction; h2o and sinks+h2o are experimental (heavy hitters, slower)",
    )  # fmt: skip
    parser.add_argument(
        "--backend", choices=["llama.cpp", "openai", "fake"], default="llama.cpp",
        help="llama.cpp (local), openai (a compatible server) or fake (scripted)",
    )  # fmt: skip
    parser.add_argument("--base-url", help="server URL for --backend openai")
    parser.add_argument("--model-name", help="model name for --backend openai")
    parser.add_argument(
        "--allow-local", action="store_true", help="let --base-url point at this machine"
    )
    parser.add_argument("--scripted", type=Path, help="JSON list of answers for --backend fake")
    parser.set_defaults(func=run_chat)


def spec_from_args(args: argparse.Namespace) -> ModelSpec:
    """Build the model spec the arguments describe."""
    from app.paths import default_paths

    remote = args.backend == "openai"
    return ModelSpec(
        backend=args.backend,
        # `--backend openai --model NAME`: with a server, --model names the model.
        path=None if remote else args.model,
        n_ctx=args.n_ctx,
        n_sink=args.n_sink,
        n_threads=args.threads,
        n_gpu_layers=args.n_gpu_layers,
        rope_scaling=args.rope,
        rope_factor=args.rope_factor,
        eviction=args.eviction,
        base_url=args.base_url,
        model_name=args.model_name or (str(args.model) if remote and args.model else None),
        allow_local=args.allow_local,
        scripted_file=args.scripted,
        verified_cache=default_paths().data_dir / "verified-models.json",
    )


def run_chat(args: argparse.Namespace) -> int:
    """Run ``keyless chat``; return the exit status."""
    if args.max_tokens < 1:
        print("keyless chat: error: --max-tokens must be at least 1", file=sys.stderr)
        return 2
    try:
        # The model runs in a child process: a llama.cpp crash ends it, not us.
        model = open_isolated(spec_from_args(args))
    except (ModelError, ValueError) as e:
        print(f"keyless chat: error: {e}", file=sys.stderr)
        return 1
    try:
        if args.prompt is not None:
            messages = _start(args.system) + [Message(role="user", content=args.prompt)]
            final = _answer(model, messages, args, sys.stdout, sys.stderr)
            return 0 if final is not None else 1
        return _interactive(model, args, sys.stdin, sys.stdout, sys.stderr)
    finally:
        model.close()


def _start(system: str) -> list[Message]:
    return [Message(role="system", content=system)] if system else []


def _interactive(
    model: ChatModel, args: argparse.Namespace, stdin: TextIO, out: TextIO, err: TextIO
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
            return 0
        text = line.strip()
        if not text:
            continue
        if text in {"/quit", "/exit"}:
            return 0
        if text == "/reset":
            model.reset()
            messages = _start(args.system)
            print("(conversation forgotten)", file=err)
            continue
        messages.append(Message(role="user", content=text))
        final = _answer(model, messages, args, out, err)
        if final is None:
            return 1
        messages.append(Message(role="assistant", content=final.text))


def _answer(
    model: ChatModel, messages: list[Message], args: argparse.Namespace, out: TextIO, err: TextIO
) -> Finished | None:
    """Stream one answer; return its Finished event, or None after an error."""
    cancel = CancelToken()
    try:
        stream = model.stream_chat(
            messages,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            ignore_eos=args.ignore_eos,
            cancel=cancel,
        )
    except ModelError as e:
        print(f"keyless chat: error: {e}", file=err)
        return None
    final: Finished | None = None
    pieces: list[str] = []
    try:
        for event in stream:
            if isinstance(event, Finished):
                final = event
            else:
                pieces.append(event.text)
                out.write(event.text)
                out.flush()
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
        print(f"\nkeyless chat: error: {e}", file=err)
        return None
    print(file=out)
    if final is None:
        print("keyless chat: error: the model ended without a final event", file=err)
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
