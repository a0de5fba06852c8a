"""The llama.cpp runtime: a GGUF model behind the :class:`ChatModel` interface.

:class:`Runtime` loads a model with ``llama_cpp.Llama`` (GPU offload chosen
automatically, ``n_ctx``, threads, f16 KV cache, RoPE scaling) and drives the
decode loop itself rather than through ``create_chat_completion``: prompts
are rendered with the model's own chat template, fed through a
:class:`~models.sinkcache.SinkCache` (so a conversation, and a single
generation, continue past ``n_ctx``), and sampled one token at a time with a
sampler chain that lives for the whole generation (greedy or temperature,
optionally a JSON-schema grammar). A :class:`CancelToken` is checked before
every token.

A runtime serves one generation at a time; a second concurrent call raises
:class:`~models.errors.GenerationError`.
"""

from __future__ import annotations

import codecs
import ctypes
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from models import kvstate
from models.catalog import GGUFHeader, read_header
from models.confidence import lowest_group_confidence, token_confidence_from_logits
from models.errors import GenerationError, ModelError, ModelLoadError
from models.eviction import EvictionMode, EvictionPolicy
from models.interface import (
    CancelToken,
    ContextState,
    Finished,
    GenerationStats,
    Message,
    ModelInfo,
    StopReason,
    StreamEvent,
    Token,
)
from models.kvstate import Binding, ModelHashes
from models.sinkcache import SinkCache

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_MODEL_HASHES = ModelHashes()


@dataclass(frozen=True)
class SavedInfo:
    """A KV state saved or restored.

    Attributes:
        path: The state file.
        size: Its size in bytes.
        n_tokens: The conversation tokens it covers (evicted ones included).
        meta: The caller's data saved with it.
    """

    path: Path
    size: int
    n_tokens: int
    meta: dict[str, Any]

# GGML tensor types for the KV cache (ggml.h: GGML_TYPE_F32 = 0, GGML_TYPE_F16 = 1).
_GGML_TYPE_F32 = 0
_GGML_TYPE_F16 = 1

# ChatML, the template of the embedded default, for GGUF files that carry none.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class RopeScaling(BaseModel):
    """How positions are stretched beyond the trained context.

    ``none`` keeps the model's own RoPE settings; ``linear`` is Positional
    Interpolation (positions divided by ``factor``: ``rope_freq_scale =
    1/factor``); ``yarn`` is YaRN with the trained context as its original
    context.
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["none", "linear", "yarn"] = "none"
    factor: float = Field(default=1.0, ge=1.0, le=64.0)


class RuntimeConfig(BaseModel):
    """How to load a model."""

    model_config = ConfigDict(frozen=True)

    model_path: Path
    n_ctx: int = Field(default=4096, ge=1)
    n_threads: int | None = Field(default=None, ge=1)
    n_gpu_layers: int | None = Field(
        default=None, description="None: all layers when the build can offload, else 0."
    )
    n_sink: int = Field(default=4, ge=0)
    evict_chunk: int | None = Field(default=None, ge=1)
    eviction: EvictionMode = Field(
        default="sinks",
        description="sinks: StreamingLLM. h2o, sinks+h2o: heavy hitters (experimental, slower).",
    )
    h2o_layers: tuple[int, ...] | None = Field(
        default=None, description="Layers whose attention H2O reads (None: all)."
    )
    h2o_score: Literal["sum", "mean"] = Field(
        default="sum", description="H2O's score: accumulated (the paper) or mean attention."
    )
    rope_scaling: RopeScaling = RopeScaling()
    kv_f16: bool = True
    seed: int = 0
    n_batch: int = Field(default=512, ge=1)
    name: str | None = None


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build has a GPU backend."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def llama_kwargs(config: RuntimeConfig, header: GGUFHeader) -> dict[str, Any]:
    """Translate a config into ``llama_cpp.Llama`` keyword arguments.

    Raises:
        ModelLoadError: RoPE scaling needs a trained context the file lacks.
    """
    import llama_cpp

    n_gpu_layers = config.n_gpu_layers
    if n_gpu_layers is None:
        n_gpu_layers = auto_gpu_layers(config, header) if gpu_offload_supported() else 0
    kv_type = _GGML_TYPE_F16 if config.kv_f16 else _GGML_TYPE_F32
    kwargs: dict[str, Any] = {
        "model_path": str(config.model_path),
        "n_ctx": config.n_ctx,
        "n_batch": min(config.n_batch, config.n_ctx),
        "n_ubatch": min(config.n_batch, config.n_ctx),
        "n_threads": config.n_threads or _default_threads(),
        "n_threads_batch": config.n_threads or _default_threads(),
        "n_gpu_layers": n_gpu_layers,
        "type_k": kv_type,
        "type_v": kv_type,
        "seed": config.seed,
        "verbose": False,
    }
    rope = config.rope_scaling
    if rope.kind == "linear":
        kwargs["rope_scaling_type"] = llama_cpp.LLAMA_ROPE_SCALING_TYPE_LINEAR
        kwargs["rope_freq_scale"] = 1.0 / rope.factor
    elif rope.kind == "yarn":
        if header.n_ctx_train is None:
            raise ModelLoadError(
                f"YaRN needs the trained context length; {config.model_path} does not declare one"
            )
        kwargs["rope_scaling_type"] = llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN
        kwargs["rope_freq_scale"] = 1.0 / rope.factor
        kwargs["yarn_orig_ctx"] = header.n_ctx_train
        kwargs["yarn_ext_factor"] = 1.0
        kwargs["yarn_attn_factor"] = 1.0
        kwargs["yarn_beta_fast"] = 32.0
        kwargs["yarn_beta_slow"] = 1.0
    return kwargs


def auto_gpu_layers(config: RuntimeConfig, header: GGUFHeader) -> int:
    """Choose how many layers to offload for the free VRAM (see :mod:`models.fit`).

    Returns -1 (every layer; the load fallback catches a failure) when the
    free VRAM or the model's shape cannot be read.
    """
    from models import devices, fit

    try:
        found, _ = devices.gpus()
        shape = fit.shape_from_header(header)
    except (OSError, AttributeError, fit.FitError):
        return -1
    free = max((g.free for g in found if not g.integrated), default=None)
    if free is None:
        return -1
    plan = fit.plan_offload(
        shape, n_ctx=config.n_ctx, vram_free=free, kv_bytes=2 if config.kv_f16 else 4,
        n_ubatch=min(config.n_batch, config.n_ctx),
    )
    return plan.n_gpu_layers


def load_with_fallback(
    load: Callable[[int], _T], n_gpu_layers: int, n_layer: int
) -> tuple[_T, int]:
    """Load with ``n_gpu_layers``, retrying with fewer layers, then the CPU, on failure.

    llama-cpp-python reports an out-of-memory load as the same ``ValueError``
    as any other failed load, so every failure with layers on the GPU is
    retried with fewer (:func:`models.fit.fallback_layers`); a failure on the
    CPU alone is final.

    Args:
        load: Loads with the given layer count; raises :class:`ModelLoadError`.
        n_gpu_layers: The planned count; -1 means every layer.
        n_layer: The model's layer count (to resolve -1).

    Returns:
        The loaded object and the layer count that worked.

    Raises:
        ModelLoadError: Even the CPU could not load it; names every try.
    """
    from models.fit import fallback_layers

    start = n_layer + 1 if n_gpu_layers < 0 else n_gpu_layers
    tried: list[str] = []
    last: ModelLoadError | None = None
    for n in fallback_layers(start):
        try:
            return load(n), n
        except ModelLoadError as e:
            tried.append(f"{n} GPU layers: {e}")
            last = e
            if n > 0:
                _log.warning("loading with %d GPU layers failed (%s); trying fewer", n, e)
    raise ModelLoadError("; ".join(tried)) from (last.__cause__ if last else None)


def _default_threads() -> int:
    # Physical cores are what decode scales with; count the ones we may use.
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, n)


class Runtime:
    """A GGUF model loaded with llama.cpp, satisfying :class:`ChatModel`.

    Args:
        config: What to load and how.
        can_shift: Override the KV shift probe (tests force the fallback).

    Raises:
        ModelFileError: The file is missing, not GGUF or truncated.
        ContextTooSmallError: ``n_ctx`` cannot hold the sinks and a window.
        ModelLoadError: llama.cpp refused the file or the settings.
    """

    def __init__(self, config: RuntimeConfig, *, can_shift: bool | None = None) -> None:
        self.config = config
        self.header = read_header(config.model_path)
        kwargs = llama_kwargs(config, self.header)
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from models.loadlog import llama_loader

        n_layer = self.header.hparams.get("block_count", 0)
        load = llama_loader(llama_cpp.Llama, kwargs, str(config.model_path))
        (llm, load_log), kwargs["n_gpu_layers"] = load_with_fallback(
            load, kwargs["n_gpu_layers"], n_layer
        )
        # What llama.cpp did, not what was asked: a CPU-only build offloads nothing.
        offloaded = load_log.offloaded()
        if offloaded is None:
            asked = int(kwargs["n_gpu_layers"])
            total = n_layer + 1
            on_gpu = min(total if asked < 0 else asked, total) if gpu_offload_supported() else 0
            offloaded = (on_gpu, total)
        self._llm: Any = llm
        self._closed = False
        self._lock = threading.Lock()
        try:
            n_sink = config.n_sink
            policy: EvictionPolicy | None = None
            if config.eviction != "sinks":
                from models.h2o import HeavyHitters

                # "h2o" alone keeps no sinks: whatever attention favours stays.
                n_sink = config.n_sink if config.eviction == "sinks+h2o" else 0
                policy = HeavyHitters(
                    llm, recent=None, layers=config.h2o_layers, score=config.h2o_score
                )
            self._cache = SinkCache(
                llm,
                n_sink=n_sink,
                evict_chunk=config.evict_chunk,
                can_shift=can_shift,
                policy=policy,
            )
            template = self.header.chat_template or llm.metadata.get("tokenizer.chat_template")
            eos_id = llm.token_eos()
            bos_id = llm.token_bos()
            self._formatter = Jinja2ChatFormatter(
                template=template or CHATML_TEMPLATE,
                eos_token=llm._model.token_get_text(eos_id) if eos_id != -1 else "",
                bos_token=llm._model.token_get_text(bos_id) if bos_id != -1 else "",
                stop_token_ids=[eos_id],
            )
        except BaseException:
            llm.close()
            raise
        self._vocab = llm._model.vocab
        self._pin_messages: tuple[int, int | None] | None = None
        self._pin_renders: dict[int, tuple[list[Message], list[int]]] = {}
        # Replies as sampled, to splice back over their re-tokenized text.
        self._replies: list[_Reply] = []
        self._eog_ids: list[int] | None = None
        # Sampled generations so far: each draws from its own seed (see _make_sampler).
        self._draws = 0
        self._pieces: dict[int, bytes] = {}
        self._info = ModelInfo(
            name=config.name or self.header.name or config.model_path.stem,
            backend="llama.cpp",
            path=str(config.model_path),
            n_ctx=self._cache.n_ctx,
            n_ctx_train=self.header.n_ctx_train,
            gpu_offload_supported=gpu_offload_supported(),
            n_gpu_layers=int(kwargs["n_gpu_layers"]),
            n_layers_offloaded=offloaded[0],
            n_layers=offloaded[1],
            rope_scaling=(
                "none"
                if config.rope_scaling.kind == "none"
                else f"{config.rope_scaling.kind} x{config.rope_scaling.factor:g}"
            ),
        )

    # -- ChatModel -------------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        """Describe the loaded model."""
        return self._info

    @property
    def cache(self) -> SinkCache:
        """The sink cache (benchmarks and tests inspect it)."""
        self._require_open()
        return self._cache

    @property
    def llama(self) -> Any:
        """The underlying ``llama_cpp.Llama`` (benchmarks compare against it)."""
        self._require_open()
        return self._llm

    def render(self, messages: Sequence[Message]) -> list[int]:
        """Render messages with the chat template and tokenize the prompt.

        Raises:
            GenerationError: The template rejected the messages.
        """
        llm = self._require_open()
        try:
            chat: list[Any] = [{"role": m.role, "content": m.content} for m in messages]
            result = self._formatter(messages=chat)
        except Exception as e:  # noqa: BLE001 - Jinja raises anything; reported below
            raise GenerationError(f"the model's chat template failed: {e}") from e
        tokens: list[int] = llm.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        return tokens

    def pin_messages(self, prefix: int, task: int | None = None) -> None:
        """Pin the first ``prefix`` messages and message ``task`` of later prompts.

        Their tokens are never evicted from the KV cache (see
        :meth:`models.sinkcache.SinkCache.pin`); it applies to every later
        :meth:`stream_chat` until called again (``prefix=0``: only the sinks).
        """
        self._pin_messages = (prefix, task) if prefix > 0 else None

    def _pins(
        self, messages: Sequence[Message], prompt: Sequence[int]
    ) -> tuple[int, tuple[int, int] | None] | None:
        """Token indices of the pinned messages in ``prompt`` (see :meth:`pin_messages`)."""
        if self._pin_messages is None:
            return None
        prefix, task = self._pin_messages

        used: dict[int, tuple[list[Message], list[int]]] = {}

        def end_of(n: int) -> int:
            # Where the first n messages end: the common prefix of their
            # rendering (which ends with a generation prompt) and the whole one.
            # The renderings are kept while those messages stay the same (every
            # step of an errand): rendering a long conversation is not free.
            if n >= len(messages):
                return len(prompt)
            head = list(messages[:n])
            cached = self._pin_renders.get(n)
            part = cached[1] if cached is not None and cached[0] == head else self.render(head)
            used[n] = (head, part)
            return _common_prefix(part, prompt)

        span = None
        if task is not None and prefix <= task < len(messages):
            span = (end_of(task), end_of(task + 1))
        pins = end_of(min(prefix, len(messages))), span
        self._pin_renders = used
        return pins

    def stream_chat(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        json_schema: Mapping[str, Any] | None = None,
        temperature: float = 0.0,
        ignore_eos: bool = False,
        cancel: CancelToken | None = None,
    ) -> Iterator[StreamEvent]:
        """Generate the assistant's next message (see :class:`ChatModel`)."""
        if not messages:
            raise GenerationError("cannot generate from an empty conversation")
        prompt = self.render(messages)
        pins = self._pins(messages, prompt)
        prompt, where = self._as_sampled(prompt)
        if pins is not None:
            span = None if pins[1] is None else (where(pins[1][0]), where(pins[1][1]))
            pins = (where(pins[0]), span)
        if max_tokens < 0:
            raise GenerationError(f"max_tokens must be >= 0, got {max_tokens}")
        sampler = self._make_sampler(json_schema, temperature, ignore_eos and json_schema is None)
        return self._generate(prompt, max_tokens, sampler, cancel, pins, keep_reply=True)

    def _as_sampled(self, prompt: list[int]) -> tuple[list[int], Callable[[int], int]]:
        """Put earlier replies' sampled tokens back over their re-tokenized text.

        Sampling (a grammar above all) often picks other tokens than
        tokenizing the same text does (``"t","ool"`` for ``"tool"``), so a
        rendered conversation would part from the KV cache at the first
        earlier reply and evaluate everything after it again. The text is the
        same, so the sampled tokens stand in for it wherever the rendered
        prompt holds exactly the re-tokenized reply at the place it was
        generated. Replies that no longer line up are forgotten.

        Returns:
            The prompt, and a map from indices of the rendered prompt to
            indices of the returned one (for the pins).
        """
        out: list[int] = []
        src = 0
        moves: list[tuple[int, int, int]] = []  # (rendered start, rendered end, new end)
        kept: list[_Reply] = []
        for reply in self._replies:
            gap = reply.start - len(out)
            end = src + gap + len(reply.retokenized)
            if gap < 0 or prompt[src + gap : end] != reply.retokenized:
                break
            out += prompt[src : src + gap]
            out += reply.sampled
            moves.append((src + gap, end, len(out)))
            src = end
            kept.append(reply)
        self._replies = kept
        if not moves:
            return prompt, lambda i: i
        out += prompt[src:]

        def where(i: int) -> int:
            shift = 0
            for start, end, new_end in moves:
                if i <= start:
                    break
                if i < end:
                    return new_end
                shift = new_end - end
            return i + shift

        return out, where

    def stream_tokens(
        self,
        prompt: Sequence[int],
        *,
        max_tokens: int,
        json_schema: Mapping[str, Any] | None = None,
        temperature: float = 0.0,
        ignore_eos: bool = False,
        cancel: CancelToken | None = None,
    ) -> Iterator[StreamEvent]:
        """Continue the cached conversation with ``prompt`` tokens and generate.

        Like :meth:`stream_chat` but with an already tokenized prompt.
        """
        if max_tokens < 0:
            raise GenerationError(f"max_tokens must be >= 0, got {max_tokens}")
        if not prompt:
            raise GenerationError("cannot generate from an empty prompt")
        sampler = self._make_sampler(json_schema, temperature, ignore_eos and json_schema is None)
        return self._generate(list(prompt), max_tokens, sampler, cancel)

    def count_tokens(self, text: str) -> int:
        """Return how many tokens ``text`` takes (no BOS, specials as text)."""
        llm = self._require_open()
        return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def context_state(self) -> ContextState:
        """Return what the KV cache holds now."""
        self._require_open()
        return self._cache.state()

    def reset(self) -> None:
        """Forget the conversation (clear the KV cache)."""
        self._require_open()
        with self._busy():
            self._cache.clear()
            self._replies = []

    def settle(self, messages: Sequence[Message]) -> int:
        """Evaluate whatever of ``messages`` the KV cache does not hold yet.

        A conversation often ends with turns nothing generated from (an
        errand stopped at its step limit after a tool call: that result and
        the closing turn were appended, never evaluated). The next task would
        evaluate them first; settling does it now, while nobody waits (before
        the cache is saved, when a session is left). Only the messages'
        tokens are fed, not a generation prompt: the next turn's prompt
        renders the same messages, then its own. Nothing is settled when
        the cache has evicted or would have to: which tokens to evict
        depends on the next task, which is pinned.

        Returns:
            How many tokens were evaluated.

        Raises:
            GenerationError: The template rejected the messages, or llama.cpp failed.
        """
        if not messages or self._cache.n_evicted:
            return 0  # (evicted: see below, checked before rendering anything)
        rendered = self.render(messages)
        # Where the messages end: their rendering ends with a generation
        # prompt, a rendering with one more turn with that turn's header.
        probe = self.render([*messages, Message(role="user", content=".")])
        end = _common_prefix(rendered, probe)
        pins = self._pins(messages, rendered[:end])
        prompt, where = self._as_sampled(rendered[:end])
        with self._busy():
            cache = self._cache
            if cache.history[: len(prompt)] == prompt:
                return 0  # all in place (reuse_prefix would evaluate the last token again)
            if cache.n_evicted or len(prompt) + SETTLE_HEADROOM > cache.n_ctx:
                # What to evict depends on the next task (it is pinned): leave
                # the tail to that errand rather than evict without it.
                return 0
            if pins is not None:
                cache.pin(where(pins[0]))
            before = cache.n_evaluated
            reused = cache.reuse_prefix(prompt)
            cache.feed(prompt[reused:])
            return cache.n_evaluated - before

    # -- saved state -----------------------------------------------------------------

    def state_binding(self, *, history: str = "", model_sha256: str | None = None) -> Binding:
        """What a state saved now would be bound to (the tokens' digest left empty).

        Args:
            history: The caller's digest of the conversation.
            model_sha256: The model file's sha256 when the caller knows it
                (else hashed once per process).
        """
        settings = json.dumps(
            {
                "rope": [self.config.rope_scaling.kind, self.config.rope_scaling.factor],
                "kv_f16": self.config.kv_f16,
                "n_sink": self._cache.n_sink,
                "evict_chunk": self._cache.evict_chunk,
                "eviction": self.config.eviction,
                "shift": self._cache.shift_supported,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        digest = model_sha256 or _MODEL_HASHES.sha256(self.config.model_path)
        return Binding(digest, self._cache.n_ctx, settings, "", history)

    @contextmanager
    def aside(self) -> Iterator[None]:
        """Generate from a prompt of its own, then put the conversation's cache back.

        The cache (llama.cpp's sequence state and the sink cache's
        bookkeeping) is copied in memory before the block and loaded again
        after it, so a side prompt (a plain-text answer from a short context)
        costs the conversation nothing. A cache that cannot be copied (an
        eviction policy with state of its own) is left to the side prompt; the
        next turn then re-evaluates the conversation.
        """
        self._require_open()
        with self._busy():
            try:
                snapshot, payload = self._cache.snapshot(), self._cache.seq_state()
            except GenerationError as e:
                _log.info("the cache cannot be set aside: %s", e)
                snapshot = None
            replies, pins = list(self._replies), self._pin_messages
        try:
            yield
        finally:
            if snapshot is not None and not self._closed:
                with self._busy():
                    self._cache.restore(snapshot, payload)
                    self._replies = replies
            self._pin_messages = pins

    def save_state(
        self,
        path: Path,
        *,
        history: str = "",
        meta: Mapping[str, Any] | None = None,
        model_sha256: str | None = None,
    ) -> SavedInfo:
        """Save the KV cache (sequence state and bookkeeping) to ``path``.

        Args:
            path: The state file (replaced atomically).
            history: The caller's digest of the conversation, checked on restore.
            meta: JSON-able data of the caller's, returned by :meth:`restore_state`.
            model_sha256: The model file's sha256, when the caller knows it.

        Raises:
            KVStateError: The file cannot be written.
            GenerationError: The cache cannot be saved (a generation runs, H2O).
        """
        self._require_open()
        with self._busy():
            snapshot = self._cache.snapshot()
            payload = self._cache.seq_state()
        binding = self.state_binding(history=history, model_sha256=model_sha256)
        binding = replace(binding, tokens_sha256=kvstate.tokens_digest(snapshot["history"]))
        data = {
            "tokens": snapshot.pop("history"),
            "cache": snapshot,
            "replies": [[r.start, r.sampled, r.retokenized] for r in self._replies],
            "extra": dict(meta or {}),
        }
        size = kvstate.write(path, binding, data, payload)
        return SavedInfo(path=path, size=size, n_tokens=len(data["tokens"]), meta=data["extra"])

    def restore_state(
        self, path: Path, *, history: str = "", model_sha256: str | None = None
    ) -> SavedInfo:
        """Replace the KV cache with the state saved at ``path``.

        The whole file is checked (:func:`models.kvstate.read`) before the
        cache is touched; a refused file leaves the cache as it was.

        Returns:
            What was restored, with the caller's ``meta``.

        Raises:
            KVStateError: Missing, corrupt, truncated or stale (the message says which).
            GenerationError: llama.cpp refused the state (the cache is then empty).
        """
        self._require_open()
        expected = self.state_binding(history=history, model_sha256=model_sha256)
        saved = kvstate.read(path, expected)
        with self._busy():
            snapshot = dict(saved.meta.get("cache") or {})
            snapshot["history"] = saved.meta["tokens"]
            self._replies = []
            self._cache.restore(snapshot, saved.payload)
            self._replies = _replies_from(saved.meta.get("replies"))
        extra = saved.meta.get("extra")
        return SavedInfo(
            path=path,
            size=path.stat().st_size,
            n_tokens=len(saved.meta["tokens"]),
            meta=extra if isinstance(extra, dict) else {},
        )

    def close(self) -> None:
        """Free the model and its context. Safe to call twice.

        During a generation (another thread, or a stream not yet exhausted)
        the generation stops before its next token and frees the model then.
        """
        if self._closed:
            return
        self._closed = True
        if self._lock.acquire(blocking=False):
            try:
                self._free()
            finally:
                self._lock.release()

    def _free(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------

    def _require_open(self) -> Any:
        if self._closed or self._llm is None:
            raise ModelError("the model was closed")
        return self._llm

    def _busy(self) -> _Busy:
        return _Busy(self._lock)

    def _make_sampler(
        self, json_schema: Mapping[str, Any] | None, temperature: float, ban_eog: bool
    ) -> Any:
        import llama_cpp
        import llama_cpp._internals

        # The wrapper is untyped; Any keeps mypy --strict quiet about it.
        internals: Any = llama_cpp._internals
        llm = self._require_open()
        sampler = internals.LlamaSampler()
        if ban_eog:
            sampler.add_logit_bias(llm.n_vocab(), dict.fromkeys(self._eog(), float("-inf")))
        if json_schema is not None:
            sampler_add = self._grammar_sampler(json_schema)
            llama_cpp.llama_sampler_chain_add(sampler.sampler, sampler_add)
        if temperature <= 0.0:
            sampler.add_greedy()
            if json_schema is not None and not ban_eog:
                return _GreedyTokenFirst(sampler, sampler_add, llm.n_vocab())
        else:
            sampler.add_top_k(40)
            sampler.add_top_p(0.95, 1)
            sampler.add_min_p(0.05, 1)
            sampler.add_temp(temperature)
            # config.seed + the sampled generations before this one: a run of
            # calls is reproducible, and the same prompt sampled again (an
            # unsure tool call resampled) gets another reply, not the same one.
            # 0xFFFFFFFF is llama.cpp's "random seed", so it is skipped.
            sampler.add_dist((self.config.seed + self._draws) % 0xFFFFFFFF)
            self._draws += 1
        return sampler

    def _grammar_sampler(self, json_schema: Mapping[str, Any]) -> Any:
        """Build a llama.cpp grammar sampler that only accepts JSON matching the schema."""
        import jsonschema
        import llama_cpp
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        try:
            jsonschema.validators.validator_for(dict(json_schema)).check_schema(dict(json_schema))
        except jsonschema.exceptions.SchemaError as e:
            raise GenerationError(f"invalid JSON schema: {e.message}") from e
        try:
            gbnf = json_schema_to_gbnf(json.dumps(json_schema))
        except (AssertionError, ValueError, TypeError, KeyError, RecursionError) as e:
            # The converter reports unsupported schemas with assert.
            raise GenerationError(f"cannot build a grammar from the JSON schema: {e}") from e
        grammar = llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf.encode(), b"root")
        if not grammar:
            raise GenerationError("llama.cpp rejected the grammar built from the JSON schema")
        return grammar

    def _piece(self, token: int) -> bytes:
        """The bytes of one token (control tokens render as nothing), memoised."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._render_piece(token)
        return piece

    def _render_piece(self, token: int) -> bytes:
        import llama_cpp

        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[: max(n, 0)]

    def _eog(self) -> list[int]:
        if self._eog_ids is None:
            import llama_cpp

            n = self._require_open().n_vocab()
            self._eog_ids = [t for t in range(n) if llama_cpp.llama_vocab_is_eog(self._vocab, t)]
        return self._eog_ids

    def _keep_reply(self, start: int, sampled: list[int]) -> None:
        """Remember a reply's sampled tokens (see :meth:`_as_sampled`).

        Trailing whitespace is left out: a caller that strips the reply
        renders it without. A reply the tokenizer already renders the same
        way, or one starting with whitespace, needs nothing.
        """
        while sampled and not self._piece(sampled[-1]).strip():
            sampled = sampled[:-1]
        if not sampled or not self._piece(sampled[0]).strip():
            return
        text = b"".join(self._piece(t) for t in sampled)
        retokenized = self.llama.tokenize(text, add_bos=False, special=False)
        if retokenized != sampled:
            self._replies.append(_Reply(start, sampled, retokenized))

    def _token_confidence(self, llm: Any) -> float:
        """The token confidence of the position just sampled, from its raw logits."""
        import llama_cpp
        import numpy as np

        logits = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return token_confidence_from_logits(np.ctypeslib.as_array(logits, shape=(llm.n_vocab(),)))

    def _generate(
        self,
        prompt: list[int],
        max_tokens: int,
        sampler: Any,
        cancel: CancelToken | None,
        pins: tuple[int, tuple[int, int] | None] | None = None,
        *,
        keep_reply: bool = False,
    ) -> Iterator[StreamEvent]:
        import llama_cpp

        t0 = time.perf_counter()
        with self._busy():
            try:
                llm = self._require_open()
                cache = self._cache
                run = _RunStats(t0, cache.n_evaluated, cache.total_evicted, cache.total_shifts)

                def cancelled() -> bool:
                    return self._closed or (cancel is not None and cancel.cancelled)

                if pins is not None:
                    cache.pin(*pins)
                elif cache.pinned != (cache.n_sink, None):
                    cache.pin(cache.n_sink)
                reused = cache.reuse_prefix(prompt)
                fed = cache.feed(prompt[reused:], should_stop=cancelled)
                run.n_prompt = cache.n_evaluated - run.evaluated0
                run.t_prefill = time.perf_counter()
                decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                pieces: list[str] = []
                sampled: list[int] = []
                stop: StopReason = "max_tokens" if fed else "cancelled"
                while fed and run.n_gen < max_tokens:
                    if cancelled():
                        stop = "cancelled"
                        break
                    token = int(sampler.sample(llm._ctx, -1))
                    if run.t_first is None:
                        run.t_first = time.perf_counter()
                    if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                        stop = "eos"
                        break
                    run.n_gen += 1
                    sampled.append(token)
                    run.confidences.append(self._token_confidence(llm))
                    text = decoder.decode(self._piece(token))
                    if text:
                        pieces.append(text)
                        yield Token(text=text)
                    if run.n_gen < max_tokens:
                        # The last token is not evaluated: nothing samples after it, and
                        # the next turn's prompt brings it back through prefix reuse.
                        cache.feed([token])
                tail = decoder.decode(b"", final=True)
                if tail:
                    pieces.append(tail)
                    yield Token(text=tail)
                if keep_reply and stop != "cancelled":
                    self._keep_reply(len(prompt), sampled)
                yield Finished(text="".join(pieces), stats=run.stats(cache, stop))
            finally:
                sampler.close()
                if self._closed:
                    self._free()


SETTLE_HEADROOM = 64
"""Tokens :meth:`Runtime.settle` leaves free for the next task (it never makes the cache evict)."""


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two token lists (compared in slices, not one by one)."""
    n = min(len(a), len(b))
    lo, hi = 0, n  # the answer lies in [lo, hi]
    if a[:n] == b[:n]:
        return n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass(frozen=True)
class _Reply:
    """A reply as sampled: where its tokens start in the history, and its text re-tokenized."""

    start: int
    sampled: list[int]
    retokenized: list[int]


def _replies_from(data: Any) -> list[_Reply]:
    """The replies :meth:`Runtime.save_state` saved.

    Unreadable ones are dropped: they only spare re-evaluating a reply.
    """
    replies: list[_Reply] = []
    for item in data if isinstance(data, list) else []:
        try:
            start, sampled, retokenized = item
            replies.append(
                _Reply(int(start), [int(t) for t in sampled], [int(t) for t in retokenized])
            )
        except (TypeError, ValueError):
            return replies
    return replies


class _GreedyTokenFirst:
    """Greedy decoding under a grammar that tests the greedy token first.

    llama.cpp's grammar sampler checks every vocabulary entry against the
    grammar at every step, which costs far more than the 135M model's forward
    pass; the greedy token usually fits the grammar, so it is checked alone,
    and only when the grammar rejects it is the whole chain (grammar, then
    greedy) applied. The tokens chosen are the same (llama.cpp's own
    ``common_sampler`` does the same).
    """

    def __init__(self, chain: Any, grammar: Any, n_vocab: int) -> None:
        self._chain = chain
        self._grammar = grammar
        self._n_vocab = n_vocab

    def sample(self, ctx: Any, idx: int) -> int:
        import llama_cpp
        import numpy as np

        row = llama_cpp.llama_get_logits_ith(ctx.ctx, idx)
        logits = np.ctypeslib.as_array(row, shape=(self._n_vocab,))
        token = int(logits.argmax())
        candidate = llama_cpp.llama_token_data(token, float(logits[token]), 0.0)
        single = llama_cpp.llama_token_data_array(ctypes.pointer(candidate), 1, -1, False)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(single))
        if math.isfinite(single.data[0].logit):
            llama_cpp.llama_sampler_accept(self._chain.sampler, token)
            return token
        return int(self._chain.sample(ctx, idx))

    def close(self) -> None:
        self._chain.close()


class _RunStats:
    """Counters of one generation."""

    def __init__(self, t0: float, evaluated0: int, evicted0: int, shifts0: int) -> None:
        self.t0 = t0
        self.t_prefill = t0
        self.t_first: float | None = None
        self.evaluated0 = evaluated0
        self.evicted0 = evicted0
        self.shifts0 = shifts0
        self.n_prompt = 0
        self.n_gen = 0
        self.confidences: list[float] = []

    def stats(self, cache: SinkCache, stop: StopReason) -> GenerationStats:
        decode_s = time.perf_counter() - self.t_prefill
        return GenerationStats(
            n_prompt_tokens=self.n_prompt,
            n_generated=self.n_gen,
            time_to_first_token_s=(
                self.t_first - self.t0 if self.t_first is not None and self.n_gen else None
            ),
            tokens_per_second=self.n_gen / decode_s if self.n_gen and decode_s > 0 else 0.0,
            n_evicted=cache.total_evicted - self.evicted0,
            n_shifts=cache.total_shifts - self.shifts0,
            confidence=lowest_group_confidence(self.confidences),
            stop_reason=stop,
        )


class _Busy:
    """Hold a runtime's lock for one generation; refuse a concurrent one."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            raise GenerationError("the model is already generating; one generation at a time")

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
