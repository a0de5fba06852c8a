"""The sink cache on the real embedded model, at a small n_ctx (128).

Checks that one generation and one conversation run far past n_ctx, that
llama.cpp's positions stay in step with ``Llama.input_ids`` / ``n_tokens``,
that a shifted cache predicts what a fresh prefill of the same tokens
predicts, and that the re-prefill fallback works when shifting is off.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from models.catalog import embedded_default
from models.errors import ContextTooSmallError
from models.interface import CancelToken, Finished, Message, Token
from models.runtime import Runtime, RuntimeConfig
from models.sinkcache import SinkCache

pytestmark = pytest.mark.model

N_CTX = 128
# One thread: the shared test machine is oversubscribed, where llama.cpp's
# spinning worker threads slow each other down.
THREADS = 1
STORY = [Message(role="user", content="Tell a very long story.")]


@pytest.fixture(scope="module")
def model_path() -> Path:
    return embedded_default().path


@pytest.fixture(scope="module")
def shifting(model_path: Path) -> Iterator[Runtime]:
    rt = Runtime(RuntimeConfig(model_path=model_path, n_ctx=N_CTX, n_threads=THREADS))
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def fallback(model_path: Path) -> Iterator[Runtime]:
    config = RuntimeConfig(model_path=model_path, n_ctx=N_CTX, n_threads=THREADS)
    rt = Runtime(config, can_shift=False)
    yield rt
    rt.close()


def assert_consistent(rt: Runtime) -> None:
    """llama.cpp's positions, Llama's bookkeeping and the history agree."""
    cache = rt.cache
    llm = rt.llama
    n = cache.n_cached
    assert 0 < n <= N_CTX
    assert cache.seq_pos_min() == 0
    assert cache.seq_pos_max() == n - 1
    expected = cache.history[: cache.n_sink] + cache.history[cache.n_sink + cache.n_evicted :]
    assert llm.input_ids[:n].tolist() == expected
    state = rt.context_state()
    assert state.n_sink + state.n_window == n
    assert state.n_evicted == cache.n_evicted


def generate(rt: Runtime, messages: list[Message], n: int, **kw: object) -> Finished:
    events = list(rt.stream_chat(messages, max_tokens=n, **kw))
    final = events[-1]
    assert isinstance(final, Finished)
    return final


def test_one_generation_runs_three_times_past_n_ctx(shifting: Runtime) -> None:
    shifting.reset()
    final = generate(shifting, STORY, 3 * N_CTX, ignore_eos=True)
    assert final.stats.n_generated == 3 * N_CTX
    assert final.stats.stop_reason == "max_tokens"
    assert final.stats.n_shifts > 0
    assert final.stats.n_evicted >= 3 * N_CTX - N_CTX
    assert shifting.context_state().shift_supported
    assert shifting.cache.n_reprefills == 0
    assert_consistent(shifting)
    # Not degenerate: a story still has many distinct words after the shifts.
    tail_words = final.text.split()[-150:]
    assert len(set(tail_words)) > 20


def test_a_conversation_continues_past_n_ctx(shifting: Runtime) -> None:
    shifting.reset()
    messages: list[Message] = []
    topics = ["the sea", "mountains", "a city at night", "a forest", "snow"]
    reused_turns = 0
    for topic in topics:
        messages.append(Message(role="user", content=f"Write a paragraph about {topic}."))
        full = len(shifting.render(messages))
        final = generate(shifting, messages, 80, ignore_eos=True)
        if final.stats.n_prompt_tokens < full // 2:
            reused_turns += 1
        messages.append(Message(role="assistant", content=final.text))
        assert_consistent(shifting)
    assert len(shifting.cache.history) > 3 * N_CTX
    assert shifting.context_state().n_evicted > 0
    assert reused_turns >= len(topics) // 2, "later turns should reuse the cached prefix"


def test_shifted_cache_predicts_like_a_fresh_prefill(shifting: Runtime) -> None:
    """After shifts, the cache predicts what a fresh prefill of the same tokens predicts.

    Not bit-exact by design: the window's keys and values were computed while
    the evicted tokens were still visible (StreamingLLM's window-with-sinks vs
    re-computation), so only the prediction itself must agree.
    """
    import llama_cpp

    shifting.reset()
    generate(shifting, STORY, 2 * N_CTX, ignore_eos=True)
    cache, llm = shifting.cache, shifting.llama
    assert cache.n_shifts > 0
    probe = cache.history[-1]
    n_vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()

    cache.feed([probe])  # decodes on top of the shifted keys
    shifted = last_logits()
    fresh_tokens = llm.input_ids[: cache.n_cached].tolist()
    cache.clear()
    llm.eval(fresh_tokens)  # the same tokens at positions 0.., computed from scratch
    fresh = last_logits()
    shifting.reset()
    assert int(shifted.argmax()) == int(fresh.argmax())
    top_shifted = set(np.argsort(shifted)[-10:].tolist())
    top_fresh = set(np.argsort(fresh)[-10:].tolist())
    assert len(top_shifted & top_fresh) >= 8
    assert np.corrcoef(shifted, fresh)[0, 1] > 0.95


def test_seq_add_rerotates_keys_exactly(shifting: Runtime) -> None:
    """The K-shift the cache relies on: moving every key by +d changes nothing.

    RoPE attention depends only on relative positions, so a window evaluated
    at 0..n-1, shifted by seq_add to d..n-1+d and probed at n+d must give the
    logits of the unshifted window probed at n (up to f16 rounding).
    """
    import llama_cpp

    shifting.reset()
    llm, cache = shifting.llama, shifting.cache
    window = shifting.render(STORY)
    probe = window[-1]
    n, d = len(window), 37
    n_vocab = llm.n_vocab()
    mem = llm._ctx.memory

    def probe_at(pos: int) -> np.ndarray:
        llm._batch.set_batch(batch=[probe], n_past=pos, logits_all=False)
        llm._ctx.decode(llm._batch)
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()

    llm.eval(window)
    plain = probe_at(n)
    llama_cpp.llama_memory_seq_rm(mem, 0, n, -1)
    llama_cpp.llama_memory_seq_add(mem, 0, 0, -1, d)
    assert cache.seq_pos_min() == d and cache.seq_pos_max() == n - 1 + d
    moved = probe_at(n + d)
    shifting.reset()
    assert int(plain.argmax()) == int(moved.argmax())
    assert np.corrcoef(plain, moved)[0, 1] > 0.999
    assert float(np.abs(plain - moved).max()) < 0.05 * float(np.abs(plain).max())


def test_fallback_reprefills_when_shifting_is_impossible(fallback: Runtime) -> None:
    fallback.reset()
    final = generate(fallback, STORY, 3 * N_CTX, ignore_eos=True)
    assert final.stats.n_generated == 3 * N_CTX
    state = fallback.context_state()
    assert state.shift_supported is False
    assert fallback.cache.n_reprefills > 0
    assert fallback.cache.n_reprefills == fallback.cache.n_shifts
    assert_consistent(fallback)


def test_shift_and_fallback_agree_before_the_first_eviction(
    shifting: Runtime, fallback: Runtime
) -> None:
    shifting.reset()
    fallback.reset()
    room = N_CTX - len(shifting.render(STORY)) - 1
    a = generate(shifting, STORY, room, ignore_eos=True)
    b = generate(fallback, STORY, room, ignore_eos=True)
    assert a.stats.n_evicted == b.stats.n_evicted == 0
    assert a.text == b.text


def test_a_prompt_longer_than_n_ctx_keeps_sinks_and_the_tail(shifting: Runtime) -> None:
    shifting.reset()
    long_text = " ".join(f"Item {i} is on the list." for i in range(80))
    messages = [Message(role="user", content=long_text + " Which item came last?")]
    n_prompt = len(shifting.render(messages))
    assert n_prompt > 3 * N_CTX
    final = generate(shifting, messages, 20)
    assert final.stats.n_generated > 0
    # Only sinks + a window were evaluated, not the whole prompt.
    assert final.stats.n_prompt_tokens < N_CTX
    assert final.stats.n_evicted >= n_prompt - N_CTX
    assert_consistent(shifting)


def test_cancel_from_another_thread_during_overflow(shifting: Runtime) -> None:
    import threading

    shifting.reset()
    cancel = CancelToken()
    n_tokens = 0
    for event in shifting.stream_chat(STORY, max_tokens=10 * N_CTX, ignore_eos=True, cancel=cancel):
        if isinstance(event, Token):
            n_tokens += 1
            if n_tokens == N_CTX + 10:
                worker = threading.Thread(target=cancel.cancel)
                worker.start()
                worker.join()
        else:
            assert event.stats.stop_reason == "cancelled"
            assert event.stats.n_generated <= N_CTX + 11
            assert event.stats.n_shifts > 0
    assert_consistent(shifting)


def test_chunk_and_window_limits_are_checked(shifting: Runtime) -> None:
    with pytest.raises(ContextTooSmallError, match="evict_chunk"):
        SinkCache(shifting.llama, n_sink=4, evict_chunk=N_CTX)
    with pytest.raises(ContextTooSmallError, match="window"):
        SinkCache(shifting.llama, n_sink=N_CTX - 8)


# -- the pinned prefix -----------------------------------------------------------------


def assert_pinned(rt: Runtime, prefix: int, span: tuple[int, int]) -> None:
    """The cache's own token history still holds every pinned token, in place."""
    cache = rt.cache
    kept = cache.kept
    assert kept[:prefix] == list(range(prefix))
    assert set(range(*span)) <= set(kept)
    ids = list(rt.llama.input_ids[: cache.n_cached])
    assert ids == [cache.history[i] for i in kept]
    assert cache.seq_pos_max() == cache.n_cached - 1
    # What the agent process reports to the host says the same.
    state = rt.context_state()
    assert state.n_pinned == state.n_pinned_cached == prefix + span[1] - span[0]


@pytest.mark.parametrize("can_shift", [True, False])
def test_pinned_instructions_and_task_survive_output_far_past_n_ctx(
    model_path: Path, can_shift: bool
) -> None:
    config = RuntimeConfig(model_path=model_path, n_ctx=N_CTX, n_threads=THREADS)
    with Runtime(config, can_shift=can_shift) as rt:
        messages = [
            Message(role="system", content="You are a careful assistant. Follow the task."),
            Message(role="user", content="An earlier question " * 20),
            Message(role="assistant", content="An earlier answer " * 20),
            Message(role="user", content="Count the words in the file."),
            Message(role="user", content="file contents " * 150),
        ]
        rt.pin_messages(1, 3)
        prompt = rt.render(messages)
        finished = [
            e for e in rt.stream_chat(messages, max_tokens=8) if isinstance(e, Finished)
        ]
        assert finished
        prefix, span = rt.cache.pinned
        assert span is not None and prefix > rt.cache.n_sink
        # The pins are the rendered system message and the task message.
        assert rt.render(messages[:1])[: prefix - 1] == prompt[: prefix - 1]
        assert len(prompt) > 3 * N_CTX and rt.cache.n_evicted > 0
        assert_pinned(rt, prefix, span)
        # Without pins the same prompt loses the instructions.
        rt.pin_messages(0)
        rt.reset()
        list(rt.stream_chat(messages, max_tokens=1))
        assert rt.cache.kept[: rt.cache.n_sink + 1] != list(range(rt.cache.n_sink + 1))
        assert rt.context_state().n_pinned == 0


def test_pins_too_large_for_the_window_are_cut(shifting: Runtime) -> None:
    shifting.reset()
    generate(shifting, STORY, 2 * N_CTX, ignore_eos=True)
    cache = shifting.cache
    pinned = cache.pin(N_CTX, (N_CTX + 1, N_CTX + 5))
    try:
        assert pinned == N_CTX - 2 * cache.evict_chunk
        assert cache.pinned == (N_CTX - 2 * cache.evict_chunk, None)
    finally:
        cache.pin(cache.n_sink)
    assert cache.kept == list(range(cache.n_sink)) + list(
        range(cache.n_sink + cache.n_evicted, len(cache.history))
    )
    assert_consistent(shifting)


def pinned_conversation(n_tokens: int) -> list[Message]:
    """Instructions, earlier turns, the task, then tool output: about ``n_tokens`` in all."""
    words = n_tokens // 2
    return [
        Message(role="system", content="You are a careful assistant. Follow the task."),
        Message(role="user", content="An earlier question " * (words // 6)),
        Message(role="assistant", content="An earlier answer " * (words // 6)),
        Message(role="user", content="Count the words in the file."),
        Message(role="user", content="file contents " * (2 * words // 3)),
    ]


@pytest.mark.parametrize("can_shift", [True, False])
def test_a_pinned_long_prefill_evaluates_only_the_pins_and_the_last_window(
    model_path: Path, can_shift: bool
) -> None:
    """Tokens a pinned prefill would evict anyway are skipped, not evaluated.

    The prompt is eight contexts long; what must be evaluated is the pinned
    instructions, the pinned task and the last window of the rest, so the
    cache's own counter stays under n_ctx and nothing is shifted.
    """
    config = RuntimeConfig(model_path=model_path, n_ctx=N_CTX, n_threads=THREADS)
    with Runtime(config, can_shift=can_shift) as rt:
        messages = pinned_conversation(8 * N_CTX)
        prompt = rt.render(messages)
        assert len(prompt) > 6 * N_CTX
        rt.pin_messages(1, 3)
        final = generate(rt, messages, 1)
        cache = rt.cache
        assert final.stats.n_prompt_tokens <= N_CTX
        assert cache.n_evaluated == final.stats.n_prompt_tokens
        assert cache.n_shifts == 0 and cache.n_reprefills == 0
        prefix, span = cache.pinned
        assert span is not None and prefix > cache.n_sink
        assert_pinned(rt, prefix, span)
        assert cache.history == prompt
        # The window is the prompt's end, right after the pins.
        window = cache.kept[prefix + span[1] - span[0] :]
        assert window == list(range(len(prompt) - len(window), len(prompt)))
        assert len(window) >= N_CTX // 2


def test_a_pinned_feed_past_a_full_window_skips_too(model_path: Path) -> None:
    """A long continuation of a cached, pinned conversation drops the old window once."""
    config = RuntimeConfig(model_path=model_path, n_ctx=N_CTX, n_threads=THREADS)
    with Runtime(config) as rt:
        messages = pinned_conversation(8 * N_CTX)
        short = [*messages[:3], Message(role="user", content="Count the words.")]
        rt.pin_messages(1, 3)
        generate(rt, [short[0], Message(role="user", content="Say hello.")], 1)
        first = rt.cache.n_evaluated
        long_tail = [*short, Message(role="user", content="file contents " * (3 * N_CTX))]
        rt.pin_messages(1, 3)
        final = generate(rt, long_tail, 1)
        assert final.stats.n_prompt_tokens <= N_CTX
        assert rt.cache.n_evaluated - first == final.stats.n_prompt_tokens
        prefix, span = rt.cache.pinned
        assert span is not None
        assert_pinned(rt, prefix, span)
        # The task span is where the task message renders.
        task = rt.render(long_tail[:4])
        assert rt.cache.history[span[0] : span[1]] == task[span[0] : span[1]]


def test_the_state_reports_pinned_tokens_the_cache_no_longer_holds(shifting: Runtime) -> None:
    shifting.reset()
    # Only the sinks pinned: the tokens after them go first.
    generate(shifting, STORY, 2 * N_CTX, ignore_eos=True)
    cache = shifting.cache
    assert cache.n_evicted > 10
    cache.pin(cache.n_sink + 10)
    try:
        state = shifting.context_state()
        assert state.n_pinned == cache.n_sink + 10
        assert state.n_pinned_cached == cache.n_sink
    finally:
        cache.pin(cache.n_sink)
    assert shifting.context_state().n_pinned == 0
    assert_consistent(shifting)
