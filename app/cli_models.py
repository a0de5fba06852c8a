"""``keyless models``: the curated catalog, downloads and installed models from a terminal.

Subcommands: ``list`` (the catalog with sizes and whether each fits this
machine, then what is installed), ``pull NAME`` (download with a progress bar,
resumable, verified; Ctrl-C keeps the partial file), ``rm NAME``, ``use NAME``
(make it the app's model) and ``info FILE`` (what a GGUF file holds and what it
needs here). The memory probe runs llama.cpp in a child process, as the
desktop app does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.cli_common import CliError, ExitStatus, n_ctx, set_command
from app.paths import AppPaths, default_paths
from app.settings import SettingsError, load_settings, save_settings
from models.errors import ModelError


def register(subparsers: Any) -> None:
    """Add the ``models`` command group to the ``keyless`` parser."""
    parser = subparsers.add_parser(
        "models", help="list, download, remove and choose models",
        description="The curated model catalog and the models installed on this machine.",
    )
    commands = parser.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    listing = commands.add_parser("list", help="the catalog (with fit) and installed models")
    listing.add_argument("--n-ctx", type=n_ctx, help="context to size for (default: settings)")
    _set_command(listing, _list)
    pull = commands.add_parser("pull", help="download a catalog model")
    pull.add_argument("name", help="catalog id (see `keyless models list`)")
    pull.add_argument("--use", action="store_true", help="use it once downloaded")
    _set_command(pull, _pull)
    rm = commands.add_parser("rm", help="delete an installed model")
    rm.add_argument("name", help="catalog id or file name")
    _set_command(rm, _rm)
    use = commands.add_parser("use", help="make an installed model (or 'embedded') the app's")
    use.add_argument("name", help="catalog id, file name, a .gguf path, or 'embedded'")
    _set_command(use, _use)
    info = commands.add_parser("info", help="what a GGUF file holds and needs")
    info.add_argument("file", type=Path)
    info.add_argument("--n-ctx", type=n_ctx, help="context to size for (default: settings)")
    _set_command(info, _info)


def _set_command(
    parser: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], int]
) -> None:
    set_command(parser, handler, converts=(ModelError, SettingsError))


def _paths() -> AppPaths:
    return default_paths()


def probe_memory() -> Any:
    """Probe free RAM and VRAM in a child process (llama.cpp stays out of this one)."""
    from models.devices import MachineMemory, probe

    try:
        done = subprocess.run(
            [sys.executable, "-m", "models.devices"],
            capture_output=True, text=True, timeout=120, check=True,
        )
        return MachineMemory.model_validate(json.loads(done.stdout))
    except (OSError, subprocess.SubprocessError, ValueError):
        return probe()


def _gib(n: int) -> str:
    if n < 2**30:
        return f"{n / 2**20:.0f} MiB"
    return f"{n / 2**30:.1f} GiB"


def _list(args: argparse.Namespace) -> int:
    from models import curated

    paths = _paths()
    settings = load_settings(paths)
    cat = curated.load_curated()
    n_ctx = args.n_ctx or settings.model.n_ctx
    mem = probe_memory()
    print(f"This machine: {_gib(mem.ram_available)} RAM free; {mem.detail}")
    print(f"Catalog v{cat.version}, sized for n_ctx {n_ctx}:")
    installed = {m.path.name for m in curated.installed(paths.models_dir, cat)}
    rows = curated.iter_assessments(
        cat, n_ctx=n_ctx, ram_available=mem.ram_available, vram_available=mem.vram_free
    )
    for entry, a in rows:
        size = _gib(entry.download_size) + (" (est.)" if entry.size_estimated else "")
        mark = "*" if entry.file in installed else " "
        print(
            f" {mark} {entry.id:<14} {entry.name:<24} {size:>16}  {a.fit.value:<8} "
            f"{a.plan.describe()}"
        )
    print("   (* installed)  pull one with: keyless models pull NAME")
    print("Installed:")
    found = curated.installed(paths.models_dir, cat)
    if not found:
        print("   none (the app uses its embedded 135M demo model)")
    for m in found:
        current = " (in use)" if settings.model.path == str(m.path) else ""
        print(f"   {m.path.name:<40} {_gib(m.size):>9}{current}")
    return ExitStatus.OK


def _pull(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from models import curated
    from models.errors import DownloadCancelledError
    from models.interface import CancelToken

    paths = _paths()
    cat = curated.load_curated()
    entry = cat.get(args.name)
    cancel = CancelToken()
    with tqdm(
        total=entry.download_size, unit="B", unit_scale=True, unit_divisor=1024,
        desc=entry.file, file=sys.stderr, disable=None,
    ) as bar:

        def progress(done: int, total: int | None) -> None:
            if total is not None and bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        try:
            result = curated.pull(entry, paths.models_dir, progress=progress, cancel=cancel)
        except KeyboardInterrupt:
            raise CliError(
                "download interrupted; run the same command again to resume"
            ) from None
        except DownloadCancelledError as e:
            raise CliError(str(e)) from e
    if result.already_installed:
        print(f"{entry.name} is already installed and verified: {result.model.path}")
    else:
        print(f"Downloaded {entry.name} to {result.model.path}")
    if result.trust == "first-use":
        print(
            f"No published sha256 for this file: its sha256 {result.sha256} is now pinned;\n"
            "a later download that differs will be refused."
        )
    else:
        print(f"sha256 {result.sha256} ({result.trust})")
    if args.use:
        _set_model(paths, str(result.model.path))
    return ExitStatus.OK


def _rm(args: argparse.Namespace) -> int:
    from models import curated

    paths = _paths()
    removed = curated.remove(paths.models_dir, curated.load_curated(), args.name)
    settings = load_settings(paths)
    print(f"Removed {removed.path} ({_gib(removed.size)})")
    if settings.model.path == str(removed.path):
        _set_model(paths, None)
    return ExitStatus.OK


def _use(args: argparse.Namespace) -> int:
    from models import catalog, curated

    paths = _paths()
    if args.name == "embedded":
        _set_model(paths, None)
        return ExitStatus.OK
    candidate = Path(args.name).expanduser()
    if candidate.suffix == ".gguf" and candidate.is_file():
        path = candidate.resolve()
    else:
        path = curated.find_installed(paths.models_dir, curated.load_curated(), args.name).path
    catalog.read_header(path)
    _set_model(paths, str(path))
    return ExitStatus.OK


def _set_model(paths: AppPaths, path: str | None) -> None:
    settings = load_settings(paths)
    settings.model = settings.model.model_copy(update={"path": path, "backend": "llama.cpp"})
    save_settings(paths, settings)
    print(f"The app now uses {path or 'the embedded demo model'}.")


def _info(args: argparse.Namespace) -> int:
    from models import catalog, fit

    paths = _paths()
    header = catalog.read_header(args.file.expanduser())
    n_ctx = args.n_ctx or load_settings(paths).model.n_ctx
    print(f"{header.name or args.file.name}: {header.architecture}, {_gib(header.file_size)}, "
          f"{header.n_tensors} tensors")
    if header.n_ctx_train:
        print(f"  trained context {header.n_ctx_train:,}")
    print(f"  chat template: {'yes' if header.chat_template else 'none (ChatML is used)'}")
    shape = fit.shape_from_header(header)
    print(
        f"  {shape.n_layer} layers, n_embd {shape.n_embd}, {shape.n_head} heads "
        f"({shape.n_head_kv} KV), head size {shape.head_dim_k}"
    )
    kv = fit.kv_bytes_per_layer(shape, n_ctx) * shape.n_layer
    print(f"  KV cache at n_ctx {n_ctx}: {_gib(kv)} (f16)")
    mem = probe_memory()
    a = fit.assess(
        shape, n_ctx=n_ctx, ram_available=mem.ram_available, vram_available=mem.vram_free
    )
    print(f"  on this machine: {a.fit.value} · {a.plan.describe()} · "
          f"{_gib(mem.ram_available)} RAM free")
    return ExitStatus.OK
