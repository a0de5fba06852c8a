"""The llama.cpp runtime: the shared contract on the real embedded model, plus
loading, settings, bad files, prefix reuse, concurrency and closing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest

from models.catalog import embedded_default, read_header
from models.errors import ContextTooSmallError, GenerationError, ModelError, ModelFileError
from models.interface import CancelToken, ChatModel, Finished, Message, Token
from models.runtime import (
    RopeScaling,
    Runtime,
    RuntimeConfig,
    llama_kwargs,
)
from tests.models.contract import HELLO, ChatModelContract

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def model_path() -> Path:
    return embedded_default().path


@pytest.fixture(scope="module")
def runtime(model_path: Path) -> Iterator[Runtime]:
    rt = Runtime(RuntimeConfig(model_path=model_path, n_ctx=512, n_threads=1))
    yield rt
    rt.close()


class TestRuntimeContract(ChatModelContract):
    @pytest.fixture
    def model(self, runtime: Runtime) -> Iterator[ChatModel]:
        runtime.reset()
        yield runtime

    def fresh_model(self) -> ChatModel:
        return Runtime(RuntimeConfig(model_path=embedded_default().path, n_ctx=128, n_threads=1))


# -- settings -------------------------------------------------------------------------


def test_gpu_layers_follow_the_build_unless_overridden(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    header = read_header(model_path)
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)
    assert llama_kwargs(RuntimeConfig(model_path=model_path), header)["n_gpu_layers"] == -1
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)
    assert llama_kwargs(RuntimeConfig(model_path=model_path), header)["n_gpu_layers"] == 0
    cfg = RuntimeConfig(model_path=model_path, n_gpu_layers=7)
    assert llama_kwargs(cfg, header)["n_gpu_layers"] == 7


def test_rope_scaling_maps_to_llama_cpp_parameters(model_path: Path) -> None:
    header = read_header(model_path)
    none = llama_kwargs(RuntimeConfig(model_path=model_path), header)
    assert "rope_scaling_type" not in none and "rope_freq_scale" not in none
    linear = llama_kwargs(
        RuntimeConfig(model_path=model_path, rope_scaling=RopeScaling(kind="linear", factor=2)),
        header,
    )
    assert linear["rope_scaling_type"] == llama_cpp.LLAMA_ROPE_SCALING_TYPE_LINEAR
    assert linear["rope_freq_scale"] == pytest.approx(0.5)
    yarn = llama_kwargs(
        RuntimeConfig(model_path=model_path, rope_scaling=RopeScaling(kind="yarn", factor=4)),
        header,
    )
    assert yarn["rope_scaling_type"] == llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN
    assert yarn["rope_freq_scale"] == pytest.approx(0.25)
    assert yarn["yarn_orig_ctx"] == 8192


def test_kv_cache_is_f16_by_default(model_path: Path) -> None:
    header = read_header(model_path)
    kwargs = llama_kwargs(RuntimeConfig(model_path=model_path), header)
    assert kwargs["type_k"] == kwargs["type_v"] == 1  # GGML_TYPE_F16


def test_info_reports_the_loaded_settings(runtime: Runtime) -> None:
    info = runtime.info
    assert info.backend == "llama.cpp"
    assert info.n_ctx == 512
    assert info.n_ctx_train == 8192
    assert info.n_gpu_layers == (-1 if llama_cpp.llama_supports_gpu_offload() else 0)


def test_linear_rope_scaling_loads_and_generates(model_path: Path) -> None:
    cfg = RuntimeConfig(
        model_path=model_path,
        n_ctx=128,
        n_threads=1,
        rope_scaling=RopeScaling(kind="linear", factor=2.0),
    )
    with Runtime(cfg) as rt:
        assert rt.info.rope_scaling == "linear x2"
        events = list(rt.stream_chat(HELLO, max_tokens=5))
    final = events[-1]
    assert isinstance(final, Finished) and final.stats.n_generated > 0


# -- bad input --------------------------------------------------------------------------------


def test_missing_file_is_a_model_file_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="cannot open"):
        Runtime(RuntimeConfig(model_path=tmp_path / "nope.gguf"))


def test_non_gguf_file_is_refused_before_llama_cpp(tmp_path: Path) -> None:
    bogus = tmp_path / "weights.gguf"
    bogus.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(ModelFileError, match="not a GGUF"):
        Runtime(RuntimeConfig(model_path=bogus))


def test_truncated_model_is_refused_before_llama_cpp(model_path: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with model_path.open("rb") as src, cut.open("wb") as dst:
        dst.write(src.read(5_000_000))
    with pytest.raises(ModelFileError, match="truncated"):
        Runtime(RuntimeConfig(model_path=cut))


def test_too_small_context_is_refused(model_path: Path) -> None:
    with pytest.raises(ContextTooSmallError, match="window"):
        Runtime(RuntimeConfig(model_path=model_path, n_ctx=16))


# -- generation ----------------------------------------------------------------------------------


def test_stats_report_speed_and_first_token_latency(runtime: Runtime) -> None:
    runtime.reset()
    final = list(runtime.stream_chat(HELLO, max_tokens=20, ignore_eos=True))[-1]
    assert isinstance(final, Finished)
    assert final.stats.n_generated == 20
    assert final.stats.tokens_per_second > 0
    assert final.stats.time_to_first_token_s is not None and final.stats.time_to_first_token_s > 0
    assert final.stats.n_prompt_tokens == len(runtime.render(HELLO))


def test_next_turn_evaluates_only_new_tokens(runtime: Runtime) -> None:
    runtime.reset()
    first = list(runtime.stream_chat(HELLO, max_tokens=30))[-1]
    assert isinstance(first, Finished)
    turn2 = [
        *HELLO,
        Message(role="assistant", content=first.text),
        Message(role="user", content="Now one sentence about mountains."),
    ]
    full = len(runtime.render(turn2))
    second = list(runtime.stream_chat(turn2, max_tokens=10))[-1]
    assert isinstance(second, Finished)
    new_part = full - len(runtime.render(HELLO)) - first.stats.n_generated
    # Only the new user message (plus at most a few re-tokenised reply tokens) is evaluated.
    assert second.stats.n_prompt_tokens < full
    assert second.stats.n_prompt_tokens <= new_part + 8


def test_same_prompt_twice_reuses_all_but_the_last_token(runtime: Runtime) -> None:
    runtime.reset()
    list(runtime.stream_chat(HELLO, max_tokens=1))
    again = list(runtime.stream_chat(HELLO, max_tokens=1))[-1]
    assert isinstance(again, Finished)
    assert again.stats.n_prompt_tokens == 1


def test_a_second_concurrent_generation_is_refused(runtime: Runtime) -> None:
    runtime.reset()
    first = runtime.stream_chat(HELLO, max_tokens=50, ignore_eos=True)
    assert isinstance(next(first), Token)
    second = runtime.stream_chat(HELLO, max_tokens=5)
    with pytest.raises(GenerationError, match="already generating"):
        next(second)
    first.close()  # releases the runtime
    assert isinstance(list(runtime.stream_chat(HELLO, max_tokens=2))[-1], Finished)


def test_bad_json_schema_is_a_generation_error(runtime: Runtime) -> None:
    with pytest.raises(GenerationError, match="invalid JSON schema"):
        runtime.stream_chat(HELLO, max_tokens=5, json_schema={"type": "no-such-type"})
    with pytest.raises(GenerationError, match="grammar"):
        runtime.stream_chat(HELLO, max_tokens=5, json_schema={"$ref": "https://x.test/s.json"})


def test_nested_tool_call_schema_yields_valid_json(runtime: Runtime) -> None:
    from models.fake import check_json

    schema = {
        "$defs": {
            "ReadFile": {
                "type": "object",
                "properties": {
                    "tool": {"const": "read_file"},
                    "arguments": {
                        "type": "object",
                        "properties": {"path": {"type": "string", "maxLength": 40}},
                        "required": ["path"],
                    },
                },
                "required": ["tool", "arguments"],
            },
            "Final": {
                "type": "object",
                "properties": {"final": {"type": "string", "maxLength": 60}},
                "required": ["final"],
            },
        },
        "anyOf": [{"$ref": "#/$defs/ReadFile"}, {"$ref": "#/$defs/Final"}],
    }
    runtime.reset()
    messages = [Message(role="user", content="Read the file notes.txt. Answer with a tool call.")]
    final = list(runtime.stream_chat(messages, max_tokens=150, json_schema=schema))[-1]
    assert isinstance(final, Finished)
    assert final.stats.stop_reason == "eos"
    check_json(final.text, schema)


def test_close_during_a_generation_stops_it_and_frees_the_model(model_path: Path) -> None:
    rt = Runtime(RuntimeConfig(model_path=model_path, n_ctx=128, n_threads=1))
    stream = rt.stream_chat(HELLO, max_tokens=100, ignore_eos=True, cancel=CancelToken())
    assert isinstance(next(stream), Token)
    rt.close()
    rest = list(stream)
    final = rest[-1]
    assert isinstance(final, Finished)
    assert final.stats.stop_reason == "cancelled"
    assert final.stats.n_generated <= 2
    with pytest.raises(ModelError, match="closed"):
        rt.count_tokens("x")


# -- a conversation continues from the tokens it sampled ---------------------------------

STEP_SCHEMA = {
    "type": "object",
    "properties": {"tool": {"type": "string"}, "arguments": {"type": "object"}},
    "required": ["tool", "arguments"],
}


def test_the_next_turn_reuses_a_grammar_reply_instead_of_evaluating_it_again(
    runtime: Runtime,
) -> None:
    """A reply sampled under a grammar is tokenized unlike its text; the cache keeps it anyway.

    The next prompt renders the reply's text, which tokenizes differently
    from what was sampled; the runtime puts the sampled tokens back, so only
    the turn after the reply is evaluated.
    """
    runtime.reset()
    messages = [
        Message(role="system", content="Reply with one JSON object naming a tool."),
        Message(role="user", content="List the files in the workspace."),
    ]
    events = list(runtime.stream_chat(messages, max_tokens=40, json_schema=STEP_SCHEMA))
    first = events[-1]
    assert isinstance(first, Finished) and first.stats.n_generated > 5
    reply = first.text.strip()
    start = len(runtime.render(messages))
    retokenized = runtime.llama.tokenize(reply.encode(), add_bos=False, special=False)
    # The precondition that makes this test able to fail: the sampled tokens
    # (in the cache's own history) are not the reply's text re-tokenized.
    assert runtime.cache.history[start : start + len(retokenized)] != retokenized
    following = [
        *messages,
        Message(role="assistant", content=reply),
        Message(role="user", content="Now say that you are done."),
    ]
    after_reply = len(runtime.render(following)) - start - len(retokenized)
    events = list(runtime.stream_chat(following, max_tokens=4))
    second = events[-1]
    assert isinstance(second, Finished)
    # The turn after the reply, plus the reply's last token (never evaluated).
    assert second.stats.n_prompt_tokens <= after_reply + 1, (second.stats, after_reply)


def test_a_changed_reply_is_evaluated_again(runtime: Runtime) -> None:
    """Sampled tokens stand in only for the very same text: an edited reply is evaluated."""
    runtime.reset()
    messages = [
        Message(role="system", content="Reply with one JSON object naming a tool."),
        Message(role="user", content="List the files in the workspace."),
    ]
    first = list(runtime.stream_chat(messages, max_tokens=40, json_schema=STEP_SCHEMA))[-1]
    assert isinstance(first, Finished)
    edited = first.text.strip().replace("{", "{ ", 1) + " "
    following = [
        *messages,
        Message(role="assistant", content=edited),
        Message(role="user", content="Now say that you are done."),
    ]
    prompt = runtime.render(following)
    second = list(runtime.stream_chat(following, max_tokens=1))[-1]
    assert isinstance(second, Finished)
    assert runtime.cache.history[: len(prompt)] == prompt
    assert second.stats.n_prompt_tokens > len(prompt) - len(runtime.render(messages)) - 2


def test_the_pinned_task_moves_with_a_changed_earlier_message(runtime: Runtime) -> None:
    """The pins' renderings are reused between steps, never once a message before them changed."""
    runtime.reset()
    messages = [
        Message(role="system", content="You are a careful assistant."),
        Message(role="user", content="An earlier question."),
        Message(role="assistant", content="An earlier answer."),
        Message(role="user", content="Count the words in the file."),
        Message(role="user", content="file contents"),
    ]
    runtime.pin_messages(1, 3)
    try:
        for earlier in ("An earlier answer.", "A much longer earlier answer, " * 6):
            changed = [*messages[:2], Message(role="assistant", content=earlier), *messages[3:]]
            list(runtime.stream_chat(changed, max_tokens=1))
            prefix, span = runtime.cache.pinned
            assert span is not None
            history = runtime.cache.history
            assert history[span[0] : span[1]] == runtime.render(changed[:4])[span[0] : span[1]]
            task = runtime.llama.detokenize(history[span[0] : span[1]]).decode()
            assert "Count the words in the file." in task
            assert "earlier" not in task
    finally:
        runtime.pin_messages(0)


def test_greedy_grammar_decoding_checks_the_greedy_token_first_with_the_same_tokens(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    import models.runtime as module

    call = {
        "type": "object",
        "properties": {
            "tool": {"enum": ["list_dir", "read_file"]},
            "arguments": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
        "required": ["tool", "arguments"],
    }
    answer = {"type": "object", "properties": {"final": {"type": "string"}}, "required": ["final"]}
    schema = {"anyOf": [call, answer]}
    messages = [Message(role="user", content="List the workspace. Answer with a tool call.")]
    checked: list[str] = []
    fast = module._GreedyTokenFirst.sample

    def counting(self: object, ctx: object, idx: int) -> int:
        checked.append("first")
        return fast(self, ctx, idx)  # type: ignore[arg-type]

    monkeypatch.setattr(module._GreedyTokenFirst, "sample", counting)
    runtime.reset()
    quick = list(runtime.stream_chat(messages, max_tokens=60, json_schema=schema))[-1]

    def whole_chain(self: object, ctx: object, idx: int) -> int:
        return int(self._chain.sample(ctx, idx))  # type: ignore[attr-defined]

    monkeypatch.setattr(module._GreedyTokenFirst, "sample", whole_chain)
    runtime.reset()
    slow = list(runtime.stream_chat(messages, max_tokens=60, json_schema=schema))[-1]
    assert isinstance(quick, Finished) and isinstance(slow, Finished)
    assert checked and quick.text == slow.text


def test_a_side_prompt_leaves_the_conversation_in_the_cache(runtime: Runtime) -> None:
    convo = [
        Message(role="system", content="You are terse. " * 20),
        Message(role="user", content="Name a colour."),
    ]
    runtime.reset()
    list(runtime.stream_chat(convo, max_tokens=4))
    before = (list(runtime.cache.history), runtime.cache.n_cached)
    with runtime.aside():
        side = [Message(role="user", content="Count to three.")]
        list(runtime.stream_chat(side, max_tokens=4))
        assert list(runtime.cache.history) != before[0]
    assert (list(runtime.cache.history), runtime.cache.n_cached) == before
    # The conversation goes on from the cache: only the new turn is evaluated.
    more = [*convo, Message(role="user", content="Another.")]
    finished = list(runtime.stream_chat(more, max_tokens=2))[-1]
    assert isinstance(finished, Finished)
    assert finished.stats.n_prompt_tokens < len(runtime.render(more)) // 3


def test_sampling_the_same_prompt_again_at_temperature_gives_another_reply(
    runtime: Runtime,
) -> None:
    # The executor resamples an unsure tool call this way: each sampled
    # generation draws from its own seed (one seed for all gave the same reply).
    schema = {
        "type": "object",
        "properties": {"tool": {"type": "string"}, "path": {"type": "string"}},
        "required": ["tool", "path"],
    }
    replies = []
    for _ in range(3):
        runtime.reset()
        stream = runtime.stream_chat(HELLO, max_tokens=24, json_schema=schema, temperature=0.9)
        final = list(stream)[-1]
        assert isinstance(final, Finished)
        replies.append(final.text)
    assert len(set(replies)) > 1, replies
