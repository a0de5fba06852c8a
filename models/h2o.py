"""Heavy-hitter eviction (H2O, Zhang et al. 2023) for the sink cache. Experimental.

H2O keeps, besides a recent window, the tokens that have received the most
attention so far. llama.cpp does not report attention, so :class:`AttentionTap`
reads it from the compute graph: the context is built with an evaluation
callback (``cb_eval``) and flash attention off, and after each
``kq_soft_max-<layer>`` node (the attention probabilities, ``[n_kv, n_tokens,
n_head]``) the tap adds every column's sum over heads and query rows to the
score of that KV cell. The cells the new tokens were written to come from the
``attn_inp_k_idxs`` input of the layer's K-cache ``SET_ROWS`` node, so the tap
knows which cell holds which cache position, and a reused cell starts again
from zero.

:class:`HeavyHitters` is the :class:`~models.eviction.EvictionPolicy`: it
evicts the lowest-scoring positions between the protected sinks and the
recent window. Scores are summed over the tapped layers and heads, since
llama.cpp evicts a token from every layer at once (the paper evicts per head).

Cost: the callback runs in Python for every graph node (asked whether it is
wanted) and breaks the graph at each tapped layer. The per-node question
dominates, so tapping fewer layers (``layers``) saves almost nothing; on the
embedded model the tap adds 8-10 % CPU per token (docs/benchmarks.md, 3e).
"""

from __future__ import annotations

import contextlib
import ctypes
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import llama_cpp
import numpy as np

from models.errors import GenerationError, ModelLoadError

_SOFT_MAX = b"kq_soft_max-"
_K_CACHE = b"cache_k_l"
_GGML_TYPE_F32 = 0
_GGML_TYPE_I64 = 27


class _GgmlTensor(ctypes.Structure):
    """The head of ggml.h's ``struct ggml_tensor`` (GGML_MAX_DIMS 4, _SRC 10, _NAME 64)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
    ]


def _ggml_base() -> Any:
    """libggml-base from the llama_cpp package, with the two functions the tap calls."""
    lib_dir = pathlib.Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("ggml-base.*"))
    if not candidates:
        raise ModelLoadError(f"no libggml-base shared library in {lib_dir}")
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_get_name.restype = ctypes.c_char_p
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
    ]
    return lib


class AttentionTap:
    """Accumulate the attention each KV cell receives, through llama.cpp's eval callback.

    Build it with :meth:`install` before anything else uses the context: the
    callback can only be set when the context is created, so the Llama's
    context is rebuilt (empty) with it.

    Attributes:
        cells: The KV cell of each cache position, in position order.
        scores: Accumulated attention per KV cell.
        born: Sequence number (1-based, over every token tapped) of each
            cell's token; ``clock - born + 1`` query rows have seen it.
        clock: Tokens tapped so far.
        n_layers_tapped: Layers read on each decode.
    """

    def __init__(self, llm: Any, layers: Iterable[int] | None) -> None:
        model = llm._model.model
        if llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model):
            raise ModelLoadError(
                "H2O eviction needs an attention-only model; this one is recurrent"
            )
        if llama_cpp.llama_model_n_swa(model) > 0:
            # Sliding-window layers keep a second KV cache with its own cell numbering.
            raise ModelLoadError("H2O eviction does not support sliding-window attention models")
        self._lib = _ggml_base()
        n_layer = int(llama_cpp.llama_model_n_layer(model))
        chosen = sorted(set(range(n_layer) if layers is None else layers))
        if not chosen or chosen[0] < 0 or chosen[-1] >= n_layer:
            raise ModelLoadError(f"attention layers must be within 0..{n_layer - 1}: {chosen}")
        self._layers = frozenset(chosen)
        self._first = chosen[0]
        self.n_layers_tapped = len(chosen)
        self.scores = np.zeros(int(llama_cpp.llama_n_ctx(llm.ctx)), dtype=np.float64)
        self.born = np.zeros(len(self.scores), dtype=np.float64)
        self.clock = 0
        self.cells: list[int] = []
        self.error: str | None = None
        self._idxs: int | None = None
        self._buf = np.zeros(0, dtype=np.float32)
        self._callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_node)

    @classmethod
    def install(cls, llm: Any, layers: Iterable[int] | None = None) -> AttentionTap:
        """Rebuild ``llm``'s (empty) context with flash attention off and the tap set.

        Args:
            llm: A freshly loaded ``llama_cpp.Llama``; its KV cache is discarded.
            layers: Layers to read (None: all).

        Raises:
            ModelLoadError: The layers are out of range or the context cannot be rebuilt.
        """
        import llama_cpp._internals

        internals: Any = llama_cpp._internals
        tap = cls(llm, layers)
        params = llm.context_params
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.cb_eval = tap._callback
        params.cb_eval_user_data = None
        llm._ctx.close()
        try:
            ctx = internals.LlamaContext(model=llm._model, params=params, verbose=False)
        except ValueError as e:
            raise ModelLoadError(
                f"llama.cpp could not rebuild the context with the tap: {e}"
            ) from e
        llm._ctx = llm._stack.enter_context(contextlib.closing(ctx))
        llm.n_tokens = 0
        # The context holds a raw pointer to the callback: keep it alive as long as the Llama.
        llm._keyless_attention_tap = tap
        return tap

    # -- the callback (runs inside llama_decode) ------------------------------------------

    def _on_node(self, t: int, ask: bool, user_data: int | None) -> bool:
        try:
            if ask:
                return self._wanted(t)
            self._read(t)
        except Exception as e:  # noqa: BLE001 - must not unwind through C; reported by choose()
            if self.error is None:
                self.error = f"{type(e).__name__}: {e}"
        # Returning False would stop the graph mid-way and leave wrong logits.
        return True

    def _wanted(self, t: int) -> bool:
        name: bytes = self._lib.ggml_get_name(t)
        if name.startswith(_SOFT_MAX):
            return int(name[len(_SOFT_MAX) :]) in self._layers
        if name.startswith(_K_CACHE):
            # A K-cache write: its row indices are the cells this ubatch's
            # tokens go to (an input, set before compute). Nodes are asked in
            # order, so the last one seen before a layer's attention is this
            # ubatch's.
            src = _GgmlTensor.from_address(t).src[1]
            if src and _GgmlTensor.from_address(src).type == _GGML_TYPE_I64:
                self._idxs = src
        return False

    def _read(self, t: int) -> None:
        head = _GgmlTensor.from_address(t)
        layer = int(head.name[len(_SOFT_MAX) :])
        if layer == self._first:
            self._take_cells()
        if head.type != _GGML_TYPE_F32:
            raise GenerationError(f"attention probabilities are not F32 (type {head.type})")
        n_kv = int(head.ne[0])
        count = n_kv * int(head.ne[1]) * int(head.ne[2]) * int(head.ne[3])
        if self._buf.size < count:
            self._buf = np.zeros(count, dtype=np.float32)
        self._lib.ggml_backend_tensor_get(t, self._buf.ctypes.data, 0, count * 4)
        self.scores[:n_kv] += self._buf[:count].reshape(-1, n_kv).sum(axis=0, dtype=np.float64)

    def _take_cells(self) -> None:
        idxs = self._idxs
        if idxs is None:
            raise GenerationError("the K-cache write indices were not seen before attention")
        n = int(_GgmlTensor.from_address(idxs).ne[0])
        cells = np.zeros(n, dtype=np.int64)
        self._lib.ggml_backend_tensor_get(idxs, cells.ctypes.data, 0, n * 8)
        self.scores[cells] = 0.0
        self.born[cells] = np.arange(self.clock + 1, self.clock + 1 + n)
        self.clock += n
        self.cells.extend(int(c) for c in cells)


class HeavyHitters:
    """Evict the positions that received the least attention, outside the recent window.

    Args:
        llm: A freshly loaded ``llama_cpp.Llama`` (its context is rebuilt).
        recent: The most recent positions, never evicted while older ones
            remain (None: half of the evictable positions, as in the paper's
            equal split between heavy hitters and recent tokens).
        layers: Layers whose attention counts (None: all).
        score: ``sum``: the attention accumulated so far (the paper's H2O),
            which favours the oldest tokens; ``mean``: divided by the number
            of query rows that have seen the token.
    """

    def __init__(
        self,
        llm: Any,
        *,
        recent: int | None,
        layers: Iterable[int] | None = None,
        score: Literal["sum", "mean"] = "sum",
    ) -> None:
        if recent is not None and recent < 0:
            raise ModelLoadError(f"the recent window must be >= 0, got {recent}")
        self.recent = recent
        self.score = score
        self.tap = AttentionTap.install(llm, layers)

    def position_scores(self) -> np.ndarray:
        """The score of each cache position, in position order."""
        cells = np.asarray(self.tap.cells, dtype=np.int64)
        if self.score == "mean":
            return self.tap.scores[cells] / (self.tap.clock - self.tap.born[cells] + 1)
        return self.tap.scores[cells]

    def choose(self, n_cached: int, n_protected: int, k: int) -> Sequence[int]:
        """Return the ``k`` lowest-scoring positions between the sinks and the window."""
        tap = self.tap
        if tap.error is not None:
            raise GenerationError(f"the attention tap failed: {tap.error}")
        if not tap.cells and n_cached:
            raise GenerationError(
                "the attention tap saw no kq_soft_max tensors (flash attention on, or a model "
                "whose graph names its attention differently); H2O cannot run on it"
            )
        if len(tap.cells) != n_cached:
            raise GenerationError(
                f"the attention tap tracks {len(tap.cells)} positions, the cache holds {n_cached}"
            )
        # When the window leaves fewer than k candidates, its oldest tokens become candidates.
        recent = (n_cached - n_protected) // 2 if self.recent is None else self.recent
        end = max(n_protected + k, n_cached - recent)
        scores = self.position_scores()[n_protected:end]
        if k >= len(scores):
            picked = np.arange(len(scores))
        else:
            picked = np.argpartition(scores, k - 1, kind="introselect")[:k]
        return sorted(int(p) + n_protected for p in picked)

    def evicted(self, positions: Sequence[int]) -> None:
        """Drop the evicted positions' cells (their scores restart when the cell is reused)."""
        gone = set(positions)
        self.tap.cells = [c for p, c in enumerate(self.tap.cells) if p not in gone]

    def truncated(self, n_cached: int) -> None:
        """Forget positions from ``n_cached`` on."""
        del self.tap.cells[n_cached:]
