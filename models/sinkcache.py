"""The sink-style rolling KV cache (StreamingLLM on llama.cpp's memory API).

The cache holds sequence 0 of one ``llama_cpp.Llama`` context. It keeps the
first ``n_sink`` tokens of the conversation (the attention sinks) and a
window of the most recent tokens. When the next evaluation would not fit in
``n_ctx``, a chunk of the oldest window tokens (just after the sinks) is
removed with ``llama_memory_seq_rm`` and the rest of the window is moved down
with ``llama_memory_seq_add`` so positions stay contiguous; llama.cpp re-rotates
the shifted keys (RoPE) on the next decode. ``Llama.input_ids`` and
``Llama.n_tokens`` are kept in step, so the high-level object still describes
the cache truthfully.

Where the memory cannot shift positions (``llama_memory_can_shift`` is false:
sliding-window attention without a full cache, recurrent or hybrid models,
M-RoPE) overflow falls back to clearing the cache and re-evaluating the sinks
plus the recent window: slower, but never a crash.

Invariant: :attr:`SinkCache.history` is every token fed since the last reset
(the logical conversation); the cache holds ``history[:n_sink]`` followed by
``history[n_sink + n_evicted:]``.

With an :class:`~models.eviction.EvictionPolicy` (experimental) the policy
picks which positions after the sinks to evict, not necessarily the oldest:
each run of chosen positions is removed with ``seq_rm`` and everything after
it moved down with ``seq_add``, so positions stay contiguous; the cache then
holds ``history[i] for i in kept`` (:attr:`SinkCache.kept`, ascending).

:meth:`SinkCache.pin` protects more than the sinks, like llama.cpp's
``--keep N``: a prefix of the history (the agent's instructions) and one span
after it (the current task) are never evicted; the oldest tokens outside them
go first. The sinks are the first tokens of the pinned prefix. Pinned caches
track positions like a policy does (:attr:`SinkCache.kept`), and a model that
cannot shift re-prefills the pinned tokens plus the window. A prompt longer
than the window costs about what it costs unpinned: only the pinned tokens
and the last window of the rest are evaluated, the others are skipped as
evicted.
"""

from __future__ import annotations

import bisect
import ctypes
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import llama_cpp

from models.errors import ContextTooSmallError, GenerationError
from models.interface import ContextState

if TYPE_CHECKING:
    from models.eviction import EvictionPolicy

#: The smallest rolling window (``n_ctx - n_sink``) the cache accepts.
MIN_WINDOW = 32


class SinkCache:
    """Keep sinks plus a rolling window of one Llama context's sequence 0.

    Args:
        llm: A loaded ``llama_cpp.Llama``; the cache drives its context.
        n_sink: Tokens at the start that are never evicted.
        evict_chunk: Tokens evicted at once when the cache is full; default
            an eighth of the window. Larger chunks mean fewer shifts, smaller
            ones keep more context.
        can_shift: Override the ``llama_memory_can_shift`` probe (tests force
            the fallback path with False).
        policy: Chooses which tokens after the sinks to evict (None: the
            oldest, StreamingLLM).

    Raises:
        ContextTooSmallError: ``n_ctx`` cannot hold the sinks plus a window of
            at least :data:`MIN_WINDOW` tokens, or the chunk does not fit.
    """

    def __init__(
        self,
        llm: Any,
        *,
        n_sink: int = 4,
        evict_chunk: int | None = None,
        can_shift: bool | None = None,
        policy: EvictionPolicy | None = None,
    ) -> None:
        self._llm = llm
        # Llama.input_ids was sized with the n_ctx we asked for; llama.cpp may
        # pad its own n_ctx, so the smaller of the two bounds what fits.
        self.n_ctx = min(int(llm.n_ctx()), len(llm.input_ids))
        if n_sink < 0:
            raise ContextTooSmallError(f"n_sink must be >= 0, got {n_sink}")
        window = self.n_ctx - n_sink
        if window < MIN_WINDOW:
            raise ContextTooSmallError(
                f"n_ctx {self.n_ctx} leaves a window of {window} tokens after {n_sink} sinks; "
                f"at least {MIN_WINDOW} are needed"
            )
        chunk = evict_chunk if evict_chunk is not None else max(1, window // 8)
        if not 1 <= chunk <= window // 2:
            raise ContextTooSmallError(
                f"evict_chunk {chunk} must be between 1 and half the window ({window // 2})"
            )
        self.n_sink = n_sink
        self.evict_chunk = chunk
        self._mem = llm._ctx.memory
        if self._mem is None:
            raise GenerationError("this llama.cpp context has no KV memory to manage")
        probed = bool(llama_cpp.llama_memory_can_shift(self._mem))
        self.shift_supported = probed if can_shift is None else (can_shift and probed)
        self.history: list[int] = []
        self.n_evicted = 0
        self.n_shifts = 0
        self.n_reprefills = 0
        self.n_evaluated = 0
        # Lifetime totals (never reset), for per-generation deltas.
        self.total_evicted = 0
        self.total_shifts = 0
        self.policy = policy
        # With a policy: the history index of each cached position, and the
        # end of the region where tokens were evicted.
        self._kept: list[int] | None = None if policy is None else []
        self._evicted_end = 0
        # History indices never evicted: [0, _pin_prefix) and the span.
        self._pin_prefix = n_sink
        self._pin_span: tuple[int, int] | None = None

    # -- what the cache holds -------------------------------------------------

    @property
    def n_cached(self) -> int:
        """Tokens currently in the KV cache (``Llama.n_tokens``)."""
        return int(self._llm.n_tokens)

    @property
    def room(self) -> int:
        """Tokens that can be evaluated before the next eviction."""
        return self.n_ctx - self.n_cached

    def state(self) -> ContextState:
        """Describe the cache for the context gauge."""
        sinks = min(self.n_sink, self.n_cached)
        return ContextState(
            n_ctx=self.n_ctx,
            n_sink=sinks,
            n_window=self.n_cached - sinks,
            n_evicted=self.n_evicted,
            n_shifts=self.n_shifts,
            shift_supported=self.shift_supported,
            n_pinned=self._n_pinned(),
            n_pinned_cached=self._n_pinned_cached(),
        )

    def _pins_beyond_sinks(self) -> bool:
        return self._pin_prefix > self.n_sink or self._pin_span is not None

    def _n_pinned(self) -> int:
        """Pinned tokens of the history so far (the prefix and the span, as far as fed)."""
        if self._kept is None or not self._pins_beyond_sinks():
            return 0
        prefix, span = self._pin_prefix, self._pin_span
        n = len(self.history)
        pinned = min(prefix, n)
        if span is not None:
            pinned += max(0, min(span[1], n) - span[0])
        return pinned

    def _n_pinned_cached(self) -> int:
        """How many of the pinned tokens the cache holds (from its position bookkeeping)."""
        kept = self._kept
        if kept is None or not self._pins_beyond_sinks():
            return 0
        held = self._protected()
        span = self._pin_span
        if span is not None:
            held += bisect.bisect_left(kept, span[1]) - bisect.bisect_left(kept, span[0])
        return held

    def seq_pos_max(self) -> int:
        """The largest position llama.cpp holds for sequence 0 (-1 when empty)."""
        return int(llama_cpp.llama_memory_seq_pos_max(self._mem, 0))

    def seq_pos_min(self) -> int:
        """The smallest position llama.cpp holds for sequence 0 (-1 when empty)."""
        return int(llama_cpp.llama_memory_seq_pos_min(self._mem, 0))

    # -- saving and restoring ---------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The bookkeeping that, with llama.cpp's sequence state, rebuilds this cache.

        Raises:
            GenerationError: An eviction policy keeps state of its own (H2O's
                scores), which is not saved.
        """
        if self.policy is not None:
            raise GenerationError("a cache with an eviction policy (H2O) cannot be saved")
        return {
            "history": list(self.history),
            "kept": self.kept,
            "tracked": self._kept is not None,
            "n_evicted": self.n_evicted,
            "n_shifts": self.n_shifts,
            "evicted_end": self._evicted_end,
            "pin_prefix": self._pin_prefix,
            "pin_span": list(self._pin_span) if self._pin_span is not None else None,
        }

    def restore(self, snapshot: dict[str, Any], seq_state: bytes | bytearray | memoryview) -> None:
        """Load ``seq_state`` (``llama_state_seq_get_data`` of sequence 0) and ``snapshot``.

        On any failure the cache is left empty (consistent), never half loaded.

        Raises:
            GenerationError: llama.cpp refused the state, or it does not hold
                the positions the snapshot says.
        """
        self.clear()
        try:
            history = [int(t) for t in snapshot["history"]]
            kept = [int(i) for i in snapshot["kept"]]
            span = snapshot["pin_span"]
            pin_span = (int(span[0]), int(span[1])) if span is not None else None
            n_evicted, n_shifts = int(snapshot["n_evicted"]), int(snapshot["n_shifts"])
            evicted_end, pin_prefix = int(snapshot["evicted_end"]), int(snapshot["pin_prefix"])
            tracked = bool(snapshot["tracked"])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise GenerationError(f"the saved cache bookkeeping is unreadable: {e}") from e
        n = len(kept)
        if n > self.n_ctx or any(not 0 <= i < len(history) for i in kept):
            raise GenerationError(f"the saved cache holds {n} positions that do not fit")
        view = memoryview(seq_state)
        if view.readonly:
            buf = (ctypes.c_ubyte * len(view)).from_buffer_copy(view)
        else:  # the buffer the state file was read into: no 44 MB copy
            buf = (ctypes.c_ubyte * len(view)).from_buffer(view)
        read = llama_cpp.llama_state_seq_set_data(self._llm.ctx, buf, len(view), 0)
        if read == 0 or self.seq_pos_max() != n - 1:
            self.clear()
            raise GenerationError(
                f"llama.cpp refused the saved sequence state ({len(view)} bytes, "
                f"{n} positions expected)"
            )
        ids = self._llm.input_ids
        for pos, index in enumerate(kept):
            ids[pos] = history[index]
        self._llm.n_tokens = n
        self.history = history
        self._kept = kept if tracked else None
        self.n_evicted, self.n_shifts = n_evicted, n_shifts
        self._evicted_end = evicted_end
        self._pin_prefix, self._pin_span = pin_prefix, pin_span

    def seq_state(self) -> bytes:
        """llama.cpp's state of sequence 0 (its KV cells), as bytes.

        Raises:
            GenerationError: llama.cpp could not serialise it.
        """
        ctx = self._llm.ctx
        size = int(llama_cpp.llama_state_seq_get_size(ctx, 0))
        buf = (ctypes.c_ubyte * size)()
        written = int(llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0))
        if written == 0 and size:
            raise GenerationError("llama.cpp could not save the sequence state")
        return bytes(buf)[:written]

    # -- resetting and reusing -------------------------------------------------

    def clear(self) -> None:
        """Forget everything: empty the KV cache and the history."""
        llama_cpp.llama_memory_clear(self._mem, True)
        self._llm.n_tokens = 0
        self.history = []
        self.n_evicted = 0
        self.n_shifts = 0
        self.n_reprefills = 0
        self._truncated(0)
        self._evicted_end = 0

    @property
    def kept(self) -> list[int]:
        """History index of each cached token, in position order."""
        if self._kept is not None:
            return list(self._kept)
        n = self.n_cached
        sinks = min(self.n_sink, n)
        start = sinks + self.n_evicted
        return list(range(sinks)) + list(range(start, start + n - sinks))

    @property
    def pinned(self) -> tuple[int, tuple[int, int] | None]:
        """The pinned prefix length and span (history indices), as :meth:`pin` left them."""
        return self._pin_prefix, self._pin_span

    def pin(self, prefix: int, span: tuple[int, int] | None = None) -> int:
        """Never evict ``history[:prefix]`` nor ``history[span[0]:span[1]]``.

        The indices are those of the next prompt (as :meth:`reuse_prefix` and
        :meth:`feed` will lay it out). Pins too large to leave the rolling
        window two eviction chunks are cut: the span goes first, then the
        prefix is shortened, never below the sinks.

        Returns:
            How many tokens are pinned.
        """
        allowed = max(self.n_sink, self.n_ctx - 2 * self.evict_chunk)
        prefix = max(prefix, self.n_sink)
        if span is not None and (span[1] <= span[0] or span[0] < prefix):
            span = None
        if span is not None and prefix + span[1] - span[0] > allowed:
            span = None
        prefix = min(prefix, allowed)
        if self._kept is None and (prefix > self.n_sink or span is not None):
            # Pinned eviction is not one run after the sinks: track positions.
            if self.n_evicted:
                self._evicted_end = max(self._evicted_end, self.n_sink + self.n_evicted)
            self._kept = self.kept
        elif self._kept is not None and self.policy is None and span is None:
            if prefix <= self.n_sink and self._contiguous():
                self._kept = None  # back to the lean StreamingLLM bookkeeping
        self._pin_prefix, self._pin_span = prefix, span
        return prefix + (span[1] - span[0] if span is not None else 0)

    def reuse_prefix(self, tokens: Sequence[int]) -> int:
        """Keep the part of the cache that ``tokens`` starts with.

        Truncates the history (and the cache) to the longest common prefix of
        the history and ``tokens``, always leaving at least one token of
        ``tokens`` to evaluate so its logits are fresh. When the tokens part
        ways inside the evicted middle, nothing can be reused and the cache is
        cleared.

        Returns:
            How many leading tokens of ``tokens`` are already in place.
        """
        n = 0
        limit = min(len(self.history), len(tokens) - 1)
        while n < limit and self.history[n] == tokens[n]:
            n += 1
        if n == len(self.history):
            return n
        if self._kept is not None:
            return self._reuse_kept(n)
        if self.n_evicted and n < self.n_sink + self.n_evicted:
            self.clear()
            return 0
        pos = self._position(n)
        if not llama_cpp.llama_memory_seq_rm(self._mem, 0, pos, -1):
            # Recurrent memories cannot drop a suffix: start over.
            self.clear()
            return 0
        self._llm.n_tokens = pos
        del self.history[n:]
        return n

    def _reuse_kept(self, n: int) -> int:
        """:meth:`reuse_prefix` when a policy evicts non-contiguous tokens."""
        assert self._kept is not None
        if self.n_evicted and n < self._evicted_end:
            self.clear()
            return 0
        pos = bisect.bisect_left(self._kept, n)
        if not llama_cpp.llama_memory_seq_rm(self._mem, 0, pos, -1):
            self.clear()
            return 0
        self._llm.n_tokens = pos
        self._truncated(pos)
        del self.history[n:]
        return n

    # -- feeding ----------------------------------------------------------------

    def feed(
        self,
        tokens: Sequence[int],
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> bool:
        """Evaluate ``tokens`` after the history, evicting whatever must go.

        Tokens that would be evicted before the end of this call anyway (a
        batch longer than the window) are recorded as evicted without being
        evaluated.

        Args:
            tokens: Tokens to append.
            should_stop: Checked between batches; when it returns True the
                call stops early (the cache stays consistent).

        Returns:
            False when stopped early, else True.

        Raises:
            GenerationError: llama.cpp failed to decode.
        """
        if len(tokens) == 1 and len(self.history) >= self.n_sink:
            # The decode loop's case, kept lean: one token, straight to llama_decode.
            if self.room == 0:
                self.make_room()
            self._eval_one(int(tokens[0]))
            return True
        rest = list(tokens)
        n_batch = int(self._llm.n_batch)
        # Sinks first: they are the start of the conversation, never skipped.
        need_sinks = self.n_sink - len(self.history)
        if need_sinks > 0 and rest:
            self._eval(rest[:need_sinks])
            rest = rest[need_sinks:]
        keep = self.n_ctx - self.n_sink - self.evict_chunk
        unpinned = self._pin_prefix <= self.n_sink and self._pin_span is None
        if len(rest) > keep and unpinned:
            skip = len(rest) - keep
            self._drop_window()
            self._skip(rest[:skip])
            rest = rest[skip:]
        elif not unpinned and self.policy is None:
            runs = self._pinned_plan(len(rest))
            if runs is not None:
                return self._feed_runs(rest, runs, n_batch, should_stop)
        return self._feed_all(rest, n_batch, should_stop)

    def _feed_all(
        self, rest: list[int], n_batch: int, should_stop: Callable[[], bool] | None
    ) -> bool:
        """Evaluate every token of ``rest``, evicting a chunk whenever the cache is full."""
        while rest:
            if should_stop is not None and should_stop():
                return False
            if self.room == 0:
                self.make_room()
            piece = rest[: min(self.room, n_batch)]
            self._eval(piece)
            rest = rest[len(piece) :]
        return True

    def _feed_runs(
        self,
        rest: list[int],
        runs: list[tuple[int, int]],
        n_batch: int,
        should_stop: Callable[[], bool] | None,
    ) -> bool:
        """Evaluate the history index ``runs`` of ``rest``; skip (evict unseen) the others.

        Every unpinned token in the cache goes first: the new tokens push all
        of them out anyway.
        """
        self._drop_unpinned()
        base = len(self.history)
        done = base
        for start, end in runs:
            if start > done:
                self._skip(rest[done - base : start - base])
            if not self._feed_all(rest[start - base : end - base], n_batch, should_stop):
                return False
            done = end
        if done < base + len(rest):
            self._skip(rest[done - base :])
        return True

    def make_room(self) -> None:
        """Evict one chunk after the sinks (shift, or re-prefill as fallback)."""
        if self._kept is not None and self.policy is None:
            self._evict_chosen(min(self.evict_chunk, len(self._unpinned())))
            return
        k = min(self.evict_chunk, self.n_cached - self._protected())
        if k <= 0:
            raise GenerationError("the KV cache is full of sink tokens; nothing can be evicted")
        if self.policy is not None:
            self._evict_chosen(k)
        elif self.shift_supported:
            self._shift(k)
        else:
            self._reprefill_without(k)

    # -- internals ----------------------------------------------------------------

    def _position(self, index: int) -> int:
        """Cache position of ``history[index]`` (which must be cached)."""
        return index if index < self.n_sink else index - self.n_evicted

    def _eval(self, piece: list[int]) -> None:
        try:
            self._llm.eval(piece)
        except RuntimeError as e:  # llama_decode returned non-zero
            raise GenerationError(f"llama.cpp failed to evaluate {len(piece)} tokens: {e}") from e
        if self._kept is not None:
            self._kept.extend(range(len(self.history), len(self.history) + len(piece)))
        self.history.extend(piece)
        self.n_evaluated += len(piece)

    def _eval_one(self, token: int) -> None:
        llm = self._llm
        n = int(llm.n_tokens)
        batch = llm._batch.batch
        batch.n_tokens = 1
        batch.token[0] = token
        batch.pos[0] = n
        batch.n_seq_id[0] = 1
        batch.seq_id[0][0] = 0
        batch.logits[0] = True
        # Nothing lies past n_tokens in the KV cache (every path that shortens
        # the cache removes the tail), so no seq_rm is needed first.
        code = llama_cpp.llama_decode(llm.ctx, batch)
        if code != 0:
            raise GenerationError(f"llama.cpp failed to evaluate a token (llama_decode {code})")
        llm.input_ids[n] = token
        llm.n_tokens = n + 1
        if self._kept is not None:
            self._kept.append(len(self.history))
        self.history.append(token)
        self.n_evaluated += 1

    def _count(self, k: int, *, reprefill: bool) -> None:
        self.n_evicted += k
        self.total_evicted += k
        self.n_shifts += 1
        self.total_shifts += 1
        if reprefill:
            self.n_reprefills += 1

    def _shift(self, k: int) -> None:
        s = self.n_sink
        n = self.n_cached
        if not llama_cpp.llama_memory_seq_rm(self._mem, 0, s, s + k):
            raise GenerationError("llama.cpp refused to evict tokens from the KV cache")
        llama_cpp.llama_memory_seq_add(self._mem, 0, s + k, -1, -k)
        ids = self._llm.input_ids
        ids[s : n - k] = ids[s + k : n].copy()
        self._llm.n_tokens = n - k
        self._count(k, reprefill=False)

    def _skip(self, piece: list[int]) -> None:
        """Record ``piece`` in the history as evicted without evaluating it."""
        self.history.extend(piece)
        self._evicted_end = max(self._evicted_end, len(self.history))
        self.n_evicted += len(piece)
        self.total_evicted += len(piece)

    def _pinned_plan(self, n_new: int) -> list[tuple[int, int]] | None:
        """Which of the next ``n_new`` history indices a pinned feed must evaluate.

        The pinned prefix and span among them, and the last window of the
        unpinned ones: everything else would be evicted (oldest unpinned
        first) before this feed ends. Returns ascending ``[start, end)`` runs,
        or None when every new token fits and must be evaluated.
        """
        assert self._kept is not None
        base = len(self.history)
        end = base + n_new
        prefix, span = self._pin_prefix, self._pin_span
        pinned_new: list[tuple[int, int]] = []
        if base < prefix:
            pinned_new.append((base, min(prefix, end)))
        cached_span = 0
        if span is not None:
            lo, hi = max(span[0], base), min(span[1], end)
            if lo < hi:
                pinned_new.append((lo, hi))
            cached_span = bisect.bisect_left(self._kept, span[1]) - bisect.bisect_left(
                self._kept, span[0]
            )
        n_pinned_new = sum(b - a for a, b in pinned_new)
        n_pinned = self._protected() + cached_span + n_pinned_new
        keep = self.n_ctx - n_pinned - self.evict_chunk
        if n_new - n_pinned_new <= keep:
            return None
        # Walk back from the end over ``keep`` unpinned indices, stepping over pins.
        tail, need = end, keep
        for a, b in reversed(pinned_new):  # disjoint and ascending
            if tail - b >= need:
                break
            need -= tail - b
            tail = a
        tail -= need
        runs = sorted([*pinned_new, (tail, end)])
        merged: list[tuple[int, int]] = []
        for a, b in runs:
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged

    def _drop_unpinned(self) -> None:
        """Evict every cached token outside the pinned prefix and span."""
        assert self._kept is not None
        gone = self._unpinned()
        if not gone:
            return
        n = self.n_cached
        first = gone[0]
        if first + len(gone) == n and llama_cpp.llama_memory_seq_rm(self._mem, 0, first, -1):
            # The usual layout (pins, then the window): no shift needed.
            self._evicted_end = max(self._evicted_end, self._kept[-1] + 1)
            self._llm.n_tokens = first
            self._truncated(first)
            self.n_evicted += len(gone)
            self.total_evicted += len(gone)
            return
        self._evict_chosen(len(gone))

    def _drop_window(self) -> None:
        """Evict every cached token after the sinks (no shift needed)."""
        n = self.n_cached
        if n <= self.n_sink:
            return
        if not llama_cpp.llama_memory_seq_rm(self._mem, 0, self.n_sink, -1):
            # Cannot drop a suffix (recurrent memory): rebuild from the sinks.
            sinks = self.history[: self.n_sink]
            llama_cpp.llama_memory_clear(self._mem, True)
            self._llm.n_tokens = 0
            self._truncated(0)
            self._llm.eval(sinks)
            self.n_reprefills += 1
        self._llm.n_tokens = self.n_sink
        self._truncated(self.n_sink)
        if self._kept is not None:
            self._kept.extend(range(len(self._kept), self.n_sink))
        self.n_evicted += n - self.n_sink
        self.total_evicted += n - self.n_sink

    def _reprefill_without(self, k: int) -> None:
        start = self.n_sink + self.n_evicted + k
        keep = self.history[: self.n_sink] + self.history[start:]
        llama_cpp.llama_memory_clear(self._mem, True)
        self._llm.n_tokens = 0
        try:
            self._llm.eval(keep)
        except RuntimeError as e:
            raise GenerationError(f"llama.cpp failed to re-prefill the window: {e}") from e
        self.n_evaluated += len(keep)
        self._count(k, reprefill=True)

    # -- eviction chosen by a policy ------------------------------------------------

    def _truncated(self, n: int) -> None:
        """Keep the policy's and the kept list's view of the cache to ``n`` positions."""
        if self.policy is not None:
            self.policy.truncated(n)
        if self._kept is not None:
            del self._kept[n:]

    def _contiguous(self) -> bool:
        """Whether the cache holds the sinks and then one run of the history's end."""
        assert self._kept is not None
        n = len(self._kept)
        sinks = min(self.n_sink, n)
        start = len(self.history) - (n - sinks)
        if self._kept != list(range(sinks)) + list(range(start, len(self.history))):
            return False
        self.n_evicted = start - sinks
        return True

    def _protected(self) -> int:
        """Leading cache positions that hold the pinned prefix."""
        if self._kept is None:
            return min(self.n_sink, self.n_cached)
        return bisect.bisect_left(self._kept, self._pin_prefix)

    def _unpinned(self) -> list[int]:
        """Cache positions outside the pinned prefix and span, oldest first."""
        assert self._kept is not None
        kept = self._kept
        start = self._protected()
        span = self._pin_span
        if span is None:
            return list(range(start, len(kept)))
        return [p for p in range(start, len(kept)) if not span[0] <= kept[p] < span[1]]

    def _evict_chosen(self, k: int) -> None:
        """Evict ``k`` positions: the policy's pick, else the oldest unpinned ones."""
        assert self._kept is not None
        if k <= 0:
            raise GenerationError(
                "the KV cache is full of pinned tokens (instructions and task); nothing can be "
                "evicted"
            )
        n = self.n_cached
        protected = self._protected()
        if self.policy is not None:
            positions = sorted(self.policy.choose(n, protected, k))
        else:
            positions = self._unpinned()[:k]
        if len(set(positions)) != k or positions[0] < protected or positions[-1] >= n:
            raise GenerationError(
                f"the eviction policy chose invalid positions {positions[:8]} "
                f"(need {k} distinct in {protected}..{n - 1})"
            )
        gone = set(positions)
        keep_pos = [p for p in range(n) if p not in gone]
        self._evicted_end = max(self._evicted_end, self._kept[positions[-1]] + 1)
        if not self.shift_supported:
            keep = [self.history[self._kept[p]] for p in keep_pos]
            kept = [self._kept[p] for p in keep_pos]
            llama_cpp.llama_memory_clear(self._mem, True)
            self._llm.n_tokens = 0
            self._truncated(0)
            try:
                self._llm.eval(keep)
            except RuntimeError as e:
                raise GenerationError(f"llama.cpp failed to re-prefill the cache: {e}") from e
            self._kept[:] = kept
            self.n_evaluated += len(keep)
            self._count(k, reprefill=True)
            return
        # Highest run first: each shift moves only tokens after its own run.
        for start, end in reversed(_runs(positions)):
            if not llama_cpp.llama_memory_seq_rm(self._mem, 0, start, end):
                raise GenerationError("llama.cpp refused to evict tokens from the KV cache")
            llama_cpp.llama_memory_seq_add(self._mem, 0, end, -1, start - end)
        ids = self._llm.input_ids
        ids[: n - k] = ids[keep_pos].copy()
        self._llm.n_tokens = n - k
        self._kept[:] = [self._kept[p] for p in keep_pos]
        if self.policy is not None:
            self.policy.evicted(positions)
        self._count(k, reprefill=False)


def _runs(positions: Sequence[int]) -> list[tuple[int, int]]:
    """Split ascending positions into ``[start, end)`` runs of consecutive ones."""
    runs: list[tuple[int, int]] = []
    for p in positions:
        if runs and runs[-1][1] == p:
            runs[-1] = (runs[-1][0], p + 1)
        else:
            runs.append((p, p + 1))
    return runs
