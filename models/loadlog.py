"""What llama.cpp says while it loads a model: where each layer went, and why a load failed.

llama.cpp has no call that answers "how many layers are on the GPU"; it
says so in its log while loading (``load_tensors: layer 12 assigned to
device CUDA0``), and an out-of-memory load fails with the same bare
``ValueError`` as any other, the reason only in the log
(``cudaMalloc failed: out of memory``). :class:`LoadLog` listens to the log
for the duration of one load, passes every line on to llama-cpp-python's own
handler, and reads both facts from what it heard.
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from models.errors import ModelLoadError

# One load at a time: llama.cpp's log callback is process-wide.
_lock = threading.Lock()

_ASSIGNED = re.compile(r"layer\s+(\d+) assigned to device ([^,\s]+)")
# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5.
_PROBLEM_LEVELS = (3, 4)
_PROBLEM_WORDS = ("out of memory", "failed", "unable", "error")


class LoadLog:
    """The llama.cpp log lines of one load (a context manager; one at a time per process).

    Attributes:
        lines: ``(level, text)`` of every line heard.
    """

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []
        self._callback: Any = None

    def __enter__(self) -> LoadLog:
        import llama_cpp
        from llama_cpp import _logger

        passed_on = _logger.llama_log_callback

        def heard(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            self.lines.append((int(level), text.decode("utf-8", errors="replace")))
            passed_on(level, text, user_data)

        # Kept on self: ctypes calls it until the old handler is restored.
        self._callback = llama_cpp.llama_log_callback(heard)
        _lock.acquire()
        try:
            llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))
        except BaseException:
            _lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        import llama_cpp
        from llama_cpp import _logger

        try:
            llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        finally:
            _lock.release()

    def layer_devices(self) -> dict[int, str]:
        """Each layer's device as llama.cpp assigned it (empty if it did not say)."""
        return {
            int(m.group(1)): m.group(2)
            for _, text in self.lines
            if (m := _ASSIGNED.search(text)) is not None
        }

    def offloaded(self) -> tuple[int, int] | None:
        """``(layers on a GPU, layers in all)``, or None when llama.cpp did not say."""
        return layer_devices_offloaded(self.layer_devices())

    def problems(self) -> list[str]:
        """The warning and error lines that explain a failed load (at most the last three)."""
        found = [
            text.strip()
            for level, text in self.lines
            if level in _PROBLEM_LEVELS
            or any(word in text.lower() for word in _PROBLEM_WORDS)
        ]
        return [line for line in found if line][-3:]


def layer_devices_offloaded(devices: Mapping[int, str]) -> tuple[int, int] | None:
    """``(layers not on the CPU, layers in all)`` from a layer → device map; None if empty."""
    if not devices:
        return None
    on_gpu = sum(1 for device in devices.values() if not device.upper().startswith("CPU"))
    return on_gpu, len(devices)


def llama_loader(
    construct: Callable[..., Any], kwargs: Mapping[str, Any], what: str
) -> Callable[[int], tuple[Any, LoadLog]]:
    """A loader for :func:`models.runtime.load_with_fallback` around ``llama_cpp.Llama``.

    Args:
        construct: ``llama_cpp.Llama`` (tests pass one that fails like it).
        kwargs: Its keyword arguments; ``n_gpu_layers`` is set per try.
        what: The model file, for messages.

    Returns:
        ``load(n_gpu_layers) -> (model, log of the load)``.

    Raises:
        ModelLoadError: (from ``load``) llama.cpp refused; the message carries
            what its log said (e.g. "out of memory").
    """

    def load(n_gpu_layers: int) -> tuple[Any, LoadLog]:
        with LoadLog() as log:
            try:
                model = construct(**(dict(kwargs) | {"n_gpu_layers": n_gpu_layers}))
            except (ValueError, RuntimeError, OSError) as e:
                said = "; ".join(log.problems())
                raise ModelLoadError(
                    f"llama.cpp could not load {what}: {e}" + (f" ({said})" if said else "")
                ) from e
        return model, log

    return load
