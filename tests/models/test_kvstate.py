"""Saved KV state: the file format and its checks, the store's cap, and a save and
restore through the real embedded model."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest

from models import kvstate
from models.catalog import embedded_default
from models.interface import Finished
from models.kvstate import (
    Binding,
    ModelHashes,
    StateCorruptError,
    StateMissingError,
    StateStaleError,
    StateStore,
)
from models.runtime import Runtime, RuntimeConfig

BINDING = Binding("ab" * 32, 512, '{"rope":"none"}', kvstate.tokens_digest([1, 2, 3]), "h1")
META = {"tokens": [1, 2, 3], "cache": {"n_evicted": 0}}


# -- the format ---------------------------------------------------------------------


def _saved(tmp_path: Path, payload: bytes = b"kv" * 100) -> Path:
    path = tmp_path / "s.kvstate"
    kvstate.write(path, BINDING, META, payload)
    return path


def test_a_state_reads_back_as_written(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    saved = kvstate.read(path, BINDING)
    assert saved.payload == b"kv" * 100
    assert saved.meta == META
    assert saved.binding == BINDING


def test_a_missing_state_is_named(tmp_path: Path) -> None:
    with pytest.raises(StateMissingError, match="no saved KV state"):
        kvstate.read(tmp_path / "none.kvstate", BINDING)


@pytest.mark.parametrize("cut", [1, 33, 200, 10_000])
def test_a_truncated_state_is_refused(tmp_path: Path, cut: int) -> None:
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: max(0, len(data) - cut)])
    with pytest.raises(StateCorruptError, match="truncated"):
        kvstate.read(path, BINDING)


def test_a_flipped_byte_fails_the_checksum(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-60] ^= 0x40  # inside the payload
    path.write_bytes(bytes(data))
    with pytest.raises(StateCorruptError, match="checksum"):
        kvstate.read(path, BINDING)


def test_another_file_or_version_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(b"GGUF" + data[4:])
    with pytest.raises(StateCorruptError, match="not a saved KV state"):
        kvstate.read(path, BINDING)
    path.write_bytes(data[:4] + b"\x09\x00" + data[6:])
    with pytest.raises(StateCorruptError, match="version 9"):
        kvstate.read(path, BINDING)


def test_tokens_that_do_not_match_their_digest_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.kvstate"
    kvstate.write(path, BINDING, {"tokens": [1, 2, 4]}, b"x")
    with pytest.raises(StateCorruptError, match="digest"):
        kvstate.read(path, BINDING)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"n_ctx": 1024}, "n_ctx"),
        ({"model_sha256": "cd" * 32}, "model file"),
        ({"settings": '{"rope":"yarn"}'}, "runtime settings"),
        ({"history": "h2"}, "conversation"),
    ],
)
def test_a_stale_state_names_what_changed(
    tmp_path: Path, change: dict[str, object], named: str
) -> None:
    path = _saved(tmp_path)
    expected = Binding(**{**BINDING.__dict__, **change})  # type: ignore[arg-type]
    with pytest.raises(StateStaleError, match=named):
        kvstate.read(path, expected)


def test_an_empty_expected_history_is_not_compared(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    kvstate.read(path, Binding(**{**BINDING.__dict__, "history": ""}))  # type: ignore[arg-type]


# -- the store and its cap ----------------------------------------------------------------


def test_the_cap_deletes_the_oldest_first(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "kv", cap_bytes=10_000)
    for i, key in enumerate(["old", "mid", "new"]):
        path = store.path_for(key)
        kvstate.write(path, BINDING, META, b"x" * 4000)
        os.utime(path, (1000 + i, 1000 + i))
    assert [s.key for s in store.files()] == ["old", "mid", "new"]
    assert store.enforce_cap(keep="new") == ["old"]
    assert [s.key for s in store.files()] == ["mid", "new"]
    assert store.used_bytes() <= 10_000


def test_the_cap_keeps_the_state_just_saved_unless_it_alone_is_too_big(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "kv", cap_bytes=3000)
    kvstate.write(store.path_for("a"), BINDING, META, b"x" * 100)
    os.utime(store.path_for("a"), (5000, 5000))  # newer than the big one
    kvstate.write(store.path_for("big"), BINDING, META, b"x" * 4000)
    os.utime(store.path_for("big"), (1000, 1000))
    assert store.enforce_cap(keep="big") == ["a", "big"]
    assert store.files() == []


def test_a_state_name_must_be_plain(tmp_path: Path) -> None:
    store = StateStore(tmp_path, cap_bytes=1)
    with pytest.raises(kvstate.KVStateError, match="not a usable"):
        store.path_for("../escape")


def test_model_hashes_are_remembered_until_the_file_changes(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"one")
    cache = tmp_path / "hashes.json"
    first = ModelHashes(cache).sha256(model)
    assert first == kvstate.file_sha256(model)
    # Same size and mtime: the remembered digest (even though the bytes changed).
    st = model.stat()
    model.write_bytes(b"two")
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ModelHashes(cache).sha256(model) == first
    model.write_bytes(b"three")
    assert ModelHashes(cache).sha256(model) == kvstate.file_sha256(model)


# -- the real model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_path() -> Path:
    return embedded_default().path


def _runtime(model_path: Path, n_ctx: int = 256) -> Runtime:
    return Runtime(RuntimeConfig(model_path=model_path, n_ctx=n_ctx, n_threads=1))


@pytest.fixture(scope="module")
def original(model_path: Path) -> Iterator[Runtime]:
    rt = _runtime(model_path)
    yield rt
    rt.close()


def _prompt(rt: Runtime, words: int) -> list[int]:
    text = " ".join(f"item{i} is {i * 7 % 13}." for i in range(words))
    return list(rt.llama.tokenize(text.encode(), add_bos=True, special=False))


def _logits(rt: Runtime) -> list[float]:
    ptr = llama_cpp.llama_get_logits_ith(rt.llama.ctx, -1)
    n = rt.llama.n_vocab()
    return list(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float * n)).contents)


def _run(rt: Runtime, prompt: list[int], n: int) -> Finished:
    events = list(rt.stream_tokens(prompt, max_tokens=n))
    last = events[-1]
    assert isinstance(last, Finished)
    return last


@pytest.mark.model
@pytest.mark.parametrize("words", [20, 120], ids=["fits", "evicted"])
def test_a_restored_state_continues_exactly_like_the_original(
    original: Runtime, model_path: Path, tmp_path: Path, words: int
) -> None:
    original.reset()
    history = _prompt(original, words)
    original.cache.pin(40)  # a pinned prefix, as the executor sets
    _run(original, history, 0)
    assert (original.cache.n_evicted > 0) == (words > 50)
    path = tmp_path / "s.kvstate"
    saved = original.save_state(path, history="conv-1", meta={"conversation": "c1"})
    assert saved.n_tokens == len(history)
    kept, cached = original.cache.kept, original.cache.n_cached

    more = _prompt(original, 3)[1:]
    expected = _run(original, history + more, 8)
    expected_logits = _logits(original)

    fresh = _runtime(model_path)
    try:
        restored = fresh.restore_state(path, history="conv-1")
        assert restored.meta == {"conversation": "c1"}
        assert fresh.cache.history == history
        assert fresh.cache.kept == kept and fresh.cache.n_cached == cached
        got = _run(fresh, history + more, 8)
        assert got.text == expected.text
        # Only the new tokens are evaluated: nothing of the saved history.
        assert got.stats.n_prompt_tokens == len(more)
        assert _logits(fresh) == pytest.approx(expected_logits, abs=1e-3)
    finally:
        fresh.close()


@pytest.mark.model
def test_stale_and_corrupt_states_leave_the_cache_alone(
    original: Runtime, model_path: Path, tmp_path: Path
) -> None:
    original.reset()
    _run(original, _prompt(original, 10), 0)
    path = tmp_path / "s.kvstate"
    original.save_state(path, history="conv-1")
    other = _runtime(model_path, n_ctx=384)
    try:
        _run(other, _prompt(other, 4), 0)
        before = list(other.cache.history)
        with pytest.raises(StateStaleError, match="n_ctx"):
            other.restore_state(path, history="conv-1")
        assert other.cache.history == before
    finally:
        other.close()
    with pytest.raises(StateStaleError, match="conversation"):
        original.restore_state(path, history="conv-2")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StateCorruptError, match="truncated"):
        original.restore_state(path, history="conv-1")


@pytest.mark.model
def test_a_restored_conversation_reuses_its_sampled_replies_like_the_original(
    model_path: Path, tmp_path: Path
) -> None:
    from models.interface import Message

    schema = {
        "type": "object",
        "properties": {"tool": {"const": "list_dir"}, "arguments": {"type": "object"}},
        "required": ["tool", "arguments"],
    }
    chat = [
        Message(role="system", content="You call tools. Reply with JSON."),
        Message(role="user", content="List the files."),
    ]

    def turn(rt: Runtime, messages: list[Message]) -> Finished:
        events = list(rt.stream_chat(messages, max_tokens=24, json_schema=schema))
        last = events[-1]
        assert isinstance(last, Finished)
        return last

    original = _runtime(model_path, n_ctx=512)
    try:
        reply = turn(original, chat).text.strip()
        original.save_state(tmp_path / "s.kvstate")
        later = [*chat, Message(role="assistant", content=reply),
                 Message(role="user", content="Again.")]
        expected = turn(original, later)
    finally:
        original.close()
    fresh = _runtime(model_path, n_ctx=512)
    try:
        fresh.restore_state(tmp_path / "s.kvstate")
        got = turn(fresh, later)
    finally:
        fresh.close()
    assert got.text == expected.text
    assert got.stats.n_prompt_tokens == expected.stats.n_prompt_tokens


@pytest.mark.model
def test_settling_evaluates_the_unevaluated_turns_now_and_the_next_turn_only_its_own(
    model_path: Path, tmp_path: Path
) -> None:
    from models.interface import Message

    chat = [
        Message(role="system", content="You are terse."),
        Message(role="user", content="Name a colour."),
    ]

    def turn(rt: Runtime, messages: list[Message]) -> Finished:
        events = list(rt.stream_chat(messages, max_tokens=6))
        last = events[-1]
        assert isinstance(last, Finished)
        return last

    task = Message(role="user", content="And a fruit?")
    rt = _runtime(model_path, n_ctx=512)
    try:
        reply = turn(rt, chat).text
        # A turn appended after the reply and never generated from (a tool
        # result at an errand's step limit), as the executor leaves it.
        left = [*chat, Message(role="assistant", content=reply),
                Message(role="user", content="Result: red, green, blue and a few more.")]
        unsettled = turn(rt, [*left, task])
        rt.reset()
        turn(rt, chat)
        settled_now = rt.settle(left)
        # The reply's last sampled token and the appended turn, nothing before.
        assert 10 < settled_now < 40, settled_now
        assert rt.settle(left) == 0  # nothing left to evaluate
        rt.save_state(tmp_path / "s.kvstate")
    finally:
        rt.close()
    fresh = _runtime(model_path, n_ctx=512)
    try:
        fresh.restore_state(tmp_path / "s.kvstate")
        got = turn(fresh, [*left, task])
    finally:
        fresh.close()
    assert got.text == unsettled.text
    # Only the task and the generation prompt: what the settling did is not redone.
    assert got.stats.n_prompt_tokens == unsettled.stats.n_prompt_tokens - settled_now


@pytest.mark.model
def test_settling_never_makes_the_cache_evict(model_path: Path) -> None:
    from models.interface import Message

    chat = [Message(role="system", content="You are terse."), Message(role="user", content="Hi.")]
    rt = _runtime(model_path, n_ctx=256)
    try:
        list(rt.stream_chat(chat, max_tokens=4))
        before = list(rt.cache.history)
        long_result = " ".join(f"file{i}.txt" for i in range(80))  # ~250 tokens: over n_ctx
        left = [*chat, Message(role="assistant", content="Hello."),
                Message(role="user", content=long_result)]
        # The next errand, which knows its pinned task, chooses what to evict.
        assert rt.settle(left) == 0
        assert rt.cache.history == before and rt.cache.n_evicted == 0
    finally:
        rt.close()
