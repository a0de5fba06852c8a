"""Conversation benchmark: a session's next errand vs re-prefilling its prompt, and pins.

Through the real path (:class:`agent.host.errand.AgentHost`, the agent
process, the embedded model), side by side in one run.

**The next errand.** A session with 1x, 2x, 4x and 8x n_ctx tokens of
earlier turns (handed over with ``replace_history``, as a session resumed
from the store) runs one errand that prefills them, then the measured one:

- ``conversation``: the session continues its conversation; the agent
  process keeps it in the model's KV cache and evaluates only the new tokens;
- ``re-prefill``: a fresh agent process (an empty cache) gets the same
  history and the same task: the whole prompt is evaluated from scratch, as
  every errand was before sessions were conversations. With the pinned
  prefix, the runtime evaluates the instructions, the task and the last window
  of the rest (what a fresh cache keeps), never more than about n_ctx tokens.

Reported: prompt tokens evaluated (``ErrandStats.evaluated_tokens``), the
conversation's length in tokens (from the cache's own state: kept plus
evicted), and the time to first token (from ``run_errand`` to the first
streamed token the host shows).

**Pins past overflow.** One errand reads a data file of 10x n_ctx tokens or
more (counted from the tool results the host delivered); after
it, the cache's own bookkeeping (reported by the agent process in the final
``ContextState``) must still hold every pinned token (the instructions and
the task), and the errand must end in a valid step; the model's answer is
reported. The run fails (exit status 1) when the pins are not intact or the
output was under 10x n_ctx.

    .venv/bin/python bench/bench_conversation.py [--n-ctx 1024] [--json out.json]
    .venv/bin/python bench/bench_conversation.py --prefill --n-ctx 512

A fresh cache evaluates at most about n_ctx tokens of a long prompt (the pins
and the last window), and the next errand of a conversation evaluates what is
new (the previous errand's tool results and the new task, tens of tokens), so
the ratio grows with n_ctx; the default 1024 keeps the run near a minute on
one thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.host.delivery import HOST_RESULT_BYTES
from agent.host.errand import AgentHost
from agent.host.events import AgentEvent
from agent.host.permission import PermissionAnswer, PermissionRequest
from agent.host.policy import PolicyEngine
from agent.protocol import ErrandLimits
from models.catalog import embedded_default
from models.factory import ModelSpec
from models.interface import Message

FILLER = "We talked about the garden, the weather and the plans for the weekend. "
TOOL_OUTPUT_BYTES = HOST_RESULT_BYTES - 512
"""The report's size: the host hands one tool result over whole up to 16 KiB."""

HISTORY_LIMITS = ErrandLimits(max_steps=1, max_tokens_per_step=64)
READ_LIMITS = ErrandLimits(max_steps=4, max_tokens_per_step=64, max_result_chars=10**6)


class _Allow:
    def ask(self, request: PermissionRequest) -> PermissionAnswer:
        return PermissionAnswer(choice="once")


@dataclass
class Probe:
    """Listens to one host: when the first token came, and the last final event."""

    first_token: float | None = None
    final: dict[str, Any] = field(default_factory=dict)
    results: list[str] = field(default_factory=list)
    contexts: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, event: AgentEvent) -> None:
        if event.kind == "token" and self.first_token is None:
            self.first_token = time.perf_counter()
        elif event.kind == "final":
            self.final = dict(event.data)
        if event.kind in ("progress", "final") and event.data.get("context"):
            self.contexts.append(event.data["context"])
        elif event.kind == "tool_result":
            self.results.append(event.text)


def history_of(tokens: int) -> list[Message]:
    """Earlier turns of about ``tokens`` tokens (about 4 characters a token)."""
    turns: list[Message] = []
    chars = 0
    i = 0
    while chars < tokens * 4:
        question = f"Question {i}: " + FILLER * 3
        answer = f"Answer {i}: " + FILLER * 5
        turns += [Message(role="user", content=question), Message(role="assistant", content=answer)]
        chars += len(question) + len(answer)
        i += 1
    return turns


@contextmanager
def started_host(
    workspace: Path,
    n_ctx: int,
    threads: int,
    limits: ErrandLimits,
    tools: list[str],
    *,
    scaffold: bool | None = None,
) -> Iterator[tuple[AgentHost, Probe]]:
    """An AgentHost with its agent process started (the model loaded), and its probe."""
    probe = Probe()
    host = AgentHost(
        ModelSpec(n_ctx=n_ctx, n_threads=threads),
        workspace=workspace,
        broker=None,
        memory=None,
        policy=PolicyEngine(),
        prompt=_Allow(),
        audit=None,
        session_id="bench-conversation",
        listener=probe,
        tools=tools,
        limits=limits,
        scaffold=scaffold,
    )
    try:
        host.start()
        yield host, probe
    finally:
        host.close()


def timed_errand(host: AgentHost, probe: Probe, task: str) -> dict[str, Any]:
    """Run one errand; what it evaluated, how soon its first token came, what it answered."""
    probe.first_token = None
    probe.final = {}
    probe.results = []
    probe.contexts = []
    t0 = time.perf_counter()
    result = host.run_errand(task)
    wall = time.perf_counter() - t0
    stats = result.stats
    context = probe.final.get("context") or {}
    return {
        "outcome": result.outcome,
        "error": result.error,
        "answer": result.text,
        "tool_calls": [{"tool": c.tool, "arguments": c.arguments} for c in result.tool_calls],
        "tool_results": list(probe.results),
        "evaluated_tokens": stats.evaluated_tokens if stats else None,
        "conversation_tokens": (
            context["n_sink"] + context["n_window"] + context["n_evicted"] if context else None
        ),
        "context": context,
        "contexts": list(probe.contexts),
        "ttft_s": probe.first_token - t0 if probe.first_token is not None else None,
        "wall_s": wall,
    }


def run_history(
    n_ctx: int, multiples: list[int], threads: int, workspace: Path
) -> list[dict[str, Any]]:
    """The measured errand of a session with k x n_ctx of history, both ways."""
    rows = []
    with started_host(workspace, n_ctx, threads, HISTORY_LIMITS, ["list_dir"]) as (host, probe):
        for k in multiples:
            host.replace_history(history_of(k * n_ctx))
            timed_errand(host, probe, "Say hello.")
            earlier = host.history
            conv = timed_errand(host, probe, "Say goodbye.")
            # An empty cache: a new agent process, the same history and task.
            with started_host(workspace, n_ctx, threads, HISTORY_LIMITS, ["list_dir"]) as fresh:
                fresh[0].replace_history(earlier)
                again = timed_errand(*fresh, "Say goodbye.")
            row = {
                "history_x_n_ctx": k,
                "conversation": conv,
                "re_prefill": again,
                "fewer_tokens_x": _ratio(again["evaluated_tokens"], conv["evaluated_tokens"]),
                "sooner_first_token_x": _ratio(again["ttft_s"], conv["ttft_s"]),
            }
            rows.append(row)
            print(json.dumps(_brief(row), default=str), flush=True)
    return rows


def tokens_of(texts: list[str]) -> int:
    """Tokens of ``texts`` with the embedded model's tokenizer (vocabulary only)."""
    import llama_cpp

    vocab = llama_cpp.Llama(str(embedded_default().path), vocab_only=True, verbose=False)
    try:
        return sum(len(vocab.tokenize(t.encode(), add_bos=False)) for t in texts)
    finally:
        vocab.close()


def quarterly_report(max_bytes: int) -> str:
    """A data file of at most ``max_bytes``: sales by region, digits dense in tokens."""
    lines = ["Quarterly sales by region (units)"]
    size = len(lines[0]) + 1
    i = 0
    while True:
        # 24 figures a line: dense in tokens even in the first 100 lines,
        # which is all the embedded model asks for (read_file max_lines=100).
        q = [(i * 7919 + k * 104729) % 9000 + 1000 for k in range(24)]
        line = f"Region {i}: " + " ".join(map(str, q))
        if size + len(line) + 1 > max_bytes:
            return "\n".join(lines) + "\n"
        lines.append(line)
        size += len(line) + 1
        i += 1


def run_tool_output(n_ctx: int, multiple: int, threads: int, workspace: Path) -> dict[str, Any]:
    """One errand that reads ``multiple`` x n_ctx tokens or more: are the pins still cached?"""
    (workspace / "report.txt").write_text(quarterly_report(TOOL_OUTPUT_BYTES))
    task = "Read report.txt with read_file, then say in one sentence what it is about."
    # Without the small-model scaffold: it answers a question from a short side
    # prompt after one read, and the tool output would never fill the cache.
    with started_host(
        workspace, n_ctx, threads, READ_LIMITS, ["read_file"], scaffold=False
    ) as (host, probe):
        result = timed_errand(host, probe, task)
    n_output = tokens_of(result["tool_results"])
    # The cache's state after every step (what the agent process reported):
    # the pins must hold all along, above all right after the long read.
    states = [c for c in result.pop("contexts") if c["n_pinned"] > 0]
    intact = bool(states) and all(c["n_pinned_cached"] == c["n_pinned"] for c in states)
    fullest: dict[str, Any] = max(states, key=lambda c: c["n_evicted"], default={})
    return {
        "tool_output_tokens": n_output,
        "tool_output_x_n_ctx": round(n_output / n_ctx, 1),
        "enough_output": n_output >= multiple * n_ctx,
        "pins_intact": intact,
        "steps_checked": len(states),
        "most_evicted": fullest,
        "valid_end": result["outcome"] in ("final", "finish", "max_steps"),
        **{k: v for k, v in result.items() if k != "tool_results"},
    }


def pinned_prefill(n_ctx: int, threads: int, prompt_x: int = 4) -> list[dict[str, Any]]:
    """A long prompt prefilled with and without pins, shifting and not (in process).

    What a pinned prefill costs against an unpinned one: the tokens the cache
    evaluated (``n_prompt_tokens``), its shifts and re-prefills, and the time.
    """
    from models.interface import Finished
    from models.runtime import Runtime, RuntimeConfig

    words = "file contents and more words here " * (prompt_x * n_ctx // 6)
    messages = [
        Message(role="system", content="You are a careful assistant. Follow the task. " * 5),
        Message(role="user", content="Count the words in the file."),
        Message(role="user", content=words),
    ]
    rows = []
    config = RuntimeConfig(model_path=embedded_default().path, n_ctx=n_ctx, n_threads=threads)
    for can_shift in (True, False):
        with Runtime(config, can_shift=can_shift) as rt:
            for pinned in (False, True):
                rt.reset()
                rt.pin_messages(1, 1) if pinned else rt.pin_messages(0)
                t0 = time.perf_counter()
                events = list(rt.stream_chat(messages, max_tokens=1))
                final = events[-1]
                assert isinstance(final, Finished)
                rows.append(
                    {
                        "can_shift": can_shift,
                        "pinned": pinned,
                        "prompt_tokens": len(rt.render(messages)),
                        "evaluated_tokens": final.stats.n_prompt_tokens,
                        "shifts": rt.cache.n_shifts,
                        "reprefills": rt.cache.n_reprefills,
                        "s": round(time.perf_counter() - t0, 2),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    """A row without the per-step cache states, for the progress lines."""
    return {
        k: ({i: j for i, j in v.items() if i != "contexts"} if isinstance(v, dict) else v)
        for k, v in row.items()
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--multiples", default="1,2,4,8")
    parser.add_argument("--tool-multiple", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--prefill",
        action="store_true",
        help="only the pinned vs unpinned prefill of a 4 x n_ctx prompt (in process)",
    )
    args = parser.parse_args(argv)
    if args.prefill:
        table = pinned_prefill(args.n_ctx, args.threads)
        if args.json:
            args.json.write_text(json.dumps(table, indent=2))
        return 0
    multiples = [int(x) for x in args.multiples.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        (ws / "notes.txt").write_text("buy milk\n")
        rows = run_history(args.n_ctx, multiples, args.threads, ws)
        pins = run_tool_output(args.n_ctx, args.tool_multiple, args.threads, ws)
    heads = ("history", "conv toks", "eval conv", "eval fresh", "fewer", "ttft conv", "ttft fresh")
    print(" ".join(f"{h:>10}" for h in heads))
    for row in rows:
        c, f = row["conversation"], row["re_prefill"]
        print(
            f"{row['history_x_n_ctx']:>9}x {c['conversation_tokens']:>10} "
            f"{c['evaluated_tokens']:>10} {f['evaluated_tokens']:>10} "
            f"{row['fewer_tokens_x'] or 0:>9.1f}x {c['ttft_s'] or 0:>9.3f}s "
            f"{f['ttft_s'] or 0:>9.3f}s  ({row['sooner_first_token_x'] or 0:.1f}x sooner)"
        )
    ctx = pins["most_evicted"]
    print(
        f"tool output {pins['tool_output_tokens']} tokens ({pins['tool_output_x_n_ctx']}x n_ctx "
        f"{args.n_ctx}): pins intact after each of {pins['steps_checked']} steps: "
        f"{pins['pins_intact']}; at the fullest, {ctx.get('n_evicted')} tokens evicted, "
        f"{ctx.get('n_pinned_cached')} of {ctx.get('n_pinned')} pinned tokens in the cache"
    )
    print(f"outcome {pins['outcome']}, calls {json.dumps(pins['tool_calls'])}")
    print("answer:", json.dumps(pins["answer"]))
    if args.json:
        args.json.write_text(json.dumps({"history": rows, "pins": pins}, indent=2))
    ok = pins["pins_intact"] and pins["valid_end"] and pins["enough_output"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
