"""Vault file benchmarks, measured side by side in one run.

1. Unlock time per Argon2id setting (passphrase mode) against the default,
   and keyring-mode unlock (no KDF) for scale; plus what calibration picks here.
   CPU time is the figure that matters (an attacker's cost per guess, and the
   wall time on an idle machine: the derivation is single-threaded); wall time
   on the shared box is inflated by other load.
2. Save latency (update one secret: encrypt, HMAC, temp file, fsync, rename,
   fsync dir) against the durability floor alone (writing the same bytes with
   the same fsync/rename dance), by number of records.
3. ``get`` latency (one AES-GCM decryption into a bytearray) by record count.

    .venv/bin/python bench/bench_vault.py
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vault._crypto import Argon2Params
from vault.keystore import DEFAULT_ARGON2, NoKeyring, calibrate_argon2
from vault.store import Vault, _atomic_write

PASS = "benchmark passphrase"
FAST = Argon2Params(iterations=1, lanes=1, memory_kib=8)


class _MemoryKeyring:
    def __init__(self) -> None:
        self.items: dict[tuple[bytes, str], bytes] = {}

    def available(self) -> bool:
        return True

    def get(self, vault_id: bytes, item: str) -> bytearray | None:
        v = self.items.get((vault_id, item))
        return None if v is None else bytearray(v)

    def set(self, vault_id: bytes, item: str, value: bytes | bytearray) -> None:
        self.items[(vault_id, item)] = bytes(value)

    def delete(self, vault_id: bytes, item: str) -> None:
        self.items.pop((vault_id, item), None)


def _p50(fn: Callable[[], object], repeats: int) -> float:
    return _p50_wall_cpu(fn, repeats)[0]


def _p50_wall_cpu(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def bench_unlock(tmp: Path) -> list[str]:
    settings = [
        Argon2Params(1, 4, 64 * 1024),
        Argon2Params(3, 4, 64 * 1024),
        DEFAULT_ARGON2,
        Argon2Params(2, 4, 256 * 1024),
        Argon2Params(3, 4, 256 * 1024),
    ]
    rows = []
    results = {}
    for params in settings:
        path = tmp / f"unlock-{params.iterations}-{params.memory_kib}.kls"
        Vault.create(path, passphrase=PASS, use_keyring=False, keystore=NoKeyring(), kdf=params)
        v = Vault.open(path, keystore=NoKeyring())
        results[params] = _p50_wall_cpu(lambda v=v: v.unlock(PASS), 3)
    ring = _MemoryKeyring()
    kpath = tmp / "keyring.kls"
    Vault.create(kpath, use_keyring=True, keystore=ring)
    kv = Vault.open(kpath, keystore=ring)
    keyring_wall, keyring_cpu = _p50_wall_cpu(lambda: kv.unlock(), 20)
    base = results[DEFAULT_ARGON2][1]
    rows.append("| unlock method | Argon2id t / m / p | p50 CPU | p50 wall | CPU vs default |")
    rows.append("|---|---|---:|---:|---:|")
    for params, (wall, cpu) in results.items():
        mark = " (default)" if params == DEFAULT_ARGON2 else ""
        rows.append(
            f"| passphrase{mark} | {params.iterations} / {params.memory_kib // 1024} MiB / "
            f"{params.lanes} | {cpu * 1000:.0f} ms | {wall * 1000:.0f} ms | {cpu / base:.2f}x |"
        )
    rows.append(
        f"| keyring (in-process store, no KDF) | - | {keyring_cpu * 1000:.2f} ms | "
        f"{keyring_wall * 1000:.2f} ms | {keyring_cpu / base:.4f}x |"
    )
    calibrated = calibrate_argon2(0.5)
    rows.append("")
    rows.append(
        f"`calibrate_argon2(0.5)` here: t={calibrated.iterations}, "
        f"m={calibrated.memory_kib // 1024} MiB, p={calibrated.lanes}"
    )
    return rows


def bench_save_and_get(tmp: Path) -> list[str]:
    rows = [
        "| records | save (update 1) p50 | write+fsync+rename of same bytes p50 | ratio "
        "| get p50 |",
        "|---:|---:|---:|---:|---:|",
    ]
    for count in (1, 10, 100, 1000):
        path = tmp / f"save-{count}.kls"
        v = Vault.create(
            path, passphrase=PASS, use_keyring=False, keystore=NoKeyring(), kdf=FAST,
            idle_timeout=None,
        )
        for i in range(count):
            v.add(f"secret-{i}", os.urandom(48))

        def save(v: Vault = v) -> None:
            v.update("secret-0", os.urandom(48))

        repeats = 20 if count < 1000 else 5
        t_save = _p50(save, repeats)
        raw = path.read_bytes()
        floor_path = tmp / f"floor-{count}.bin"
        t_floor = _p50(lambda raw=raw, p=floor_path: _atomic_write(p, raw), repeats)
        t_get = _p50(lambda v=v: v.get("secret-0"), 200)
        rows.append(
            f"| {count} | {t_save * 1000:.2f} ms | {t_floor * 1000:.2f} ms | "
            f"{t_save / t_floor:.2f}x | {t_get * 1e6:.0f} µs |"
        )
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print("### Unlock time per key derivation setting\n")
        print("\n".join(bench_unlock(tmp)))
        print("\n### Save and get latency by vault size\n")
        print("\n".join(bench_save_and_get(tmp)))


if __name__ == "__main__":
    main()
