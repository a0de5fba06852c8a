"""The credential scanner on tool results: its cost per MB, and its false positives.

1. Throughput of :func:`vault.secretscan.withhold` over a few MB of mixed tool
   output (this repository's source as files, ``ls -l``/``git log``-like shell
   output, JSON HTTP bodies), against a plain ``str.split``/``join`` of the
   same text.
2. False positives: every ``.py`` and ``.md`` file of this repository is
   scanned as ``read_file`` would deliver it; each line withheld is listed.
   The repository holds no real credential, so every finding is a false
   positive (the fixed test tokens in ``tests/`` count too: they are meant to
   look real).

    .venv/bin/python bench/bench_secretscan.py   (or: .venv/bin/python -m bench secretscan)
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from vault.secretscan import withhold

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
SOURCES = ("agent", "app", "bench", "docs", "memory", "models", "tests", "vault", "scripts")


def _repo_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in SOURCES:
        files += sorted((ROOT / top).rglob("*.py")) + sorted((ROOT / top).rglob("*.md"))
    return [f for f in files if f.is_file() and ".venv" not in f.parts]


def _mixed_output(size: int) -> str:
    rng = random.Random(7)
    parts: list[str] = []
    total = 0
    sources = [p.read_text(errors="replace") for p in _repo_files()]
    while total < size:
        pick = rng.random()
        if pick < 0.5:
            text = rng.choice(sources)
        elif pick < 0.75:
            text = "\n".join(
                f"-rw-r--r-- 1 user user {rng.randint(10, 99999):>6} Nov 27 06:{i % 60:02d} "
                f"file_{rng.getrandbits(32):08x}.txt"
                for i in range(200)
            )
        else:
            body = [
                {
                    "id": rng.getrandbits(48),
                    "name": f"item {i}",
                    "sha": f"{rng.getrandbits(160):040x}",
                }
                for i in range(100)
            ]
            text = json.dumps({"items": body}, indent=2)
        parts.append(text)
        total += len(text)
    return "\n".join(parts)


def throughput(size: int = 4 * MB) -> None:
    """Print MB/s of the scanner and of a plain copy over ``size`` bytes of output."""
    text = _mixed_output(size)
    withhold("warm up\nSECRET=abc", source="warm")
    t0 = time.perf_counter()
    "\n".join(text.split("\n"))
    plain = time.perf_counter() - t0
    # Tool results arrive one at a time, at most a read limit each: scan in 64 KiB pieces.
    chunk = 64 * 1024
    t0 = time.perf_counter()
    found = 0
    for at in range(0, len(text), chunk):
        found += len(withhold(text[at : at + chunk], source="bench")[1])
    scan = time.perf_counter() - t0
    mb = len(text.encode()) / MB
    print("| what | MB | seconds | MB/s | ms per 16 KiB result |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| plain split/join | {mb:.1f} | {plain:.3f} | {mb / plain:.0f} "
        f"| {plain / mb / 64 * 1e3:.3f} |"
    )
    print(f"| withhold() | {mb:.1f} | {scan:.2f} | {mb / scan:.2f} | {scan / mb / 64 * 1e3:.2f} |")
    print(f"\n(findings in the mixed output: {found})")


def false_positives() -> int:
    """Scan this repository's .py/.md files; list and count every line withheld."""
    files = _repo_files()
    lines = 0
    found: list[str] = []
    for path in files:
        text = path.read_text(errors="replace")
        lines += text.count("\n") + 1
        rel = path.relative_to(ROOT).as_posix()
        for f in withhold(text, source=rel)[1]:
            found.append(f"{f.location} ({f.kind})")
    print(f"\n{len(files)} files, {lines} lines scanned; {len(found)} lines withheld:\n")
    for item in found:
        print(f"- {item}")
    return len(found)


def main() -> None:
    """Run both measurements."""
    throughput()
    false_positives()


if __name__ == "__main__":
    main()
