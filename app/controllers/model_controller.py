"""Chooses, downloads and describes the model, and relays its live figures.

The model itself runs in the agent process; this controller owns the *choice*
(embedded default, a local GGUF file, a Hugging Face download) and the runtime
options (``n_ctx``, GPU layers, sinks, RoPE scaling), persisted in the app's
settings file, plus the live numbers the errand controller reports (tokens/s,
time to first token, the KV cache's sink / window / evicted counts).

File checks, hashing, downloads and the GPU probe run on a background pool.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.background import JobRunner, Progress
from app.qt import QObject, Signal, Slot
from app.services import AppServices, ServiceUnavailableError
from app.settings import PROFILE_FIELDS, ModelSettings, SettingsError, profile_key
from app.widgets.context_gauge import GaugeState
from models.interface import CancelToken

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadProgress:
    """One progress report of a download."""

    done: int
    total: int | None
    bytes_per_second: float

    @property
    def percent(self) -> int | None:
        """Whole percent done, or None when the size is unknown."""
        if not self.total:
            return None
        return min(100, int(self.done * 100 / self.total))


_GPU_PROBE = "from models.runtime import gpu_offload_supported as g; print(int(g()))"


def _probe_gpu(_: Progress) -> tuple[bool, str]:
    """Ask llama.cpp whether it can offload, in a short-lived child process.

    The model runs in the agent process; importing llama.cpp (and numpy) into
    the GUI host only to ask this would cost the host about 50 MB for good.
    """
    supported: bool | None = None
    if not getattr(sys, "frozen", False):
        try:
            done = subprocess.run(
                [sys.executable, "-I", "-c", _GPU_PROBE],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            supported = done.stdout.strip() == "1"
        except (OSError, subprocess.SubprocessError) as e:
            log.info("GPU probe in a child process failed (%s); asking in-process", e)
    if supported is None:
        try:
            from models.runtime import gpu_offload_supported

            supported = gpu_offload_supported()
        except (ImportError, OSError, AttributeError) as e:
            return False, f"cannot ask llama.cpp about GPU support: {e}"
    if supported:
        return True, "this llama.cpp build can offload layers to the GPU"
    return False, "this llama.cpp build is CPU-only: every layer runs on the CPU"


def _probe_memory(_: Progress) -> Any:
    """Free RAM and VRAM (:class:`models.devices.MachineMemory`), asked in a child process."""
    from models.devices import MachineMemory, probe

    if not getattr(sys, "frozen", False):
        try:
            done = subprocess.run(
                [sys.executable, "-I", "-m", "models.devices"],
                capture_output=True, text=True, timeout=120, check=True,
            )
            return MachineMemory.model_validate_json(done.stdout)
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            log.info("memory probe in a child process failed (%s); asking in-process", e)
    return probe()


@dataclass(frozen=True)
class CatalogRow:
    """One curated model as the Model panel shows it."""

    id: str
    name: str
    size: int
    size_estimated: bool
    fit: str
    plan: str
    installed: bool
    note: str


class ModelController(QObject):
    """The model screen's controller.

    Args:
        services: The host's services (settings and paths).
        gpu_probe: Finds out whether llama.cpp can offload to a GPU (tests pass a fake).
        memory_probe: Returns free RAM/VRAM as ``models.devices.MachineMemory`` (tests pass
            a fake).
        parent: The Qt parent.
    """

    settingsChanged = Signal(object)
    modelDescribed = Signal(str, str)
    gpuProbed = Signal(bool, str)
    downloadStarted = Signal(str)
    downloadProgressed = Signal(object)
    downloadFinished = Signal(str)
    downloadCancelled = Signal(str)
    downloadFailed = Signal(str)
    statsUpdated = Signal(object)
    contextUpdated = Signal(object)
    errorOccurred = Signal(str)
    catalogUpdated = Signal(object)
    installedUpdated = Signal(object)
    offloadPlanned = Signal(str)
    downloadNotice = Signal(str)
    modelLoaded = Signal(str)

    def __init__(
        self,
        services: AppServices,
        *,
        gpu_probe: Callable[[Progress], tuple[bool, str]] = _probe_gpu,
        memory_probe: Callable[[Progress], Any] = _probe_memory,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.services = services
        self._jobs = JobRunner(max_threads=2, parent=self)
        self._gpu_probe = gpu_probe
        self._memory_probe = memory_probe
        self.memory: Any = None
        self.catalog_rows: list[CatalogRow] = []
        self._download_cancel: CancelToken | None = None
        self._download_started = 0.0
        self._download_base = 0
        self.gpu_supported: bool | None = None
        self.last_stats: dict[str, Any] = {}
        self.loaded: dict[str, Any] = {}
        self.context = GaugeState(n_ctx=services.settings.model.n_ctx)

    @property
    def settings(self) -> ModelSettings:
        """The model settings in force."""
        return self.services.settings.model

    @property
    def downloading(self) -> bool:
        """Whether a download is running."""
        return self._download_cancel is not None

    # -- describing ------------------------------------------------------------------

    def probe_gpu(self) -> None:
        """Find out in the background whether llama.cpp can offload to a GPU.

        Separate from :meth:`refresh` because it loads llama.cpp (and numpy)
        into the host, which the first window paint should not wait for.
        """
        self._jobs.submit(
            "gpu-probe",
            self._gpu_probe,
            on_success=self._on_gpu,
            on_error=lambda e: self._on_gpu((False, f"GPU probe failed: {e}")),
        )

    def refresh(self) -> None:
        """Describe the chosen model, in the background."""
        settings = self.settings
        if settings.backend != "llama.cpp":
            self.modelDescribed.emit(*_describe_remote(settings))
            return
        path = settings.path
        self._jobs.submit(
            "describe",
            lambda _: _describe_model(path),
            on_success=lambda pair: self.modelDescribed.emit(*pair),
            on_error=lambda e: self.modelDescribed.emit("(model unavailable)", str(e)),
        )

    def _on_gpu(self, result: object) -> None:
        supported, detail = result if isinstance(result, tuple) else (False, str(result))
        self.gpu_supported = bool(supported)
        self.gpuProbed.emit(bool(supported), str(detail))

    # -- choosing --------------------------------------------------------------------

    def use_embedded(self) -> None:
        """Use the embedded default model."""
        self._apply({"path": None, "backend": "llama.cpp"})

    def use_local_file(self, path: str) -> None:
        """Check that ``path`` is a GGUF model (in the background), then use it."""
        if not path.strip():
            self.errorOccurred.emit("choose a .gguf file first")
            return

        def check(_: Progress) -> tuple[str, str, str]:
            from models import catalog

            # read_header is what local_file checks; read it once and describe from it.
            file = Path(path).expanduser()
            header = catalog.read_header(file)
            return (str(file), *_describe_header(str(file), header))

        def checked(result: object) -> None:
            assert isinstance(result, tuple)
            checked_path, name, detail = result
            if self._apply({"path": checked_path, "backend": "llama.cpp"}, describe=False):
                self.modelDescribed.emit(name, detail)

        self._jobs.submit(
            "local-file",
            check,
            on_success=checked,
            on_error=lambda e: self.errorOccurred.emit(f"Cannot use {path}: {e}"),
        )

    def apply_runtime(
        self,
        *,
        n_ctx: int,
        n_gpu_layers: int | None,
        n_sink: int,
        rope_scaling: str,
        rope_factor: float,
        n_threads: int | None = None,
    ) -> None:
        """Validate and save the runtime options (they apply to the next errand)."""
        self._apply(
            {
                "n_ctx": n_ctx,
                "n_gpu_layers": n_gpu_layers,
                "n_sink": n_sink,
                "rope_scaling": rope_scaling,
                "rope_factor": rope_factor,
                "n_threads": n_threads,
            }
        )

    def vault_secret_names(self) -> list[str]:
        """The vault's secret names, to offer as the remote API key; empty while it is locked."""
        try:
            vault = self.services.vault
        except ServiceUnavailableError:
            return []
        if vault is None or vault.is_locked:
            return []
        return sorted(vault.names())

    def use_remote(
        self, base_url: str, model_name: str, key_secret: str, *, allow_local: bool = False
    ) -> None:
        """Use a model behind an OpenAI-compatible server (checked in the background).

        Args:
            base_url: The server's API root (``https://host/v1``; ``http`` only
                for a local server, with ``allow_local``).
            model_name: The model the server serves.
            key_secret: The *name* of the vault secret holding the API key, or
                empty for a server that needs none. The key itself never
                passes through the settings.
            allow_local: Let the URL point at this machine or the LAN.
        """
        base_url, model_name, key_secret = base_url.strip(), model_name.strip(), key_secret.strip()
        if not base_url or not model_name:
            self.errorOccurred.emit("give the server's base URL and the model's name")
            return
        try:
            vault = self.services.vault
        except ServiceUnavailableError:
            vault = None
        if key_secret and vault is not None and not vault.is_locked:
            if key_secret not in vault.names():
                self.errorOccurred.emit(
                    f"the vault has no secret named {key_secret!r}; add the API key "
                    "on the Vault panel first"
                )
                return

        def check(_: Progress) -> str:
            from models.remote import check_base_url

            return check_base_url(base_url, allow_local=allow_local)

        def checked(url: object) -> None:
            changes = {
                "backend": "openai", "base_url": str(url), "remote_model": model_name,
                "remote_key_secret": key_secret or None, "allow_local_remote": allow_local,
            }
            if self._apply(changes, describe=False):
                self.modelDescribed.emit(*_describe_remote(self.settings))

        self._jobs.submit(
            "remote", check, on_success=checked,
            on_error=lambda e: self.errorOccurred.emit(f"Cannot use {base_url}: {e}"),
        )

    def _apply(self, changes: Mapping[str, Any], *, describe: bool = True) -> bool:
        merged = self.settings.model_dump() | dict(changes)
        old_key = self.settings.profile_key
        new_key = profile_key(merged["backend"], merged["path"], merged["remote_model"])
        if new_key != old_key:
            # Remember the runtime options per model: keep the old one's, restore the new one's.
            profiles = dict(merged.get("profiles") or {})
            profiles[old_key] = {k: merged[k] for k in PROFILE_FIELDS}
            restored = profiles.get(new_key)
            if restored is not None:
                merged |= {k: v for k, v in dict(restored).items() if k in PROFILE_FIELDS}
            merged["profiles"] = profiles
        try:
            new = ModelSettings.model_validate(merged)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
            )
            self.errorOccurred.emit(f"Invalid model settings: {problems}")
            return False
        old = self.services.settings.model
        self.services.settings.model = new
        try:
            self.services.save_settings()
        except SettingsError as e:
            self.services.settings.model = old
            self.errorOccurred.emit(str(e))
            return False
        self.context = GaugeState(n_ctx=new.n_ctx)
        self.settingsChanged.emit(new)
        self.contextUpdated.emit(self.context)
        if describe and (old.path, old.backend) != (new.path, new.backend):
            self.refresh()
        switched = (old.path, old.backend) != (new.path, new.backend)
        if switched or old.n_ctx != new.n_ctx or old.n_gpu_layers != new.n_gpu_layers:
            self._publish_catalog()
        if switched and self.loaded:
            self.modelLoaded.emit(
                describe_loaded(self.loaded) + " · the new choice loads with the next errand"
            )
        return True

    # -- the curated catalog -----------------------------------------------------------

    def probe_memory(self) -> None:
        """Probe free RAM/VRAM in the background, then publish the catalog with its fit."""
        self._jobs.submit(
            "memory-probe",
            self._memory_probe,
            on_success=self._on_memory,
            on_error=lambda e: self.errorOccurred.emit(f"Cannot measure free memory: {e}"),
        )

    def _on_memory(self, memory: object) -> None:
        self.memory = memory
        self._publish_catalog()

    def _publish_catalog(self) -> None:
        """Compute the catalog rows and the current model's offload plan (background)."""
        memory = self.memory
        if memory is None:
            return
        settings = self.settings
        models_dir = self.services.paths.models_dir

        def work(_: Progress) -> tuple[list[CatalogRow], list[Any], str]:
            from models import catalog, curated, fit
            from models.errors import ModelError

            cat = curated.load_curated()
            found = curated.installed(models_dir, cat)
            files = {m.path.name for m in found}
            rows = [
                CatalogRow(
                    id=e.id, name=e.name, size=e.download_size, size_estimated=e.size_estimated,
                    fit=a.fit.value, plan=a.plan.describe(), installed=e.file in files,
                    note=e.note,
                )
                for e, a in curated.iter_assessments(
                    cat, n_ctx=settings.n_ctx, ram_available=memory.ram_available,
                    vram_available=memory.vram_free,
                )
            ]
            if settings.backend != "llama.cpp":
                return rows, found, "Offload: none here; the model runs on its server"
            path = Path(settings.path) if settings.path else catalog.embedded_default().path
            try:
                shape = fit.shape_from_header(catalog.read_header(path))
            except fit.FitError:
                return rows, found, "Offload: unknown for this architecture"
            except ModelError as e:
                return rows, found, f"Offload: cannot read the model ({e})"
            vram = memory.vram_free
            if settings.n_gpu_layers is not None and vram is not None:
                n = settings.n_gpu_layers if settings.n_gpu_layers >= 0 else shape.n_layer + 1
                plan = fit.OffloadPlan(
                    n_layer=shape.n_layer, n_gpu_layers=n,
                    vram_bytes=fit.vram_needed(shape, settings.n_ctx, n),
                    ram_bytes=fit.ram_needed(shape, settings.n_ctx, n),
                )
                how = "manual"
            else:
                plan = fit.plan_offload(shape, n_ctx=settings.n_ctx, vram_free=vram)
                how = "automatic"
            verdict = fit.verdict(plan.ram_bytes, memory.ram_available).value
            return rows, found, f"Offload ({how}): {plan.describe()} · {verdict}"

        def done(result: object) -> None:
            assert isinstance(result, tuple)
            rows, found, plan = result
            self.catalog_rows = rows
            self.catalogUpdated.emit(rows)
            self.installedUpdated.emit(found)
            self.offloadPlanned.emit(plan)

        self._jobs.submit(
            "catalog", work, on_success=done,
            on_error=lambda e: self.errorOccurred.emit(f"Cannot read the model catalog: {e}"),
        )

    def download_catalog(self, model_id: str) -> None:
        """Download a curated model (resumable, verified) and switch to it."""
        if self.downloading:
            self.errorOccurred.emit("a download is already running")
            return
        cancel = self._new_download()
        dest = self.services.paths.models_dir

        def fetch(report: Progress) -> str:
            from models import curated

            entry = curated.load_curated().get(model_id)
            result = curated.pull(
                entry, dest, progress=lambda done, total: report((done, total)), cancel=cancel
            )
            if result.trust == "first-use":
                report(
                    f"No published sha256 for {entry.file}: the download's sha256 "
                    f"{result.sha256} is now pinned; a later download that differs is refused."
                )
            return str(result.model.path)

        def progressed(value: object) -> None:
            if isinstance(value, str):
                self.downloadNotice.emit(value)
            else:
                self._download_progress(value)

        self._submit_download(model_id, fetch, progressed)

    def remove_installed(self, filename: str) -> None:
        """Delete an installed model; the embedded default takes over if it was in use."""
        models_dir = self.services.paths.models_dir

        def work(_: Progress) -> str:
            from models import curated

            return str(curated.remove(models_dir, curated.load_curated(), filename).path)

        def removed(path: object) -> None:
            if self.settings.path == str(path):
                self.use_embedded()
            else:
                self._publish_catalog()

        self._jobs.submit(
            "remove", work, on_success=removed,
            on_error=lambda e: self.errorOccurred.emit(f"Cannot remove {filename}: {e}"),
        )

    def use_installed(self, path: str) -> None:
        """Use an installed model file."""
        self.use_local_file(path)

    # -- downloading -----------------------------------------------------------------

    def start_download(self, repo_id: str, filename: str, sha256: str = "") -> None:
        """Download a GGUF file from Hugging Face into the models dir (resumable)."""
        repo_id, filename, sha256 = repo_id.strip(), filename.strip(), sha256.strip().lower()
        if self.downloading:
            self.errorOccurred.emit("a download is already running")
            return
        if "/" not in repo_id or not filename.endswith(".gguf"):
            self.downloadFailed.emit(
                "give the repository as owner/name and a file name ending in .gguf"
            )
            return
        cancel = self._new_download()
        dest = self.services.paths.models_dir

        def fetch(report: Progress) -> str:
            from models import catalog

            model = catalog.download(
                repo_id,
                filename,
                dest_dir=dest,
                progress=lambda done, total: report((done, total)),
                sha256=sha256 or None,
                cancel=cancel,
            )
            return str(model.path)

        self._submit_download(f"{repo_id}/{filename}", fetch, self._download_progress)

    def _new_download(self) -> CancelToken:
        """The cancel token of the download about to start; its speed counts from now."""
        cancel = CancelToken()
        self._download_cancel = cancel
        self._download_started = time.monotonic()
        self._download_base = -1
        return cancel

    def _submit_download(
        self, label: str, fetch: Callable[[Progress], str], progressed: Callable[[object], None]
    ) -> None:
        self.downloadStarted.emit(label)
        self._jobs.submit(
            "download",
            fetch,
            on_success=self._download_done,
            on_error=self._download_error,
            on_progress=progressed,
        )

    def cancel_download(self) -> None:
        """Stop the download; the partial file stays so the next start resumes."""
        if self._download_cancel is not None:
            self._download_cancel.cancel()

    def _download_progress(self, value: object) -> None:
        done, total = value if isinstance(value, tuple) else (0, None)
        if self._download_base < 0:  # the first report says where a resume started
            self._download_base = int(done)
        elapsed = max(1e-6, time.monotonic() - self._download_started)
        speed = max(0, int(done) - self._download_base) / elapsed
        self.downloadProgressed.emit(DownloadProgress(int(done), total, speed))

    def _download_done(self, path: object) -> None:
        self._download_cancel = None
        self.downloadFinished.emit(str(path))
        self._apply({"path": str(path), "backend": "llama.cpp"})

    def _download_error(self, error: BaseException) -> None:
        self._download_cancel = None
        from models.errors import DownloadCancelledError

        if isinstance(error, DownloadCancelledError):
            self.downloadCancelled.emit("Download cancelled; start it again to resume.")
        else:
            self.downloadFailed.emit(f"Download failed: {error}")

    # -- live figures (from the errand controller) -----------------------------------

    @Slot(object)
    def update_stats(self, stats: object) -> None:
        """Take a generation's stats (tokens/s, time to first token, evictions)."""
        if not isinstance(stats, Mapping):
            return
        self.last_stats = dict(stats)
        self.statsUpdated.emit(self.last_stats)
        evicted = stats.get("n_evicted")
        if isinstance(evicted, int) and evicted > self.context.n_evicted:
            self._set_context({"n_evicted": evicted, "n_shifts": stats.get("n_shifts", 0)})

    @Slot(object)
    def update_loaded(self, info: object) -> None:
        """Take the loaded model's description (``models.interface.ModelInfo`` or its fields)."""
        fields = info.model_dump() if hasattr(info, "model_dump") else info
        if isinstance(fields, Mapping):
            self.loaded = dict(fields)
            self.modelLoaded.emit(describe_loaded(self.loaded))

    @Slot(object)
    def update_context(self, state: object) -> None:
        """Take what the KV cache holds (``ContextState`` fields)."""
        if isinstance(state, Mapping):
            self._set_context(state)
        elif hasattr(state, "model_dump"):
            self._set_context(state.model_dump())

    def _set_context(self, fields: Mapping[str, Any]) -> None:
        known = {k: fields[k] for k in GaugeState.__dataclass_fields__ if k in fields}
        current = self.context.__dict__ | known
        self.context = GaugeState(**current)
        self.contextUpdated.emit(self.context)

    def shutdown(self, timeout_ms: int = 10_000) -> bool:
        """Cancel a download and wait for background work."""
        self.cancel_download()
        return self._jobs.wait(timeout_ms)


def describe_loaded(info: Mapping[str, Any]) -> str:
    """One line on the model as it was loaded: where its layers really are.

    Args:
        info: ``models.interface.ModelInfo`` fields, from the loaded model.
    """
    name = str(info.get("name") or "the model")
    if info.get("backend") != "llama.cpp":
        return f"Loaded: {name} (runs on its server; nothing offloaded here)"
    on_gpu = int(info.get("n_layers_offloaded") or 0)
    total = info.get("n_layers")
    of = f" of {total}" if isinstance(total, int) else ""
    text = f"Loaded: {name} · {on_gpu}{of} layers on the GPU"
    if not info.get("gpu_offload_supported"):
        return text + " (this llama.cpp build is CPU-only)"
    return text


def _describe_remote(settings: ModelSettings) -> tuple[str, str]:
    key = (
        f"API key: vault secret {settings.remote_key_secret!r}"
        if settings.remote_key_secret else "no API key"
    )
    return (
        settings.remote_model or "unnamed model",
        f"{settings.backend} server · {settings.base_url or '(no URL)'} · {key}",
    )


def _describe_model(path: str | None) -> tuple[str, str]:
    from models import catalog

    if path is None:
        model = catalog.embedded_default()
        return model.name, f"embedded default · {model.path.name} · {model.size / 1e6:.0f} MB"
    return _describe_header(path, catalog.read_header(Path(path)))


def _describe_header(path: str, header: Any) -> tuple[str, str]:
    parts = [header.architecture, f"{header.file_size / 1e6:.0f} MB"]
    if header.n_ctx_train:
        parts.append(f"trained context {header.n_ctx_train:,}")
    return header.name or Path(path).stem, f"{path} · " + " · ".join(parts)
