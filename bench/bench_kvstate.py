"""Saved KV state benchmark: resuming a session from disk vs re-prefilling it.

Through the real path (:class:`agent.host.errand.AgentHost`, the agent process
in its sandbox, the embedded model): a session of about ``--tokens`` tokens
(earlier turns handed over with ``replace_history``, then one errand that
prefills them) is left, which saves its state; then the session is reopened
twice, side by side, each time in a fresh host whose agent process has
already loaded the model:

- ``restored``: the host restores the saved state (checked whole: header,
  length, checksum, binding) and the errand evaluates only its new tokens;
- ``re-prefill``: no saved state (the store is off), so the whole
  conversation is evaluated again, as before states were saved.

Reported: time to first token of the reopened session's errand (from the
restore request, or ``run_errand`` without one, to the first streamed token;
the restore's own share apart), the prompt
tokens it evaluated, and the state file's size per 1,000 tokens. A second
table does the same in process (:meth:`models.runtime.Runtime.restore_state`
against feeding the tokens), without the agent process and the protocol.

    .venv/bin/python -m bench kvstate [--tokens 2000] [--n-ctx 4096] [--json out.json]
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
from bench.bench_conversation import history_of
from models.catalog import embedded_default
from models.factory import ModelSpec
from models.kvstate import ModelHashes, StateStore
from models.runtime import Runtime, RuntimeConfig

SESSION = "bench-kvstate"


class _Allow:
    def ask(self, request: PermissionRequest) -> PermissionAnswer:
        return PermissionAnswer(choice="once")


def _host(ws: Path, n_ctx: int, store: StateStore | None, first: list[float]) -> AgentHost:
    def listener(event: AgentEvent) -> None:
        if event.kind == "token" and not first:
            first.append(time.perf_counter())

    extra: dict[str, Any] = {}
    if store is not None:
        extra = {"kv_store": store, "model_hashes": ModelHashes(store.directory / "hashes.json")}
    return AgentHost(
        ModelSpec(n_ctx=n_ctx),
        workspace=ws,
        broker=None,
        memory=None,
        policy=PolicyEngine(),
        prompt=_Allow(),
        audit=None,
        session_id=SESSION,
        listener=listener,
        tools=["list_dir"],
        limits=ErrandLimits(max_steps=1, max_tokens_per_step=16),
        **extra,
    )


def _reopen(ws: Path, n_ctx: int, store: StateStore | None, history: Any) -> dict[str, Any]:
    first: list[float] = []
    host = _host(ws, n_ctx, store, first)
    try:
        host.start()  # model load is not part of the resume
        host.replace_history(history)
        t0 = time.perf_counter()
        reply = host.restore_state() if store is not None else None
        restore = time.perf_counter() - t0
        if store is not None and (reply is None or not reply.ok):
            raise RuntimeError(f"the saved state was not restored: {reply}")
        result = host.run_errand("Say goodbye.")
        wall = time.perf_counter() - t0
    finally:
        host._kv_store = None  # noqa: SLF001 - do not save again; keep the state measured
        host.close()
    stats = result.stats
    return {
        "outcome": result.outcome,
        "evaluated_tokens": stats.evaluated_tokens if stats else None,
        "ttft_s": first[0] - t0 if first else None,
        "restore_s": restore,
        "wall_s": wall,
    }


def through_host(tokens: int, n_ctx: int) -> dict[str, Any]:
    """Leave a session of about ``tokens`` tokens, then reopen it both ways."""
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        ws.mkdir()
        store = StateStore(Path(tmp) / "kvstate", cap_bytes=1 << 34)
        first: list[float] = []
        host = _host(ws, n_ctx, store, first)
        try:
            host.replace_history(history_of(max(0, tokens - 450)))
            result = host.run_errand("Say hello.")
            history = host.history
            # Leaving the session saves its state (what close does), timed:
            # the turns the errand appended unevaluated are evaluated then.
            t0 = time.perf_counter()
            reply = host.save_state()
            leave = time.perf_counter() - t0
            if reply is None or not reply.ok:
                raise RuntimeError(f"the state was not saved: {reply}")
        finally:
            host._kv_store = None  # noqa: SLF001 - saved above; keep that state measured
            host.close()
        saved = store.files()
        size = saved[0].size if saved else 0
        prefilled = result.stats.evaluated_tokens if result.stats else 0
        restored = _reopen(ws, n_ctx, store, history)
        fresh = _reopen(ws, n_ctx, None, history)
        return {
            "session_tokens": prefilled,
            "saved_tokens": reply.n_tokens,
            "leave_s": leave,
            "state_bytes": size,
            "bytes_per_1000_tokens": round(size * 1000 / max(1, reply.n_tokens)),
            "restored": restored,
            "re_prefill": fresh,
        }


def in_process(tokens: int, n_ctx: int) -> dict[str, Any]:
    """Runtime.restore_state vs feeding the same tokens, in one process."""
    path = embedded_default().path
    config = RuntimeConfig(model_path=path, n_ctx=n_ctx)
    with tempfile.TemporaryDirectory() as tmp, Runtime(config) as rt:
        text = " ".join(f"item{i} is {i * 7 % 13}." for i in range(tokens))
        prompt = list(rt.llama.tokenize(text.encode(), add_bos=True, special=False))[:tokens]
        t0 = time.perf_counter()
        list(rt.stream_tokens(prompt, max_tokens=0))
        prefill = time.perf_counter() - t0
        state = Path(tmp) / "s.kvstate"
        t0 = time.perf_counter()
        info = rt.save_state(state)
        save = time.perf_counter() - t0
        rt.reset()
        t0 = time.perf_counter()
        rt.restore_state(state)
        restore = time.perf_counter() - t0
        return {
            "tokens": len(prompt),
            "prefill_s": prefill,
            "save_s": save,
            "restore_s": restore,
            "bytes": info.size,
            "bytes_per_1000_tokens": round(info.size * 1000 / len(prompt)),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    host = through_host(args.tokens, args.n_ctx)
    local = in_process(args.tokens, args.n_ctx)
    r, f = host["restored"], host["re_prefill"]
    speedup = (f["ttft_s"] / r["ttft_s"]) if r["ttft_s"] and f["ttft_s"] else None
    print(f"session of {host['session_tokens']} tokens (n_ctx {args.n_ctx}), reopened:\n")
    print("| | time to first token | of which restore | prompt tokens evaluated |")
    print("|---|---:|---:|---:|")
    print(
        f"| restored from saved state | {r['ttft_s']:.3f} s | {r['restore_s']:.3f} s "
        f"| {r['evaluated_tokens']} |"
    )
    print(f"| re-prefill | {f['ttft_s']:.3f} s | - | {f['evaluated_tokens']} |")
    if speedup:
        print(f"\nrestored is {speedup:.1f}x sooner to first token")
    print(
        f"leaving the session (saving {host['saved_tokens']} tokens, the last errand's "
        f"unevaluated turns evaluated first): {host['leave_s']:.3f} s"
    )
    print(
        f"state file: {host['state_bytes'] / 1e6:.1f} MB, "
        f"{host['bytes_per_1000_tokens'] / 1e6:.2f} MB per 1,000 tokens\n"
    )
    print(f"in process ({local['tokens']} tokens):\n")
    print("| prefill | save | restore | restore vs prefill | MB per 1,000 tokens |")
    print("|---:|---:|---:|---:|---:|")
    print(
        f"| {local['prefill_s']:.3f} s | {local['save_s']:.3f} s | {local['restore_s']:.3f} s | "
        f"{local['prefill_s'] / local['restore_s']:.0f}x | "
        f"{local['bytes_per_1000_tokens'] / 1e6:.2f} |"
    )
    if args.json:
        args.json.write_text(json.dumps({"host": host, "in_process": local}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
