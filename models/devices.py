"""How much memory this machine has free: RAM, and VRAM through llama.cpp.

The GPU side asks ggml's backend device API (``ggml_backend_dev_count``,
``ggml_backend_dev_get``, ``ggml_backend_dev_type``,
``ggml_backend_dev_memory``) in the ``libggml`` that llama-cpp-python ships;
its Python bindings do not wrap these, so they are bound here with ctypes.
A CPU-only build reports no GPU. The host runs :func:`probe` in a child
process (``python -m models.devices`` prints it as JSON), never in the GUI
process, which must not load llama.cpp.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict

# ggml-backend.h: enum ggml_backend_dev_type.
_DEV_GPU = 1
_DEV_IGPU = 2


class GpuMemory(BaseModel):
    """One GPU device and its memory."""

    model_config = ConfigDict(frozen=True)

    name: str
    free: int
    total: int
    integrated: bool = False


class MachineMemory(BaseModel):
    """What a probe found."""

    model_config = ConfigDict(frozen=True)

    ram_available: int
    ram_total: int
    gpus: tuple[GpuMemory, ...] = ()
    gpu_offload: bool = False
    detail: str = ""

    @property
    def vram_free(self) -> int | None:
        """Free memory of the largest discrete GPU (llama.cpp's main device), or None."""
        discrete = [g for g in self.gpus if not g.integrated]
        if not discrete or not self.gpu_offload:
            return None
        return max(g.free for g in discrete)


def ram() -> tuple[int, int]:
    """Return (available, total) RAM in bytes.

    ``MemAvailable`` from ``/proc/meminfo`` (what can be allocated without
    swapping), else the free physical pages from ``sysconf``.
    """
    try:
        fields: dict[str, int] = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[key] = int(parts[0]) * 1024
        if "MemAvailable" in fields and "MemTotal" in fields:
            return fields["MemAvailable"], fields["MemTotal"]
    except OSError:
        pass
    page = os.sysconf("SC_PAGE_SIZE")
    return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page


def gpus() -> tuple[list[GpuMemory], bool]:
    """List llama.cpp's GPU devices and whether the build can offload.

    Returns:
        The GPU devices (empty on a CPU-only build) and
        ``llama_supports_gpu_offload()``.

    Raises:
        OSError: The ggml library cannot be loaded.
    """
    import llama_cpp

    offload = bool(llama_cpp.llama_supports_gpu_offload())
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libggml.so*")) + sorted(lib_dir.glob("ggml.dll"))
    candidates += sorted(lib_dir.glob("libggml.dylib"))
    if not candidates:
        raise OSError(f"no ggml library in {lib_dir}")
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    lib.ggml_backend_dev_memory.restype = None
    # llama.cpp registers its backends on first use; make sure they are loaded.
    llama_cpp.llama_backend_init()
    found: list[GpuMemory] = []
    for i in range(int(lib.ggml_backend_dev_count())):
        dev = lib.ggml_backend_dev_get(i)
        kind = lib.ggml_backend_dev_type(dev)
        if kind not in (_DEV_GPU, _DEV_IGPU):
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        name = (lib.ggml_backend_dev_name(dev) or b"?").decode("utf-8", "replace")
        found.append(
            GpuMemory(name=name, free=free.value, total=total.value, integrated=kind == _DEV_IGPU)
        )
    return found, offload


def probe() -> MachineMemory:
    """Probe RAM and, through llama.cpp, VRAM (never raises for a missing GPU)."""
    available, total = ram()
    try:
        found, offload = gpus()
    except (ImportError, OSError, AttributeError) as e:
        return MachineMemory(
            ram_available=available, ram_total=total, detail=f"cannot ask llama.cpp: {e}"
        )
    if not offload:
        detail = "this llama.cpp build is CPU-only: every layer runs on the CPU"
    elif not found:
        detail = "this llama.cpp build can offload, but it sees no GPU"
    else:
        detail = "; ".join(f"{g.name}: {g.free / 2**30:.1f} GiB free" for g in found)
    return MachineMemory(
        ram_available=available,
        ram_total=total,
        gpus=tuple(found),
        gpu_offload=offload,
        detail=detail,
    )


if __name__ == "__main__":
    sys.stdout.write(json.dumps(probe().model_dump()) + "\n")
