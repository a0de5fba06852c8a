"""The fit arithmetic over GGUF headers the tests write, and the load fallback policy."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from models import fit
from models.catalog import read_header
from models.errors import ModelLoadError
from models.fit import GIB, MIB, Fit, FitError
from models.runtime import load_with_fallback

Q8 = gguf.GGMLQuantizationType.Q8_0


def write_model(
    path: Path,
    *,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_head_kv: int,
    n_ff: int,
    n_vocab: int = 256,
    quant: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F16,
    head_dim: int | None = None,
) -> Path:
    """A llama-shaped GGUF whose tensors have the real names and sizes (zeros)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(n_layer)
    w.add_embedding_length(n_embd)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_feed_forward_length(n_ff)
    w.add_context_length(4096)
    if head_dim is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    hd = head_dim or n_embd // n_head

    def tensor(name: str, rows: int, cols: int, q: gguf.GGMLQuantizationType = quant) -> None:
        if q == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, np.zeros((rows, cols), dtype=np.float16))
        elif q == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, np.zeros((rows, cols), dtype=np.float32))
        else:
            block, size = gguf.GGML_QUANT_SIZES[q]
            raw = np.zeros((rows, cols // block * size), dtype=np.uint8)
            w.add_tensor(name, raw, raw_dtype=q)

    tensor("token_embd.weight", n_vocab, n_embd)
    for i in range(n_layer):
        tensor(f"blk.{i}.attn_norm.weight", 1, n_embd, gguf.GGMLQuantizationType.F32)
        tensor(f"blk.{i}.attn_q.weight", n_head * hd, n_embd)
        tensor(f"blk.{i}.attn_k.weight", n_head_kv * hd, n_embd)
        tensor(f"blk.{i}.attn_v.weight", n_head_kv * hd, n_embd)
        tensor(f"blk.{i}.attn_output.weight", n_embd, n_head * hd)
        tensor(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    tensor("output_norm.weight", 1, n_embd, gguf.GGMLQuantizationType.F32)
    tensor("output.weight", n_vocab, n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def layer_weights(n_embd: int, n_head: int, n_head_kv: int, n_ff: int, hd: int, bpe: float) -> int:
    """What one layer weighs, by hand."""
    n = n_head * hd * n_embd * 2 + n_head_kv * hd * n_embd * 2 + 3 * n_ff * n_embd
    return int(n * bpe) + n_embd * 4  # + the f32 norm


SIZES = [
    # (n_layer, n_embd, n_head, n_head_kv, n_ff, quant, head_dim, bytes per element)
    pytest.param(4, 256, 8, 8, 512, gguf.GGMLQuantizationType.F16, None, 2.0, id="mha-f16"),
    pytest.param(6, 256, 8, 2, 768, gguf.GGMLQuantizationType.F16, None, 2.0, id="gqa-f16"),
    pytest.param(8, 512, 8, 4, 1024, Q8, None, 34 / 32, id="gqa-q8_0"),
    pytest.param(3, 256, 4, 1, 512, Q8, 128, 34 / 32, id="wide-heads-q8_0"),
]


@pytest.mark.parametrize(
    ("n_layer", "n_embd", "n_head", "n_kv", "n_ff", "quant", "hd", "bpe"), SIZES
)
def test_shape_comes_from_the_tensor_table(
    tmp_path: Path,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_kv: int,
    n_ff: int,
    quant: gguf.GGMLQuantizationType,
    hd: int | None,
    bpe: float,
) -> None:
    path = write_model(
        tmp_path / "m.gguf",
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_kv,
        n_ff=n_ff,
        quant=quant,
        head_dim=hd,
    )
    header = read_header(path)
    shape = fit.shape_from_header(header)
    head_dim = hd or n_embd // n_head
    assert (shape.n_layer, shape.n_embd, shape.n_head_kv) == (n_layer, n_embd, n_kv)
    assert shape.head_dim_k == shape.head_dim_v == head_dim
    assert (
        shape.layer_bytes == (layer_weights(n_embd, n_head, n_kv, n_ff, head_dim, bpe),) * n_layer
    )
    assert shape.output_bytes == int(256 * n_embd * bpe) + n_embd * 4
    assert shape.other_bytes == int(256 * n_embd * bpe)
    # Every tensor is counted once: the shape's weights are the file's data.
    assert shape.weight_bytes == sum(n for _, n in header.tensors)
    assert shape.weight_bytes < header.file_size


def test_kv_cache_bytes_follow_the_formula(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf", n_layer=2, n_embd=256, n_head=8, n_head_kv=2, n_ff=512)
    shape = fit.shape_from_header(read_header(path))
    # n_head_kv × head_dim × 2 (K and V) × 2 bytes (f16) × n_ctx
    assert fit.kv_bytes_per_layer(shape, 4096) == 2 * 32 * 2 * 2 * 4096
    assert fit.kv_bytes_per_layer(shape, 4096, kv_bytes=4) == 2 * 32 * 2 * 4 * 4096
    assert fit.kv_bytes_per_layer(shape, 8192) == 2 * fit.kv_bytes_per_layer(shape, 4096)


def synthetic(n_layer: int = 32, layer: int = 200 * MIB, output: int = 300 * MIB) -> fit.ModelShape:
    return fit.ModelShape(
        n_layer=n_layer,
        n_embd=4096,
        n_head=32,
        n_head_kv=8,
        head_dim_k=128,
        head_dim_v=128,
        layer_bytes=(layer,) * n_layer,
        output_bytes=output,
        other_bytes=output,
    )


def test_plan_offloads_what_fits_and_the_output_layer_only_when_all_do() -> None:
    shape = synthetic()
    n_ctx = 4096
    kv = fit.kv_bytes_per_layer(shape, n_ctx)
    fixed = fit.compute_bytes(shape, n_ctx) + fit.GPU_RESERVE
    per_layer = 200 * MIB + kv

    assert fit.plan_offload(shape, n_ctx=n_ctx, vram_free=None).n_gpu_layers == 0
    assert fit.plan_offload(shape, n_ctx=n_ctx, vram_free=fixed + per_layer - 1).n_gpu_layers == 0
    ten = fit.plan_offload(shape, n_ctx=n_ctx, vram_free=fixed + 10 * per_layer + per_layer // 2)
    assert ten.n_gpu_layers == 10
    assert ten.vram_bytes == fixed + 10 * per_layer
    all_but_output = fit.plan_offload(shape, n_ctx=n_ctx, vram_free=fixed + 32 * per_layer)
    assert all_but_output.n_gpu_layers == 32
    full = fit.plan_offload(shape, n_ctx=n_ctx, vram_free=fixed + 32 * per_layer + 300 * MIB)
    assert full.n_gpu_layers == 33 and full.offloaded_layers == 32
    assert "32/32 layers on the GPU" in full.describe()
    # What leaves the GPU lands in RAM, and the reverse.
    cpu = fit.ram_needed(shape, n_ctx, 0)
    assert fit.ram_needed(shape, n_ctx, 10) == cpu - 10 * per_layer
    assert full.ram_bytes == 300 * MIB + fit.CPU_RESERVE  # only token_embd stays


def test_a_longer_context_moves_layers_off_the_gpu() -> None:
    shape = synthetic()
    budget = 8 * GIB
    short = fit.plan_offload(shape, n_ctx=2048, vram_free=budget).n_gpu_layers
    long = fit.plan_offload(shape, n_ctx=32768, vram_free=budget).n_gpu_layers
    assert short == 33
    assert 0 < long < short


def test_verdict_thresholds() -> None:
    assert fit.verdict(80, 100) is Fit.FITS
    assert fit.verdict(81, 100) is Fit.TIGHT
    assert fit.verdict(100, 100) is Fit.TIGHT
    assert fit.verdict(101, 100) is Fit.TOO_BIG


def test_assess_judges_the_cpu_part() -> None:
    shape = synthetic()
    cpu_need = fit.ram_needed(shape, 4096, 0)
    assert fit.assess(shape, n_ctx=4096, ram_available=2 * cpu_need).fit is Fit.FITS
    assert fit.assess(shape, n_ctx=4096, ram_available=cpu_need).fit is Fit.TIGHT
    assert fit.assess(shape, n_ctx=4096, ram_available=cpu_need // 2).fit is Fit.TOO_BIG
    # With a GPU that holds it, the same small RAM is enough.
    on_gpu = fit.assess(shape, n_ctx=4096, ram_available=cpu_need // 2, vram_available=24 * GIB)
    assert on_gpu.fit is Fit.FITS and on_gpu.plan.n_gpu_layers == 33


def test_header_without_layers_is_a_clear_error(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "bare.gguf"), "llama")
    w.add_tensor("token_embd.weight", np.zeros(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(FitError, match="block_count"):
        fit.shape_from_header(read_header(tmp_path / "bare.gguf"))


def test_estimates_from_parameters() -> None:
    assert fit.estimate_size(3e9, "Q4_K_M") == int(3e9 * 5.0 / 8)
    with pytest.raises(FitError, match="IQ9"):
        fit.estimate_size(3e9, "IQ9")
    shape = fit.estimate_shape(
        file_size=2 * GIB,
        n_layer=28,
        n_embd=3072,
        n_head=24,
        n_head_kv=8,
        head_dim=128,
        n_vocab=128256,
    )
    assert shape.estimated
    assert shape.weight_bytes == 2 * GIB


# -- the load fallback -------------------------------------------------------------------


class FakeGpu:
    """A loader that runs out of memory above ``max_layers``."""

    def __init__(self, max_layers: int, cpu_fails: bool = False) -> None:
        self.max_layers = max_layers
        self.cpu_fails = cpu_fails
        self.tries: list[int] = []

    def __call__(self, n_gpu_layers: int) -> str:
        self.tries.append(n_gpu_layers)
        if n_gpu_layers > self.max_layers or (n_gpu_layers == 0 and self.cpu_fails):
            raise ModelLoadError(f"out of memory with {n_gpu_layers} layers")
        return f"model@{n_gpu_layers}"


def test_fallback_steps() -> None:
    assert fit.fallback_layers(0) == [0]
    assert fit.fallback_layers(33) == [33, 24, 16, 8, 0]
    assert fit.fallback_layers(2) == [2, 1, 0]


def test_load_succeeds_first_time_when_it_fits() -> None:
    gpu = FakeGpu(max_layers=40)
    assert load_with_fallback(gpu, 33, 32) == ("model@33", 33)
    assert gpu.tries == [33]


def test_load_falls_back_to_fewer_layers_then_cpu() -> None:
    gpu = FakeGpu(max_layers=20)
    assert load_with_fallback(gpu, 33, 32) == ("model@16", 16)
    assert gpu.tries == [33, 24, 16]
    cpu_only = FakeGpu(max_layers=0)
    assert load_with_fallback(cpu_only, -1, 32) == ("model@0", 0)  # -1: every layer first
    assert cpu_only.tries == [33, 24, 16, 8, 0]


def test_a_cpu_failure_is_final_and_names_every_try() -> None:
    gpu = FakeGpu(max_layers=0, cpu_fails=True)
    with pytest.raises(ModelLoadError, match="8 GPU layers.*0 GPU layers: out of memory"):
        load_with_fallback(gpu, 16, 32)
    assert gpu.tries == [16, 12, 8, 4, 0]
