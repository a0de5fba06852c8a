"""Remote backend vs local runtime: same model, same machine, one run.

Starts llama-cpp-python's OpenAI-compatible server on loopback serving the
embedded model, loads the same model in-process with :class:`models.runtime.Runtime`,
and generates the same greedy answer through both, alternating, several times.
Prints tokens/s, time to first token, the ratio and the latency each token
gains by going through HTTP + SSE.

    .venv/bin/python -m bench bench_remote
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading

import httpx

from models.catalog import embedded_default
from models.interface import Message, complete_chat
from models.remote import OpenAIChatModel
from models.runtime import Runtime, RuntimeConfig

N_CTX = 2048
MAX_TOKENS = 128
REPEATS = 5
THREADS = max(1, min(4, os.cpu_count() or 1))
PROMPT = [Message(role="user", content="Write a short paragraph about lighthouses.")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_server(model_path: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "llama_cpp.server", "--model", model_path,
            "--model_alias", "bench", "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(N_CTX), "--n_threads", str(THREADS), "--verbose", "False",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/v1"
    with httpx.Client(timeout=2.0) as client:
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit("llama_cpp.server exited; is the server extra installed?")
            try:
                if client.get(f"{base}/models").status_code == 200:
                    return proc, base
            except httpx.HTTPError:
                pass
            threading.Event().wait(0.1)
    proc.kill()
    raise SystemExit("llama_cpp.server did not start within a minute")


def main() -> None:
    """Measure and print the comparison table."""
    model_file = embedded_default()
    proc, base = _start_server(str(model_file.path))
    local = Runtime(RuntimeConfig(model_path=model_file.path, n_ctx=N_CTX, n_threads=THREADS))
    remote = OpenAIChatModel(base, "bench", allow_local=True)
    rows: dict[str, dict[str, list[float]]] = {
        name: {"tps": [], "ttft": [], "n": []} for name in ("local", "remote")
    }
    try:
        for model in (local, remote):  # warm-up: load pages, fill caches
            complete_chat(model, PROMPT, max_tokens=8)
        for i in range(REPEATS):
            # A fresh prompt each round: the server's prompt cache must not
            # make its time to first token look better than a new question's.
            prompt = [Message(role="user", content=f"{PROMPT[0].content} (Take {i + 1}.)")]
            for name, model in (("local", local), ("remote", remote)):
                model.reset()
                stats = complete_chat(model, prompt, max_tokens=MAX_TOKENS).stats
                rows[name]["tps"].append(stats.tokens_per_second)
                rows[name]["ttft"].append((stats.time_to_first_token_s or 0.0) * 1000)
                rows[name]["n"].append(stats.n_generated)
    finally:
        remote.close()
        local.close()
        proc.terminate()
        proc.wait(timeout=10)

    med = {name: {k: statistics.median(v) for k, v in row.items()} for name, row in rows.items()}
    print(f"model {model_file.name}, n_ctx {N_CTX}, {THREADS} threads, median of {REPEATS}")
    print()
    print("| backend | tokens generated | tokens/s | time to first token (ms) | ms/token |")
    print("|---|---|---|---|---|")
    for name in ("local", "remote"):
        m = med[name]
        print(
            f"| {name} | {m['n']:.0f} | {m['tps']:.1f} | {m['ttft']:.1f} | {1000 / m['tps']:.2f} |"
        )
    ratio = med["remote"]["tps"] / med["local"]["tps"]
    added = 1000 / med["remote"]["tps"] - 1000 / med["local"]["tps"]
    print()
    print(f"remote/local tokens/s ratio: {ratio:.2f}; added latency per token: {added:.2f} ms")


if __name__ == "__main__":
    main()
