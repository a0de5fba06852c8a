"""Loading through llama.cpp's log: the layers really offloaded, and the out-of-memory fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from models.catalog import embedded_default
from models.errors import ModelLoadError
from models.loadlog import LoadLog, layer_devices_offloaded, llama_loader
from models.runtime import Runtime, RuntimeConfig, load_with_fallback


class OutOfVram:
    """Stands in for ``llama_cpp.Llama`` on a GPU with room for ``max_layers`` layers.

    Above that it fails the way llama-cpp-python reports an out-of-memory
    load: a bare ``ValueError`` ("Failed to create llama_context" when the
    KV cache does not fit, "Failed to load model from file" when the weights
    do not).
    """

    def __init__(self, max_layers: int, *, weights: bool = False) -> None:
        self.max_layers = max_layers
        self.weights = weights
        self.tries: list[int] = []

    def __call__(self, **kwargs: Any) -> str:
        n = kwargs["n_gpu_layers"]
        self.tries.append(n)
        if n > self.max_layers:
            if self.weights:
                raise ValueError(f"Failed to load model from file: {kwargs['model_path']}")
            raise ValueError("Failed to create llama_context")
        return f"model@{n}"


def test_an_out_of_memory_load_falls_back_to_fewer_layers_then_the_cpu() -> None:
    kwargs = {"model_path": "/m/big.gguf", "n_ctx": 8192}
    gpu = OutOfVram(max_layers=20)
    (model, _), n = load_with_fallback(llama_loader(gpu, kwargs, "/m/big.gguf"), 33, 32)
    assert (model, n) == ("model@16", 16)
    assert gpu.tries == [33, 24, 16]

    no_room = OutOfVram(max_layers=0, weights=True)
    (model, _), n = load_with_fallback(llama_loader(no_room, kwargs, "/m/big.gguf"), -1, 32)
    assert (model, n) == ("model@0", 0)
    assert no_room.tries == [33, 24, 16, 8, 0]  # -1: every layer first, the CPU last


def test_a_load_that_fails_even_on_the_cpu_names_every_try() -> None:
    never = OutOfVram(max_layers=-1)
    with pytest.raises(ModelLoadError) as caught:
        load_with_fallback(llama_loader(never, {"model_path": "/m/x.gguf"}, "/m/x.gguf"), 8, 8)
    message = str(caught.value)
    assert never.tries == [8, 6, 4, 2, 0]
    assert "8 GPU layers: llama.cpp could not load /m/x.gguf: Failed to create llama_context" in (
        message
    )
    assert "0 GPU layers:" in message
    assert isinstance(caught.value.__cause__, ValueError)


def test_what_the_log_says_explains_a_failed_load() -> None:
    log = LoadLog()
    log.lines = [
        (1, "load_tensors: layer   0 assigned to device CUDA0, is_swa = 0\n"),
        (4, "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9000.00 MiB on device 0: "
            "cudaMalloc failed: out of memory\n"),
        (4, "llama_init_from_model: failed to initialize the context\n"),
        (2, "llama_context: n_ctx = 8192\n"),
    ]  # fmt: skip
    problems = log.problems()
    assert len(problems) == 2 and "cudaMalloc failed: out of memory" in problems[0]


def test_the_device_of_each_layer_gives_the_offloaded_count() -> None:
    assert layer_devices_offloaded({}) is None
    assert layer_devices_offloaded({0: "CPU", 1: "CPU"}) == (0, 2)
    assert layer_devices_offloaded({0: "CUDA0", 1: "CUDA0", 2: "CPU"}) == (2, 3)


@pytest.fixture(scope="module")
def model_path() -> Path:
    return embedded_default().path


def test_the_real_load_log_names_every_layers_device(model_path: Path) -> None:
    kwargs = {"model_path": str(model_path), "n_ctx": 256, "n_threads": 1, "verbose": False}
    load = llama_loader(llama_cpp.Llama, kwargs, str(model_path))
    llm, log = load(99)
    try:
        on_gpu, total = log.offloaded() or (None, None)
        assert total == 31  # SmolLM2-135M: 30 repeating layers and the output layer
        assert on_gpu == (31 if llama_cpp.llama_supports_gpu_offload() else 0)
    finally:
        llm.close()


def test_the_runtime_reports_the_layers_it_really_offloaded(model_path: Path) -> None:
    # Ask for every layer: a CPU-only build loads and offloads none of them.
    config = RuntimeConfig(model_path=model_path, n_ctx=256, n_threads=1, n_gpu_layers=99)
    with Runtime(config) as rt:
        info = rt.info
    assert info.n_gpu_layers == 99
    assert info.n_layers == 31
    gpu = llama_cpp.llama_supports_gpu_offload()
    assert info.n_layers_offloaded == (31 if gpu else 0)
