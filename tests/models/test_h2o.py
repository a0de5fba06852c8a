"""Heavy-hitter (H2O) eviction on the real embedded model, at a small n_ctx (128).

Checks that the attention tap maps KV cells to cache positions (the first
token, the attention sink, collects the most attention), that scattered
evictions keep llama.cpp's positions, ``Llama.input_ids`` and the kept
history in step, and that decoding after such evictions predicts what a
fresh prefill of the kept tokens at the same positions predicts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from models.catalog import embedded_default
from models.errors import GenerationError, ModelLoadError
from models.h2o import HeavyHitters
from models.interface import Finished, Message
from models.runtime import Runtime, RuntimeConfig
from models.sinkcache import SinkCache, _runs

N_CTX = 128
THREADS = 1
STORY = [Message(role="user", content="Tell a very long story.")]
TEXT = Path(__file__).parents[2] / "bench" / "data" / "licenses.txt"


@pytest.fixture(scope="module")
def model_path() -> Path:
    return embedded_default().path


@pytest.fixture(scope="module")
def h2o(model_path: Path) -> Iterator[Runtime]:
    config = RuntimeConfig(
        model_path=model_path, n_ctx=N_CTX, n_threads=THREADS, eviction="sinks+h2o", evict_chunk=8
    )
    rt = Runtime(config)
    yield rt
    rt.close()


def assert_consistent(rt: Runtime) -> None:
    """llama.cpp's positions, Llama's bookkeeping, the kept list and the tap agree."""
    cache, llm = rt.cache, rt.llama
    n = cache.n_cached
    assert 0 < n <= N_CTX
    assert cache.seq_pos_min() == 0
    assert cache.seq_pos_max() == n - 1
    kept = cache.kept
    assert len(kept) == n
    assert kept == sorted(set(kept))
    assert kept[: cache.n_sink] == list(range(cache.n_sink))
    assert llm.input_ids[:n].tolist() == [cache.history[i] for i in kept]
    assert len(cache.history) - n == cache.n_evicted
    assert isinstance(cache.policy, HeavyHitters)
    assert len(cache.policy.tap.cells) == n
    assert len(set(cache.policy.tap.cells)) == n


def text_tokens(rt: Runtime, n: int) -> list[int]:
    tokens: list[int] = rt.llama.tokenize(TEXT.read_bytes(), add_bos=False, special=False)
    return tokens[:n]


def last_logits(llm: object) -> np.ndarray:
    ctx = llm.ctx  # type: ignore[attr-defined]
    n_vocab = llm.n_vocab()  # type: ignore[attr-defined]
    ptr = llama_cpp.llama_get_logits_ith(ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()


def test_runs_split_positions_into_contiguous_ranges() -> None:
    assert _runs([4, 5, 6, 9, 11, 12]) == [(4, 7), (9, 10), (11, 13)]
    assert _runs([7]) == [(7, 8)]


def test_the_tap_sees_the_attention_sink(h2o: Runtime) -> None:
    """Position 0 gets by far the most attention: the tap maps cells to positions."""
    h2o.reset()
    tokens = text_tokens(h2o, 100)
    h2o.cache.feed(tokens[:40])  # a batch (40 query rows per layer)
    for t in tokens[40:]:
        h2o.cache.feed([t])  # then one at a time
    policy = h2o.cache.policy
    assert isinstance(policy, HeavyHitters)
    scores = policy.position_scores()
    assert len(scores) == 100
    assert int(scores.argmax()) == 0
    assert scores[0] > 5 * float(np.median(scores[1:]))
    # Every query row's attention sums to 1 per head and tapped layer.
    n_head = int(llama_cpp.llama_model_n_head(h2o.llama._model.model))
    total = 100 * n_head * policy.tap.n_layers_tapped
    assert float(scores.sum()) == pytest.approx(total, rel=1e-3)
    # Each position knows how many query rows have seen it (for the mean score).
    cells = np.asarray(policy.tap.cells)
    assert policy.tap.clock == 100
    assert policy.tap.born[cells].tolist() == list(range(1, 101))
    h2o.reset()


def test_scattered_evictions_keep_positions_contiguous(h2o: Runtime) -> None:
    h2o.reset()
    events = list(h2o.stream_chat(STORY, max_tokens=3 * N_CTX, ignore_eos=True))
    final = events[-1]
    assert isinstance(final, Finished)
    assert final.stats.n_generated == 3 * N_CTX
    assert final.stats.n_evicted >= 2 * N_CTX
    assert_consistent(h2o)
    kept = h2o.cache.kept
    # Heavy hitters were kept from the middle: the kept tokens after the sinks
    # are not one contiguous run (the sink cache would keep exactly that).
    after_sinks = kept[h2o.cache.n_sink :]
    assert after_sinks != list(range(after_sinks[0], after_sinks[0] + len(after_sinks)))


def test_a_conversation_reuses_its_prefix_after_scattered_evictions(h2o: Runtime) -> None:
    h2o.reset()
    messages = list(STORY)
    for topic in ("a lighthouse", "a baker", "a comet"):
        messages.append(Message(role="user", content=f"Now tell one about {topic}."))
        final = list(h2o.stream_chat(messages, max_tokens=60, ignore_eos=True))[-1]
        assert isinstance(final, Finished)
        messages.append(Message(role="assistant", content=final.text))
        assert_consistent(h2o)
    assert h2o.cache.n_evicted > 0


def test_decoding_after_eviction_matches_a_fresh_prefill(h2o: Runtime, model_path: Path) -> None:
    """Greedy tokens after scattered evictions = greedy tokens from a fresh prefill.

    The fresh context evaluates exactly the kept tokens at the same positions
    (0..n-1). The evicted cache's keys and values were computed while the
    evicted tokens were visible, so the logits differ a little; the greedy
    continuation (a few tokens) must agree.
    """
    h2o.reset()
    cache, llm = h2o.cache, h2o.llama
    cache.feed(text_tokens(h2o, 3 * N_CTX))
    for _ in range(N_CTX):  # one token at a time: evictions chosen by attention
        cache.feed([int(last_logits(llm).argmax())])
    assert_consistent(h2o)
    kept_tokens = llm.input_ids[: cache.n_cached].tolist()
    evicted_greedy = []
    for _ in range(4):
        token = int(last_logits(llm).argmax())
        evicted_greedy.append(token)
        cache.feed([token])
    with Runtime(RuntimeConfig(model_path=model_path, n_ctx=N_CTX, n_threads=THREADS)) as fresh:
        fresh.llama.eval(kept_tokens)
        fresh_greedy = []
        for _ in range(4):
            token = int(last_logits(fresh.llama).argmax())
            fresh_greedy.append(token)
            fresh.llama.eval([token])
        assert fresh.cache.seq_pos_max() == len(kept_tokens) + 3
    assert evicted_greedy == fresh_greedy
    h2o.reset()


def test_fallback_without_shift_reprefills_the_kept_tokens(model_path: Path) -> None:
    config = RuntimeConfig(
        model_path=model_path, n_ctx=N_CTX, n_threads=THREADS, eviction="h2o", evict_chunk=16
    )
    with Runtime(config, can_shift=False) as rt:
        assert rt.cache.n_sink == 0
        final = list(rt.stream_chat(STORY, max_tokens=2 * N_CTX, ignore_eos=True))[-1]
        assert isinstance(final, Finished)
        assert rt.cache.n_reprefills == rt.cache.n_shifts > 0
        assert_consistent(rt)


def test_the_tap_rejects_layers_the_model_lacks(model_path: Path) -> None:
    llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=64, n_threads=1, verbose=False)
    try:
        with pytest.raises(ModelLoadError, match="layers must be within"):
            HeavyHitters(llm, recent=None, layers=[999])
    finally:
        llm.close()


def test_a_tap_out_of_step_with_the_cache_is_an_error(model_path: Path) -> None:
    llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=64, n_threads=1, verbose=False)
    try:
        policy = HeavyHitters(llm, recent=8, layers=[0, 15])
        # Nothing tapped yet (as when the graph has no attention tensors to read).
        with pytest.raises(GenerationError, match="saw no kq_soft_max tensors"):
            policy.choose(10, 0, 1)
        cache = SinkCache(llm, n_sink=0, evict_chunk=4, policy=policy)
        cache.feed(list(range(100, 110)))
        assert len(policy.tap.cells) == 10
        # Tokens dropped behind the cache's back: the tap still tracks them.
        llama_cpp.llama_memory_seq_rm(llm._ctx.memory, 0, 6, -1)
        llm.n_tokens = 6
        with pytest.raises(GenerationError, match="tracks 10 positions, the cache holds 6"):
            policy.choose(cache.n_cached, 0, 1)
    finally:
        llm.close()
