"""Model runtime benchmarks, measured side by side in one run.

1. Decode throughput: the Runtime's streaming path vs a bare low-level
   llama-cpp-python loop (llama_decode + a greedy sampler) on the same model,
   threads and n_ctx.
2. Flat cost past overflow: one generation of G x n_ctx tokens; per-token
   latency (p50) early vs late, and decode speed per stretch of the
   generation (1x, 2x, 4x, 8x ... n_ctx), with the sink cache vs the naive
   "re-prefill when full" baseline (no KV shift: drop the oldest half of the
   window and evaluate the rest again). Then per-turn latency of a chat turn
   once the conversation is past n_ctx vs the common "drop the oldest
   messages and re-prefill the whole prompt" baseline.
3. Quality (StreamingLLM's table): perplexity of the embedded model on a long
   public text (verbatim free-software licenses, bench/data/licenses.txt)
   with a 256-token cache: 4 sinks + 252 window vs 0 + 256 (window only) vs
   1, 2, 8 sinks, vs a sliding window with re-computation, vs dense attention.
3e. Eviction policies (experimental H2O): perplexity and per-token cost of
   full cache, sinks + window, H2O + window, sinks + H2O + window (and H2O
   reading 5 of 30 layers, and H2O scoring mean rather than accumulated
   attention) at cache budgets of 20 % and 50 % of the text, on
   licenses.txt and a second text (bench/data/python_reference.txt), the
   variants of one text interleaved token by token.
4. Positional Interpolation: perplexity at 1.5 x n_ctx_train with linear RoPE
   scaling (factor 2) vs none.
5. Model load time and time to first token.

    .venv/bin/python -m bench models            # everything, default sizes
    .venv/bin/python bench/bench_models.py --only 1,2 --threads 2
    .venv/bin/python -m bench.bench_models --only 3e --evict-tokens 1024
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from models.catalog import embedded_default
from models.interface import Finished, Message, Token
from models.runtime import Runtime, RuntimeConfig
from models.sinkcache import SinkCache

TEXT = Path(__file__).parent / "data" / "licenses.txt"
# A second public text of another kind: sections of the Python Language Reference.
TEXT2 = Path(__file__).parent / "data" / "python_reference.txt"
CHAT = [Message(role="user", content="Tell a very long story about a lighthouse keeper.")]


# -- helpers --------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(_fmt(c) for c in row) + " |")
    print(flush=True)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def runtime(n_ctx: int, threads: int, **kw: Any) -> Runtime:
    can_shift = kw.pop("can_shift", None)
    config = RuntimeConfig(model_path=embedded_default().path, n_ctx=n_ctx, n_threads=threads, **kw)
    return Runtime(config, can_shift=can_shift)


def corpus_tokens(rt: Runtime) -> list[int]:
    tokens: list[int] = rt.llama.tokenize(TEXT.read_bytes(), add_bos=False, special=False)
    return tokens


def stream_latencies(rt: Runtime, prompt: list[int], n: int) -> tuple[list[float], Finished]:
    """Per-token wall latencies of the Runtime's streaming path (greedy, ignore_eos)."""
    gaps: list[float] = []
    last = time.perf_counter()
    final: Finished | None = None
    for event in rt.stream_tokens(prompt, max_tokens=n, ignore_eos=True):
        now = time.perf_counter()
        if isinstance(event, Token):
            gaps.append(now - last)
        else:
            final = event
        last = now
    assert final is not None
    return gaps, final


def ms(seconds: float) -> float:
    return seconds * 1000.0


# -- 1. streaming path vs bare loop ---------------------------------------------------------------


def bare_decode(rt: Runtime, prompt: list[int], n: int) -> Iterator[int]:
    """Greedy decode with llama.cpp's C API only, yielding each token."""
    llm = rt.llama
    ctx = llm.ctx
    llama_cpp.llama_memory_clear(llm._ctx.memory, True)
    llm.n_tokens = 0
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
    arr = (llama_cpp.llama_token * len(prompt))(*prompt)
    if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(prompt))) != 0:
        raise RuntimeError("prefill failed")
    one = (llama_cpp.llama_token * 1)()
    try:
        for i in range(n):
            token = llama_cpp.llama_sampler_sample(chain, ctx, -1)
            yield token
            if i == n - 1:
                break
            one[0] = token
            if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1)) != 0:
                raise RuntimeError("decode failed")
    finally:
        llama_cpp.llama_sampler_free(chain)
        llama_cpp.llama_memory_clear(llm._ctx.memory, True)


def bench_throughput(threads: int, reps: int) -> None:
    n_ctx, n = 512, 400
    print(f"### 1. Decode throughput (n_ctx {n_ctx}, {n} tokens, {threads} threads)\n")
    with runtime(n_ctx, threads) as rt, runtime(n_ctx, threads) as bare_rt:
        prompt = rt.render(CHAT)
        spent = {"ours": 0.0, "bare": 0.0}
        cpu = {"ours": 0.0, "bare": 0.0}  # this thread's CPU time: immune to other load
        counts = {"ours": 0, "bare": 0}
        for _ in range(reps):
            rt.reset()
            streams: dict[str, Iterator[Any]] = {
                "ours": iter(rt.stream_tokens(prompt, max_tokens=n, ignore_eos=True)),
                "bare": bare_decode(bare_rt, prompt, n),
            }
            # Token by token, alternating, so machine load drifts over both alike;
            # the first item (prefill) is left out of both.
            for stream in streams.values():
                next(stream)
            while streams:
                for name, stream in list(streams.items()):
                    t, c = time.perf_counter(), time.thread_time()
                    item = next(stream, None)
                    dc, dt = time.thread_time() - c, time.perf_counter() - t
                    if item is None or isinstance(item, Finished):
                        del streams[name]
                        continue
                    spent[name] += dt
                    cpu[name] += dc
                    counts[name] += 1
    a, b = counts["ours"] / spent["ours"], counts["bare"] / spent["bare"]
    ac, bc = counts["ours"] / cpu["ours"], counts["bare"] / cpu["bare"]
    table(
        ["variant", f"tok/s wall ({reps} x {n} tokens, interleaved)", "ratio vs bare",
         "tok per CPU-second (1 thread)", "ratio vs bare"],
        [["bare llama_decode loop", b, 1.0, bc, 1.0],
         ["Runtime.stream_tokens", a, a / b, ac, ac / bc]],
    )  # fmt: skip


# -- 2. flat cost past overflow -------------------------------------------------------------------


def bench_flat(threads: int, n_ctx: int, factor: int) -> None:
    total = factor * n_ctx
    print(f"### 2a. One generation of {total} tokens ({factor} x n_ctx {n_ctx}), "
          f"{threads} threads\n")  # fmt: skip
    variants: dict[str, Runtime] = {
        "sink cache (4 sinks, shift)": runtime(n_ctx, threads),
        "re-prefill when full (baseline)": runtime(
            n_ctx, threads, n_sink=0, evict_chunk=n_ctx // 2, can_shift=False
        ),
    }
    gaps: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    finals: dict[str, Finished] = {}
    prompt = variants["sink cache (4 sinks, shift)"].render(CHAT)
    # Interleave the two generations token by token, so the shared machine's
    # drifting load lands on both alike; time only the work inside next().
    active = {
        name: iter(rt.stream_tokens(prompt, max_tokens=total, ignore_eos=True))
        for name, rt in variants.items()
    }
    while active:
        for name, stream in list(active.items()):
            t, c = time.perf_counter(), time.thread_time()
            event = next(stream, None)
            dt, dc = time.perf_counter() - t, time.thread_time() - c
            if event is None:
                del active[name]
            elif isinstance(event, Token):
                gaps[name].append(dt)
                cpus[name].append(dc)
            else:
                finals[name] = event
    sink, base = gaps["sink cache (4 sinks, shift)"], gaps["re-prefill when full (baseline)"]
    full_at = n_ctx - len(prompt)  # index of the first token that overflows the cache
    rows = []
    for name, g in gaps.items():
        first, last = statistics.median(g[:200]), statistics.median(g[-200:])
        before = statistics.median(g[max(0, full_at - 200) : full_at])
        worst = max(g[full_at:])
        rows.append(
            [name, ms(first), ms(before), ms(last), last / first, last / before,
             ms(float(np.percentile(g, 99))), ms(worst), finals[name].stats.n_shifts]
        )  # fmt: skip
    table(
        ["variant", "p50 first 200 (ms)", "p50 200 before overflow (ms)", "p50 last 200 (ms)",
         "last/first", "last/before overflow", "p99 (ms)", "worst after overflow (ms)",
         "evictions"],
        rows,
    )  # fmt: skip
    # The same in this thread's CPU time per token: what the machine's other load cannot move.
    rows = []
    for name, g in cpus.items():
        first, last = statistics.median(g[:200]), statistics.median(g[-200:])
        before = statistics.median(g[max(0, full_at - 200) : full_at])
        rows.append([name, ms(first), ms(before), ms(last), last / first, last / before,
                     ms(float(np.percentile(g[full_at:], 99))), ms(max(g[full_at:]))])  # fmt: skip
    table(
        ["variant (CPU time)", "p50 first 200 (ms)", "p50 200 before overflow", "p50 last 200",
         "last/first", "last/before overflow", "p99 after overflow", "worst after overflow"],
        rows,
    )  # fmt: skip
    # Decode speed per stretch of the generation: [0,1x), [1x,2x), [2x,4x), [4x,8x), ...
    bounds = [0, 1]
    while bounds[-1] * 2 <= factor:
        bounds.append(bounds[-1] * 2)
    if bounds[-1] < factor:
        bounds.append(factor)
    rows = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        s = sink[lo * n_ctx : hi * n_ctx]
        b = base[lo * n_ctx : hi * n_ctx]
        s_tps, b_tps = len(s) / sum(s), len(b) / sum(b)
        rows.append([f"{lo}x-{hi}x n_ctx", s_tps, b_tps, s_tps / b_tps,
                     ms(float(np.percentile(s, 99))), ms(float(np.percentile(b, 99)))])  # fmt: skip
    table(
        ["stretch", "sink tok/s", "baseline tok/s", "sink/baseline", "sink p99 ms",
         "baseline p99 ms"],
        rows,
    )  # fmt: skip
    for rt in variants.values():
        rt.close()


def bench_turns(threads: int, n_ctx: int, lengths: Sequence[int], reps: int) -> None:
    """Per-turn latency once a conversation is past n_ctx."""
    new_turn, answer = 40, 32
    print(f"### 2b. One chat turn ({new_turn} new tokens + {answer} generated) at conversation "
          f"length L, n_ctx {n_ctx}\n")  # fmt: skip
    with runtime(n_ctx, threads) as sink_rt, runtime(n_ctx, threads) as base_rt:
        corpus = corpus_tokens(sink_rt)
        rows = []
        for mult in lengths:
            length = mult * n_ctx
            history = corpus[:length]
            turn = corpus[length : length + new_turn]
            s_times, b_times, s_ttft, b_ttft = [], [], [], []
            for _ in range(reps):
                sink_rt.reset()
                list(sink_rt.stream_tokens(history, max_tokens=0))  # the conversation so far
                t = time.perf_counter()
                s_final = list(sink_rt.stream_tokens(history + turn, max_tokens=answer,
                                                     ignore_eos=True))[-1]  # fmt: skip
                s_times.append(time.perf_counter() - t)
                assert isinstance(s_final, Finished)
                s_ttft.append(s_final.stats.time_to_first_token_s or 0.0)
                # Baseline: drop the oldest tokens so prompt + answer fit, re-prefill it all.
                keep = (history + turn)[-(n_ctx - answer - 1) :]
                base_rt.reset()
                t = time.perf_counter()
                b_final = list(base_rt.stream_tokens(keep, max_tokens=answer, ignore_eos=True))[-1]
                b_times.append(time.perf_counter() - t)
                assert isinstance(b_final, Finished)
                b_ttft.append(b_final.stats.time_to_first_token_s or 0.0)
            assert isinstance(s_final, Finished) and isinstance(b_final, Finished)
            s, b = statistics.median(s_times), statistics.median(b_times)
            s1, b1 = statistics.median(s_ttft), statistics.median(b_ttft)
            rows.append([f"{mult} x n_ctx ({length})", s_final.stats.n_prompt_tokens,
                         b_final.stats.n_prompt_tokens, ms(s1), ms(b1), b1 / s1,
                         ms(s), ms(b), b / s])  # fmt: skip
    table(
        ["conversation length", "prompt tokens evaluated: sink", "re-prefill",
         "first token (ms): sink", "re-prefill", "speed-up",
         "whole turn (ms): sink", "re-prefill", "speed-up"],
        rows,
    )  # fmt: skip


# -- 3. perplexity with a small cache -------------------------------------------------------------


def _logits_last(llm: Any) -> np.ndarray:
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def _nll(logits: np.ndarray, target: int) -> float:
    m = float(logits.max())
    return float(m + np.log(np.exp(logits - m).sum()) - logits[target])


def nll_streaming(rt: Runtime, tokens: list[int], n_sink: int) -> np.ndarray:
    """NLL of tokens[1:] fed one at a time through a sink cache evicting one token at a time."""
    cache = SinkCache(rt.llama, n_sink=n_sink, evict_chunk=1)
    cache.clear()
    out = np.zeros(len(tokens) - 1)
    for i in range(len(tokens) - 1):
        cache.feed([tokens[i]])
        out[i] = _nll(_logits_last(rt.llama), tokens[i + 1])
    cache.clear()
    return out


def nll_dense(rt: Runtime, tokens: list[int], n_batch: int = 256) -> np.ndarray:
    """NLL of tokens[1:] with every previous token in context (batched, all logits)."""
    llm = rt.llama
    llama_cpp.llama_memory_clear(llm._ctx.memory, True)
    llm.n_tokens = 0
    n_vocab = llm.n_vocab()
    out = np.zeros(len(tokens) - 1)
    for start in range(0, len(tokens) - 1, n_batch):
        chunk = tokens[start : min(start + n_batch, len(tokens) - 1)]
        llm._batch.set_batch(batch=chunk, n_past=start, logits_all=True)
        llm._ctx.decode(llm._batch)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx),
                                       shape=(len(chunk), n_vocab))  # fmt: skip
        m = logits.max(axis=1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))
        targets = np.asarray(tokens[start + 1 : start + 1 + len(chunk)])
        out[start : start + len(chunk)] = lse - logits[np.arange(len(chunk)), targets]
    llama_cpp.llama_memory_clear(llm._ctx.memory, True)
    return out


def nll_recompute(
    rt: Runtime, tokens: list[int], window: int, positions: Sequence[int]
) -> np.ndarray:
    """NLL at the given positions, re-evaluating the previous ``window`` tokens each time."""
    llm = rt.llama
    out = np.zeros(len(positions))
    for k, i in enumerate(positions):
        llama_cpp.llama_memory_clear(llm._ctx.memory, True)
        llm.n_tokens = 0
        llm.eval(tokens[max(0, i + 1 - window) : i + 1])
        out[k] = _nll(_logits_last(llm), tokens[i + 1])
    llama_cpp.llama_memory_clear(llm._ctx.memory, True)
    llm.n_tokens = 0
    return out


def ppl(nll: np.ndarray) -> float:
    return float(np.exp(nll.mean()))


def bench_quality(threads: int, n_tokens: int, stride: int) -> None:
    cache_size = 256
    print(f"### 3. Perplexity on {n_tokens} tokens of bench/data/licenses.txt, "
          f"cache {cache_size} tokens\n")  # fmt: skip
    with runtime(cache_size, threads, evict_chunk=1) as small:
        tokens = corpus_tokens(small)[:n_tokens]
        positions = list(range(cache_size, n_tokens - 1, stride))
        results: dict[str, np.ndarray] = {}
        for sinks in (4, 0, 1, 2, 8):
            label = (
                f"sink cache {sinks}+{cache_size - sinks}"
                if sinks
                else f"window only 0+{cache_size}"
            )
            t = time.perf_counter()
            results[label] = nll_streaming(small, tokens, sinks)
            print(f"  ({label}: {time.perf_counter() - t:.0f} s)", flush=True)
        t = time.perf_counter()
        recompute = nll_recompute(small, tokens, cache_size, positions)
        took = time.perf_counter() - t
        print(f"  (sliding window with re-computation: {took:.0f} s)", flush=True)
    with runtime(max(n_tokens, 512), threads) as big:
        results["dense (all tokens in context)"] = nll_dense(big, tokens)
    ref = ppl(recompute)
    rows = []
    for label, nll in results.items():
        past = nll[cache_size:]  # tokens predicted once the cache is full
        at = nll[positions]
        rows.append([label, ppl(past), ppl(at), ppl(at) / ref])
    rows.append([f"sliding window + re-computation ({cache_size})", "-", ref, 1.0])
    table(
        ["variant", f"PPL, tokens {cache_size}..{n_tokens}",
         f"PPL at every {stride}th token", "vs re-computation"],
        rows,
    )  # fmt: skip


# -- 3e. eviction policies: sinks vs heavy hitters (H2O) -------------------------------------------


def _eviction_variants(budget: int, n_full: int) -> list[tuple[str, int, dict[str, Any]]]:
    """(label, n_ctx, runtime settings) of each variant at one budget."""
    few = tuple(range(0, 30, 6))
    return [
        ("full cache", n_full, {}),
        ("sinks 4 + window", budget, {}),
        ("H2O + window", budget, {"n_sink": 0, "eviction": "h2o"}),
        ("sinks 4 + H2O + window", budget, {"eviction": "sinks+h2o"}),
        ("sinks 4 + H2O (5 of 30 layers) + window", budget,
         {"eviction": "sinks+h2o", "h2o_layers": few}),
        ("sinks 4 + H2O mean score + window", budget,
         {"eviction": "sinks+h2o", "h2o_score": "mean"}),
    ]  # fmt: skip


def bench_eviction(threads: int, n_tokens: int, fractions: Sequence[float]) -> None:
    """Perplexity and per-token cost of each eviction policy, at budgets of the text length."""
    print(f"### 3e. Eviction policies: {n_tokens} tokens per text, budgets "
          f"{', '.join(f'{f:.0%}' for f in fractions)} of the text, evicting one token at a "
          f"time, {threads} thread(s)\n")  # fmt: skip
    rows = []
    for text in (TEXT, TEXT2):
        variants: dict[tuple[str, int], Runtime] = {}
        for fraction in fractions:
            budget = int(n_tokens * fraction)
            for label, n_ctx, kw in _eviction_variants(budget, n_tokens + 16):
                if label == "full cache" and variants:
                    continue  # one full-cache run serves every budget
                variants[(label, budget)] = runtime(n_ctx, threads, evict_chunk=1, **kw)
        first = next(iter(variants.values()))
        tokens: list[int] = first.llama.tokenize(text.read_bytes(), add_bos=False, special=False)
        tokens = tokens[:n_tokens]
        nll = {key: np.zeros(len(tokens) - 1) for key in variants}
        wall = {key: 0.0 for key in variants}
        cpu = {key: 0.0 for key in variants}
        for rt in variants.values():
            rt.cache.clear()
        t0 = time.perf_counter()
        # Token by token, every variant in turn: the box's drifting load lands on all alike.
        for i in range(len(tokens) - 1):
            for key, rt in variants.items():
                t, c = time.perf_counter(), time.thread_time()
                rt.cache.feed([tokens[i]])
                wall[key] += time.perf_counter() - t
                cpu[key] += time.thread_time() - c
                nll[key][i] = _nll(_logits_last(rt.llama), tokens[i + 1])
        took = time.perf_counter() - t0
        print(f"  ({text.name}: {len(variants)} variants, {took:.0f} s)", flush=True)
        full_key = next(k for k in variants if k[0] == "full cache")
        n = len(tokens) - 1
        for fraction in fractions:
            budget = int(n_tokens * fraction)
            full_ppl = ppl(nll[full_key][budget:])
            sink_cpu = cpu[("sinks 4 + window", budget)]
            for label, *_ in _eviction_variants(budget, 0):
                key = full_key if label == "full cache" else (label, budget)
                evicted = variants[key].cache.total_evicted
                rows.append([text.name, f"{fraction:.0%} ({budget})", label,
                             ppl(nll[key][budget:]), ppl(nll[key][budget:]) / full_ppl,
                             ms(wall[key] / n), ms(cpu[key] / n), cpu[key] / sink_cpu,
                             evicted])  # fmt: skip
        for rt in variants.values():
            rt.close()
    table(
        ["text", "budget (tokens)", "variant", "PPL after the budget fills", "vs full cache",
         "ms/token (wall)", "CPU ms/token", "CPU vs sinks", "evicted"],
        rows,
    )  # fmt: skip


# -- 4. Positional Interpolation ------------------------------------------------------------------


def bench_pi(threads: int, multiple: float) -> None:
    with runtime(64, threads) as probe:
        n_train = probe.info.n_ctx_train or 8192
        tokens_all = corpus_tokens(probe)
    n = int(n_train * multiple)
    if len(tokens_all) < n:
        raise SystemExit(f"the corpus has {len(tokens_all)} tokens, {n} needed")
    tokens = tokens_all[:n]
    print(f"### 4. Positional Interpolation: dense perplexity over {n} tokens "
          f"({multiple} x n_ctx_train {n_train})\n")  # fmt: skip
    rows = []
    linear: dict[str, Any] = {"rope_scaling": {"kind": "linear", "factor": 2.0}}
    for label, kw in (("no scaling", {}), ("linear (PI) x2", linear)):
        t = time.perf_counter()
        with runtime(n, threads, **kw) as rt:
            nll = nll_dense(rt, tokens)
        rows.append([label, ppl(nll[:n_train]), ppl(nll[n_train:]), ppl(nll),
                     time.perf_counter() - t])  # fmt: skip
    base_beyond = rows[0][2]
    for row in rows:
        row.insert(4, float(row[2]) / float(base_beyond))
    table(
        ["RoPE", f"PPL tokens < {n_train}", f"PPL tokens >= {n_train}", "PPL all",
         "beyond-train PPL vs none", "seconds"],
        rows,
    )  # fmt: skip


# -- 5. load and first token ----------------------------------------------------------------------


def bench_load(threads: int, reps: int) -> None:
    print("### 5. Model load and time to first token (embedded model, n_ctx 4096)\n")
    path = str(embedded_default().path)
    bare_load, ours_load, ttft = [], [], []
    n_prompt = 0
    for _ in range(reps):
        t = time.perf_counter()
        llm = llama_cpp.Llama(model_path=path, n_ctx=4096, n_threads=threads, verbose=False)
        bare_load.append(time.perf_counter() - t)
        llm.close()
        t = time.perf_counter()
        rt = runtime(4096, threads)
        ours_load.append(time.perf_counter() - t)
        n_prompt = len(rt.render(CHAT))
        final = list(rt.stream_chat(CHAT, max_tokens=1))[-1]
        assert isinstance(final, Finished) and final.stats.time_to_first_token_s is not None
        ttft.append(final.stats.time_to_first_token_s)
        rt.close()
    a, b = statistics.median(ours_load), statistics.median(bare_load)
    table(
        ["measure", "median (ms)", "ratio"],
        [["bare llama_cpp.Llama load", ms(b), 1.0],
         ["Runtime load (GGUF header check + Llama + cache)", ms(a), a / b],
         [f"time to first token, {n_prompt}-token chat prompt", ms(statistics.median(ttft)),
          "-"]],
    )  # fmt: skip


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="1,2,3,3e,4,5", help="comma-separated benchmark numbers"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--flat-n-ctx", type=int, default=512)
    parser.add_argument("--flat-factor", type=int, default=20, help="generation length / n_ctx")
    parser.add_argument("--turn-lengths", default="1,2,4,8", help="conversation lengths / n_ctx")
    parser.add_argument("--ppl-tokens", type=int, default=2048)
    parser.add_argument("--ppl-stride", type=int, default=8)
    parser.add_argument("--pi-multiple", type=float, default=1.5)
    parser.add_argument("--evict-tokens", type=int, default=1024, help="tokens per text in 3e")
    parser.add_argument("--evict-budgets", default="0.2,0.5", help="cache budgets / text in 3e")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",")}
    info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    print(f"llama.cpp: {info}\n")
    steps: list[tuple[str, Callable[[], None]]] = [
        ("5", lambda: bench_load(args.threads, args.reps)),
        ("1", lambda: bench_throughput(args.threads, args.reps)),
        ("2", lambda: bench_flat(args.threads, args.flat_n_ctx, args.flat_factor)),
        ("2", lambda: bench_turns(args.threads, args.flat_n_ctx,
                                  [int(x) for x in args.turn_lengths.split(",")], args.reps)),
        ("3", lambda: bench_quality(args.threads, args.ppl_tokens, args.ppl_stride)),
        ("3e", lambda: bench_eviction(args.threads, args.evict_tokens,
                                      [float(x) for x in args.evict_budgets.split(",")])),
        ("4", lambda: bench_pi(args.threads, args.pi_multiple)),
    ]  # fmt: skip
    for key, step in steps:
        if key in only:
            t = time.perf_counter()
            step()
            print(f"({time.perf_counter() - t:.0f} s)\n", flush=True)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
