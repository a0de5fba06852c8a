"""Memory benchmarks, measured side by side in one run.

1. By number of project topic files (10 → 10,000): opening the service
   (first full index build), ``load_context`` (index files under their
   budgets, counted with the model's tokenizer), ``recall`` (FTS5 search over
   every level, with the directory check that picks up hand edits) against the
   bare FTS query, and ``capacity_usage`` (reads every topic). Each figure is
   also given as a ratio to the 10-topic case.
2. Distillation with the embedded model (SmolLM2-135M): a session of notes
   into a project level over capacity, against the host-only pass
   (``distill(None)``: no model, capacity kept by score).

    .venv/bin/python bench/bench_memory.py            # everything
    .venv/bin/python bench/bench_memory.py --quick    # up to 1,000 topics, no model
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from memory.db import open_database
from memory.frontmatter import Provenance, TopicMeta, render_topic
from memory.index import SearchIndex
from memory.service import MemoryService
from memory.settings import LevelTokens, MemorySettings
from memory.store import INDEX_END, INDEX_START

_SYLLABLES = "ka lo mi ne ru sa te vi do fe gu ha ji ko lu ma no pe qu ri".split()
# A 4,000-word vocabulary drawn with Zipf-like weights, so a query matches a
# few entries, as in real notes (a 40-word vocabulary would match every entry).
WORDS = sorted({a + b + c for a in _SYLLABLES for b in _SYLLABLES for c in _SYLLABLES})[:4000]
WEIGHTS = [1.0 / (rank + 1) for rank in range(len(WORDS))]


def sample_words(rng: random.Random, k: int) -> list[str]:
    return rng.choices(WORDS, weights=WEIGHTS, k=k)


def words_tokenizer(text: str) -> int:
    return len(re.findall(r"\w+|[^\w\s]+", text))


def model_tokenizer() -> tuple[Callable[[str], int], str, object | None]:
    try:
        from models.catalog import embedded_default
        from models.runtime import Runtime, RuntimeConfig

        runtime = Runtime(RuntimeConfig(model_path=embedded_default().path, n_ctx=8192))
    except Exception as e:  # the bench still runs, and says which tokenizer it used
        return words_tokenizer, f"word counter (model unavailable: {e})", None
    return runtime.count_tokens, "SmolLM2-135M tokenizer", runtime


def p50_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def populate(root: Path, n: int, rng: random.Random) -> None:
    topics = root / "ws" / ".keyless" / "memory" / "topics"
    topics.mkdir(parents=True)
    from datetime import UTC, datetime

    now = datetime(2026, 11, 27, tzinfo=UTC)
    lines = []
    for i in range(n):
        body = " ".join(sample_words(rng, 60)) + f" note{i}."
        meta = TopicMeta(title=f"Topic {i}", created=now, updated=now,
                         source=Provenance(session="bench", tool="remember", trust="model"))
        (topics / f"topic-{i}.md").write_text(render_topic(meta, body))
        lines.append(f"- [Topic {i}](topics/topic-{i}.md): {body[:80]}…")
    index = root / "ws" / ".keyless" / "memory" / "MEMORY.md"
    index.write_text("# Project\nHand-written intro.\n\n" + INDEX_START + "\n"
                     + "\n".join(lines) + "\n" + INDEX_END + "\n")
    (root / "ws" / "KEYLESS.md").write_text("Shared project notes: deploy from main only.\n")
    (root / "u").mkdir()
    (root / "u" / "USER.md").write_text("I prefer short answers.\n")


def open_service(root: Path, count: Callable[[str], int], **caps: int) -> MemoryService:
    settings = MemorySettings(
        capacities=LevelTokens(user=1500, project=caps.get("project", 1500), session=1000),
        distill_max_tokens=256,
    )
    return MemoryService(user_dir=root / "u", workspace=root / "ws", db_path=root / "k.db",
                         session_id="bench", count_tokens=count, scan_secrets=lambda t: [],
                         settings=settings)


def measure(n: int, count: Callable[[str], int], rng: random.Random) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="kl-bench-mem-"))
    try:
        populate(root, n, rng)
        t0 = time.perf_counter()
        svc = open_service(root, count)
        open_ms = (time.perf_counter() - t0) * 1000
        bare_index = SearchIndex(open_database(root / "k.db"), svc.layout, max_bytes=1 << 18)
        # two words of some entry's body (a query that matches), and one exact note id
        bodies = [" ".join(sample_words(random.Random(i), 60)) for i in range(20)]
        queries = [" ".join(rng.sample(b.split(), 2)) for b in bodies] + [f"note{n // 2}"]
        turn = iter(range(10**9))

        def recall() -> object:
            return svc.recall(queries[next(turn) % len(queries)], limit=5)

        def bare() -> object:
            return bare_index.search(queries[next(turn) % len(queries)], limit=5)

        ctx = svc.load_context()
        assert all(u.tokens <= u.capacity for u in ctx.levels)
        assert ctx.levels[1].truncated == (n >= 100)
        row = {
            "open": open_ms,
            "load": p50_ms(svc.load_context, 30),
            "recall": p50_ms(recall, 60),
            "bare": p50_ms(bare, 60),
            "common": p50_ms(lambda: svc.recall(WORDS[0], limit=5), 20),
            "usage": p50_ms(svc.capacity_usage, 1 if n >= 10_000 else 5),
        }
        svc.close()
        return row
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_scale(sizes: list[int], count: Callable[[str], int]) -> list[str]:
    rng = random.Random(7)
    rows = {n: measure(n, count, rng) for n in sizes}
    base = rows[sizes[0]]
    out = [
        "| topics | open (first index) ms | load_context p50 ms | recall p50 ms | "
        "bare FTS query p50 ms | recall of the commonest word p50 ms | capacity_usage ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        r = rows[n]

        def cell(key: str, r: dict[str, float] = r) -> str:
            return f"{r[key]:.2f} ({r[key] / base[key]:.1f}×)"

        out.append(f"| {n:,} | {cell('open')} | {cell('load')} | {cell('recall')} | "
                   f"{cell('bare')} | {cell('common')} | {cell('usage')} |")
    return out


def bench_distill(runtime: object, count: Callable[[str], int]) -> list[str]:
    from models.interface import ChatModel

    assert isinstance(runtime, ChatModel)
    rng = random.Random(3)
    out = ["| pass | seconds | model ops applied | model ops rejected | promoted as they were | "
           "archived for capacity | project tokens / cap | model answer |",
           "|---|---:|---:|---:|---:|---:|---:|---|"]
    for label, model in (("host only (no model)", None), ("SmolLM2-135M proposes", runtime)):
        root = Path(tempfile.mkdtemp(prefix="kl-bench-distill-"))
        try:
            (root / "ws").mkdir()
            svc = open_service(root, count, project=300)
            for i in range(6):
                svc.remember(f"note {i}", " ".join(sample_words(rng, 30)),
                             level="session", source=Provenance(trust="model"))
                svc.remember(f"fact {i}", " ".join(sample_words(rng, 30)),
                             level="project", source=Provenance(trust="user"))
            if model is not None:
                model.reset()
            report = svc.distill(model)
            usage = next(u for u in svc.capacity_usage() if u.level == "project")
            ops = [op for lv in report.levels for op in lv.applied]
            promoted = sum(op.note in ("promoted as it was", "appended to the existing topic")
                           for op in ops)
            rejected = sum(len(lv.rejected) for lv in report.levels)
            archived = sum(len(lv.archived_for_capacity) for lv in report.levels)
            errors = [lv.model_error for lv in report.levels if lv.model_error]
            answer = "-" if model is None else (errors[0][:60] if errors else "valid plan")
            out.append(f"| {label} | {report.seconds:.2f} | {len(ops) - promoted} | {rejected} | "
                       f"{promoted} | {archived} | {usage.tokens} / {usage.capacity} | {answer} |")
            svc.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="≤ 1,000 topics and no model")
    parser.add_argument("--distill-only", action="store_true", help="skip the scale table")
    args = parser.parse_args()
    if args.quick:
        count, label, runtime = words_tokenizer, "word counter", None
    else:
        count, label, runtime = model_tokenizer()
    sizes = [10, 100, 1000] if args.quick else [10, 100, 1000, 10_000]
    if not args.distill_only:
        print(f"## memory: scale (tokenizer: {label}; ratio to 10 topics in brackets)\n")
        print("\n".join(bench_scale(sizes, count)))
    if runtime is not None:
        print("\n## memory: distillation of 6 session notes into a project of 6 topics "
              "(capacity 300 tokens, answer ≤ 256 tokens)\n")
        print("\n".join(bench_distill(runtime, count)))
        runtime.close()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
