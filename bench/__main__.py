"""Run the benchmarks: ``python -m bench [NAME ...]``.

Without names every ``bench/bench_*.py`` module's ``main()`` runs in turn;
``python -m bench models vault`` runs ``bench_models`` and ``bench_vault``.
Options after a single name go to that module (``python -m bench errands
--tier 1``). Each module prints its own markdown tables.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import time
from pathlib import Path


def available() -> list[str]:
    """Names of the benchmark modules (without the ``bench_`` prefix)."""
    here = Path(__file__).parent
    return sorted(p.stem.removeprefix("bench_") for p in here.glob("bench_*.py"))


def run(name: str, options: list[str] | None = None) -> int:
    """Run one module's ``main()``; return its status (0 when it returns None).

    ``options`` are passed to a ``main(argv)``; a ``main()`` takes none.
    """
    module = importlib.import_module(f"bench.bench_{name}")
    main = module.main
    saved = sys.argv
    sys.argv = [f"bench_{name}"]  # modules that parse sys.argv see no stray names
    try:
        if inspect.signature(main).parameters:
            result = main(list(options or []))
        elif options:
            print(f"bench_{name} takes no options; got {' '.join(options)}")
            return 2
        else:
            result = main()
    finally:
        sys.argv = saved
    return int(result or 0)


def main(argv: list[str] | None = None) -> int:
    """Run the named benchmarks, or all of them."""
    args = list(sys.argv[1:] if argv is None else argv)
    first_option = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))
    names, options = args[:first_option] or available(), args[first_option:]
    if options and len(names) != 1:
        print("options need exactly one benchmark name before them")
        return 2
    unknown = [n for n in names if n.removeprefix("bench_") not in available()]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; have: {', '.join(available())}")
        return 2
    status = 0
    for name in names:
        name = name.removeprefix("bench_")
        print(f"\n## {name}\n", flush=True)
        started = time.perf_counter()
        status |= run(name, options)
        print(f"\n({name}: {time.perf_counter() - started:.0f} s)", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
