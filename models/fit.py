"""Will a model fit this machine, and how many layers go to the GPU.

Pure arithmetic over a model's shape (from its GGUF header, or estimated from
a catalog entry before download) and the free memory a probe reported:

- weights: each repeating layer's bytes come from the GGUF tensor table
  (``blk.N.*``); ``output.weight``/``output_norm`` form the output layer,
  which llama.cpp offloads only when ``n_gpu_layers`` exceeds the layer
  count; ``token_embd`` and anything else stay on the CPU;
- KV cache per layer at ``n_ctx``: ``n_head_kv × (head_dim_k + head_dim_v) ×
  bytes per element × n_ctx`` (K and V; f16 is 2 bytes);
- compute buffers: the attention scores of one micro-batch
  (``n_ubatch × n_ctx × n_head × 4`` bytes, without flash attention) plus
  ``4 × n_ubatch × n_embd × 4`` bytes of activations, on each device that
  runs layers; plus a fixed :data:`GPU_RESERVE` for the backend's own context
  and :data:`CPU_RESERVE` for the runtime;
- :func:`plan_offload` offloads llama.cpp's way (the *last* N layers), as many
  as the VRAM budget holds, and the output layer when every layer fits;
- :func:`verdict`: a need of at most :data:`FITS_FRACTION` of the available
  memory *fits*, up to :data:`TIGHT_FRACTION` is *tight* (it loads but the
  rest of the machine is squeezed), beyond is *too big*.

The figures are estimates in the spirit of llama.cpp's ``--fit`` and Ollama's
scheduler: exact weights, closed-form KV, and a conservative allowance for
what the backends allocate on top. Loading still falls back to fewer layers
(:func:`fallback_layers`) when the estimate was optimistic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from models.errors import ModelError

MIB = 1 << 20
GIB = 1 << 30

#: What a GPU backend allocates beyond weights, KV and compute (context, cuBLAS handles).
GPU_RESERVE = 384 * MIB
#: What the runtime needs in RAM beyond weights, KV and compute (llama.cpp, Python, sampler).
CPU_RESERVE = 256 * MIB
#: A need up to this fraction of the available memory fits comfortably.
FITS_FRACTION = 0.80
#: A need up to this fraction loads, but leaves the machine little headroom.
TIGHT_FRACTION = 1.00

#: Effective bits per weight of common quantizations (whole-file averages of
#: llama.cpp's mixes, including the higher-precision embeddings and norms).
BITS_PER_WEIGHT: dict[str, float] = {
    "Q2_K": 3.0,
    "Q3_K_M": 3.9,
    "Q4_0": 4.6,
    "Q4_1": 5.0,
    "Q4_K_S": 4.7,
    "Q4_K_M": 5.0,
    "Q5_K_M": 5.7,
    "Q6_K": 6.6,
    "Q8_0": 8.5,
    "F16": 16.0,
}

_LAYER_RE = re.compile(r"^blk\.(\d+)\.")
_OUTPUT_TENSORS = ("output.weight", "output_norm.weight", "output_norm.bias", "output.bias")


class FitError(ModelError):
    """A model's header lacks what the fit estimate needs."""


class Fit(StrEnum):
    """Whether a model fits the memory it would run in."""

    FITS = "fits"
    TIGHT = "tight"
    TOO_BIG = "too big"


@dataclass(frozen=True)
class ModelShape:
    """What the memory estimate needs to know about a model."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    layer_bytes: tuple[int, ...]
    output_bytes: int
    other_bytes: int
    estimated: bool = False

    @property
    def weight_bytes(self) -> int:
        """All weights."""
        return sum(self.layer_bytes) + self.output_bytes + self.other_bytes


@dataclass(frozen=True)
class OffloadPlan:
    """Where a model's parts go and what each device needs."""

    n_layer: int
    n_gpu_layers: int
    vram_bytes: int
    ram_bytes: int

    @property
    def offloaded_layers(self) -> int:
        """Repeating layers on the GPU (the output layer not counted)."""
        return min(self.n_gpu_layers, self.n_layer)

    def describe(self) -> str:
        """A short line for the Model panel and the CLI."""
        if self.n_gpu_layers == 0:
            return f"CPU only · {self.ram_bytes / GIB:.1f} GiB RAM"
        return (
            f"{self.offloaded_layers}/{self.n_layer} layers on the GPU "
            f"({self.vram_bytes / GIB:.1f} GiB VRAM, {self.ram_bytes / GIB:.1f} GiB RAM)"
        )


@dataclass(frozen=True)
class Assessment:
    """A plan and whether it fits."""

    plan: OffloadPlan
    fit: Fit
    ram_available: int
    vram_available: int | None


# -- shapes ----------------------------------------------------------------------------


def shape_from_header(header: Any) -> ModelShape:
    """Read a model's shape from a :class:`~models.catalog.GGUFHeader`.

    Raises:
        FitError: The header lacks the layer count or embedding size.
    """
    hp: dict[str, int] = dict(header.hparams)
    n_layer = hp.get("block_count")
    n_embd = hp.get("embedding_length")
    if not n_layer or not n_embd:
        raise FitError(
            f"the {header.architecture} header has no block_count/embedding_length; "
            "cannot estimate its memory"
        )
    n_head = hp.get("attention.head_count") or 1
    n_head_kv = hp.get("attention.head_count_kv") or n_head
    head_dim_k = hp.get("attention.key_length") or n_embd // n_head
    head_dim_v = hp.get("attention.value_length") or head_dim_k
    layers = [0] * n_layer
    output = other = 0
    for name, nbytes in header.tensors:
        m = _LAYER_RE.match(name)
        if m and int(m.group(1)) < n_layer:
            layers[int(m.group(1))] += nbytes
        elif name in _OUTPUT_TENSORS:
            output += nbytes
        else:
            other += nbytes
    return ModelShape(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_dim_k,
        head_dim_v=head_dim_v,
        layer_bytes=tuple(layers),
        output_bytes=output,
        other_bytes=other,
    )


def estimate_size(n_params: float, quantization: str) -> int:
    """Estimate a GGUF file's size from its parameter count and quantization.

    Raises:
        FitError: The quantization is not in :data:`BITS_PER_WEIGHT`.
    """
    bpw = BITS_PER_WEIGHT.get(quantization.upper())
    if bpw is None:
        raise FitError(f"no size estimate for quantization {quantization!r}")
    return int(n_params * bpw / 8)


def estimate_shape(
    *,
    file_size: int,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_head_kv: int,
    head_dim: int,
    n_vocab: int,
) -> ModelShape:
    """A model's shape before its file is here (catalog facts and a size).

    The token embedding and the output layer are each ``n_vocab × n_embd``
    weights at the file's average width; the rest is split evenly across the
    layers. Tied embeddings make this a slight overestimate, which is the
    safe side.
    """
    bytes_per_weight = file_size / max(1, _param_estimate(n_layer, n_embd, n_vocab))
    embd = int(n_vocab * n_embd * bytes_per_weight)
    per_layer = max(0, (file_size - 2 * embd) // n_layer)
    return ModelShape(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_dim,
        head_dim_v=head_dim,
        layer_bytes=(per_layer,) * n_layer,
        output_bytes=embd,
        other_bytes=file_size - per_layer * n_layer - embd,
        estimated=True,
    )


def _param_estimate(n_layer: int, n_embd: int, n_vocab: int) -> int:
    # 12·d² per transformer layer is the textbook count; GQA and wider MLPs
    # shift it both ways, and only the ratio to the embeddings matters here.
    return 12 * n_layer * n_embd * n_embd + 2 * n_vocab * n_embd


# -- the arithmetic ---------------------------------------------------------------------


def kv_bytes_per_layer(shape: ModelShape, n_ctx: int, kv_bytes: int = 2) -> int:
    """K and V cache bytes of one layer at ``n_ctx`` (``kv_bytes`` per element)."""
    return shape.n_head_kv * (shape.head_dim_k + shape.head_dim_v) * kv_bytes * n_ctx


def compute_bytes(shape: ModelShape, n_ctx: int, n_ubatch: int = 512) -> int:
    """Compute-buffer allowance for one device running layers."""
    ub = min(n_ubatch, n_ctx)
    return ub * n_ctx * shape.n_head * 4 + 4 * ub * shape.n_embd * 4


def ram_needed(
    shape: ModelShape,
    n_ctx: int,
    n_gpu_layers: int = 0,
    *,
    kv_bytes: int = 2,
    n_ubatch: int = 512,
) -> int:
    """RAM for the part of the model that stays on the CPU."""
    n_gpu = max(0, min(n_gpu_layers, shape.n_layer + 1))
    on_gpu = min(n_gpu, shape.n_layer)
    cpu_layers = shape.layer_bytes[: shape.n_layer - on_gpu]
    need = sum(cpu_layers) + shape.other_bytes + CPU_RESERVE
    need += len(cpu_layers) * kv_bytes_per_layer(shape, n_ctx, kv_bytes)
    if n_gpu <= shape.n_layer:
        need += shape.output_bytes
    if cpu_layers or n_gpu == 0:
        need += compute_bytes(shape, n_ctx, n_ubatch)
    return need


def vram_needed(
    shape: ModelShape, n_ctx: int, n_gpu_layers: int, *, kv_bytes: int = 2, n_ubatch: int = 512
) -> int:
    """VRAM for the last ``n_gpu_layers`` layers (and the output layer past n_layer)."""
    n_gpu = max(0, min(n_gpu_layers, shape.n_layer + 1))
    if n_gpu == 0:
        return 0
    on_gpu = min(n_gpu, shape.n_layer)
    layers = shape.layer_bytes[shape.n_layer - on_gpu :]
    need = sum(layers) + on_gpu * kv_bytes_per_layer(shape, n_ctx, kv_bytes)
    if n_gpu > shape.n_layer:
        need += shape.output_bytes
    return need + compute_bytes(shape, n_ctx, n_ubatch) + GPU_RESERVE


def plan_offload(
    shape: ModelShape,
    *,
    n_ctx: int,
    vram_free: int | None,
    kv_bytes: int = 2,
    n_ubatch: int = 512,
) -> OffloadPlan:
    """Choose ``n_gpu_layers`` for a VRAM budget.

    The most layers (counted from the last, as llama.cpp offloads them) whose
    weights, KV cache, compute buffer and :data:`GPU_RESERVE` fit in
    ``vram_free``; ``n_layer + 1`` (the output layer too) when everything
    fits; 0 without a GPU (``vram_free`` None) or when not one layer fits.
    """
    n_gpu = 0
    if vram_free is not None:
        fixed = compute_bytes(shape, n_ctx, n_ubatch) + GPU_RESERVE
        budget = vram_free - fixed
        kv = kv_bytes_per_layer(shape, n_ctx, kv_bytes)
        for layer in reversed(shape.layer_bytes):
            if budget < layer + kv:
                break
            budget -= layer + kv
            n_gpu += 1
        if n_gpu == shape.n_layer and budget >= shape.output_bytes:
            n_gpu += 1
    return OffloadPlan(
        n_layer=shape.n_layer,
        n_gpu_layers=n_gpu,
        vram_bytes=vram_needed(shape, n_ctx, n_gpu, kv_bytes=kv_bytes, n_ubatch=n_ubatch),
        ram_bytes=ram_needed(shape, n_ctx, n_gpu, kv_bytes=kv_bytes, n_ubatch=n_ubatch),
    )


def verdict(need: int, available: int) -> Fit:
    """Whether ``need`` bytes fit in ``available`` (see :data:`FITS_FRACTION`)."""
    if need <= available * FITS_FRACTION:
        return Fit.FITS
    if need <= available * TIGHT_FRACTION:
        return Fit.TIGHT
    return Fit.TOO_BIG


def assess(
    shape: ModelShape,
    *,
    n_ctx: int,
    ram_available: int,
    vram_available: int | None = None,
    kv_bytes: int = 2,
) -> Assessment:
    """Plan the offload for this machine and judge whether the CPU part fits in RAM."""
    plan = plan_offload(shape, n_ctx=n_ctx, vram_free=vram_available, kv_bytes=kv_bytes)
    return Assessment(
        plan=plan,
        fit=verdict(plan.ram_bytes, ram_available),
        ram_available=ram_available,
        vram_available=vram_available,
    )


def fallback_layers(n_gpu_layers: int) -> list[int]:
    """The layer counts to try, in order, when loading runs out of memory.

    The planned count, then three quarters, half and a quarter of it, then
    the CPU: each step frees a sizeable part of the VRAM without giving up
    the GPU at the first failure.
    """
    if n_gpu_layers <= 0:
        return [0]
    steps = [n_gpu_layers, n_gpu_layers * 3 // 4, n_gpu_layers // 2, n_gpu_layers // 4, 0]
    out: list[int] = []
    for n in steps:
        if n not in out:
            out.append(n)
    return out
