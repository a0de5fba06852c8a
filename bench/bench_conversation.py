"""Conversation benchmark: the k-th errand of a session vs re-prefilling its prompt.

Through the real path (:class:`agent.host.errand.AgentHost`, the agent
process, the embedded model): a session's history of 1x, 4x and 8x n_ctx
tokens (earlier turns handed over with ``replace_history``) is prefilled by
a first errand; then a second errand runs twice, side by side:

- ``conversation``: the session continues its conversation, so the agent
  process evaluates only the new tokens (its KV cache already holds the rest);
- ``re-prefill``: the same history handed over again, which starts a new
  conversation: the whole prompt is evaluated, as every errand was before.

Unfinished: the ``re-prefill`` side still shares the cache's prefix (the
system message has no memory fence here, so it is the same), so it does not
yet measure a full re-prefill; it needs a cleared cache or a memory fence.

Reported: prompt tokens evaluated by the second errand (``ErrandStats``) and
its time to first token (from ``run_errand`` to the first streamed token).

    .venv/bin/python bench/bench_conversation.py [--n-ctx 512] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.host.errand import AgentHost
from agent.host.events import AgentEvent
from agent.host.permission import PermissionAnswer, PermissionRequest
from agent.host.policy import PolicyEngine
from agent.protocol import ErrandLimits
from models.factory import ModelSpec
from models.interface import Message

FILLER = "We talked about the garden, the weather and the plans for the weekend. "


class _Allow:
    def ask(self, request: PermissionRequest) -> PermissionAnswer:
        return PermissionAnswer(choice="once")


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


def timed_errand(host: AgentHost, task: str, first: list[float]) -> dict[str, Any]:
    first.clear()
    t0 = time.perf_counter()
    result = host.run_errand(task)
    wall = time.perf_counter() - t0
    stats = result.stats
    return {
        "outcome": result.outcome,
        "evaluated_tokens": stats.evaluated_tokens if stats else None,
        "ttft_s": first[0] - t0 if first else None,
        "wall_s": wall,
    }


def run(n_ctx: int, multiples: list[int]) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        (ws / "notes.txt").write_text("buy milk\n")
        first_token: list[float] = []

        def listener(event: AgentEvent) -> None:
            if event.kind == "token" and not first_token:
                first_token.append(time.perf_counter())

        host = AgentHost(
            ModelSpec(n_ctx=n_ctx),
            workspace=ws,
            broker=None,
            memory=None,
            policy=PolicyEngine(),
            prompt=_Allow(),
            audit=None,
            session_id="bench-conversation",
            listener=listener,
            tools=["list_dir"],
            limits=ErrandLimits(max_steps=1, max_tokens_per_step=24),
        )
        try:
            host.start()
            for k in multiples:
                turns = history_of(k * n_ctx)
                host.replace_history(turns)
                timed_errand(host, "Say hello.", first_token)
                kept = host.history
                conv = timed_errand(host, "Say goodbye.", first_token)
                host.replace_history(kept)
                fresh = timed_errand(host, "Say goodbye.", first_token)
                row = {"history_x_n_ctx": k, "conversation": conv, "re_prefill": fresh}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            host.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument("--multiples", default="1,4,8")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = run(args.n_ctx, [int(x) for x in args.multiples.split(",")])
    heads = ("history", "eval conv", "eval fresh", "ttft conv", "ttft fresh")
    print(" ".join(f"{h:>10}" for h in heads))
    for row in rows:
        c, f = row["conversation"], row["re_prefill"]
        print(
            f"{row['history_x_n_ctx']:>7}x {c['evaluated_tokens']:>10} {f['evaluated_tokens']:>10} "
            f"{c['ttft_s'] or 0:>9.3f}s {f['ttft_s'] or 0:>9.3f}s"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
