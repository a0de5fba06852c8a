"""The curated catalog: recommended models, what they need, pull, list, remove.

``models/curated.json`` lists instruction-tuned GGUF models that handle tool
calls, at several sizes, each with its Hugging Face repository and file,
quantization, size, sha256, trained context, chat template family and
architecture facts (layers, KV heads, head size) from which :mod:`models.fit`
estimates the RAM/VRAM it needs. The file is versioned and validated by
:class:`Curated` when loaded.

Digests: an entry's ``sha256`` is one found published (the source is in the
entry). Where none could be found it is ``null``, and the first download is
*trusted on first use*: its sha256 is shown to the user and pinned in
``pins.json`` in the models directory; every later download of that entry
must match the pin or is refused and deleted (:class:`PinMismatchError`).
Sizes work the same way: ``size`` null means the fit is estimated from the
parameter count and the quantization's bits per weight until the file is here,
when the GGUF header gives the exact figures.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models import catalog, fit
from models.catalog import ModelFile, ProgressCallback
from models.errors import CatalogError, DownloadChecksumError, ModelError, PinMismatchError
from models.interface import CancelToken

CURATED_FILE = Path(__file__).with_name("curated.json")
PINS_FILE = "pins.json"
SUPPORTED_VERSION = 1

_SHA256 = r"^[0-9a-f]{64}$"


class CuratedModel(BaseModel):
    """One recommended model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$", description="Short name for the CLI.")
    name: str = Field(min_length=1, description="Display name.")
    repo: str = Field(pattern=r"^[\w.\-]+/[\w.\-]+$", description="Hugging Face owner/name.")
    file: str = Field(pattern=r"^[\w.\-]+\.gguf$", description="The GGUF file in the repo.")
    quantization: str = Field(description="llama.cpp quantization, e.g. Q4_K_M.")
    params_b: float = Field(gt=0, lt=1000, description="Parameters, in billions.")
    size: int | None = Field(default=None, gt=0, description="File size in bytes; None: unknown.")
    sha256: str | None = Field(
        default=None, pattern=_SHA256, description="Published sha256; None: pinned on first use."
    )
    source: str = Field(pattern=r"^https://", description="Where size and sha256 were read.")
    provenance: str = Field(min_length=1, description="How size and sha256 were obtained.")
    n_ctx_train: int = Field(gt=0)
    template: Literal["chatml", "llama3", "gemma"]
    n_layer: int = Field(gt=0)
    n_embd: int = Field(gt=0)
    n_head: int = Field(gt=0)
    n_head_kv: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    n_vocab: int = Field(gt=0)
    ram_mib: int = Field(gt=0, description="RAM needed on the CPU alone at the catalog's n_ctx.")
    vram_mib: int = Field(gt=0, description="VRAM for a full offload at the catalog's n_ctx.")
    license: str
    note: str = ""

    @model_validator(mode="after")
    def _heads_divide(self) -> CuratedModel:
        if self.n_head % self.n_head_kv:
            raise ValueError(f"n_head {self.n_head} is not a multiple of n_head_kv")
        return self

    @property
    def size_estimated(self) -> bool:
        """Whether :attr:`download_size` is an estimate."""
        return self.size is None

    @property
    def download_size(self) -> int:
        """The published size, else params × the quantization's bits per weight."""
        if self.size is not None:
            return self.size
        return fit.estimate_size(self.params_b * 1e9, self.quantization)

    def shape(self) -> fit.ModelShape:
        """The memory shape, estimated from the catalog facts."""
        return fit.estimate_shape(
            file_size=self.download_size,
            n_layer=self.n_layer,
            n_embd=self.n_embd,
            n_head=self.n_head,
            n_head_kv=self.n_head_kv,
            head_dim=self.head_dim,
            n_vocab=self.n_vocab,
        )


class Curated(BaseModel):
    """The catalog file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int
    about: str = ""
    n_ctx: int = Field(gt=0, description="The context the RAM/VRAM figures are for.")
    models: tuple[CuratedModel, ...]

    @model_validator(mode="after")
    def _check(self) -> Curated:
        if self.version != SUPPORTED_VERSION:
            raise ValueError(f"catalog version {self.version} (this Keyless reads version 1)")
        ids = [m.id for m in self.models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate model ids: {', '.join(dupes)}")
        return self

    def get(self, name: str) -> CuratedModel:
        """Find an entry by id or file name.

        Raises:
            CatalogError: No entry has that name.
        """
        for m in self.models:
            if name in (m.id, m.file):
                return m
        known = ", ".join(m.id for m in self.models)
        raise CatalogError(f"no model {name!r} in the catalog (known: {known})")

    def for_file(self, filename: str) -> CuratedModel | None:
        """The entry whose file this is, if any."""
        return next((m for m in self.models if m.file == filename), None)


def load_curated(path: Path | None = None) -> Curated:
    """Read and validate the catalog (default: the shipped ``curated.json``).

    Raises:
        CatalogError: The file is missing, not JSON or not a valid catalog.
    """
    path = path or CURATED_FILE
    try:
        return Curated.model_validate_json(path.read_bytes())
    except OSError as e:
        raise CatalogError(f"cannot read the model catalog {path}: {e.strerror or e}") from e
    except ValidationError as e:
        raise CatalogError(f"the model catalog {path} is invalid: {e}") from e


# -- what is installed --------------------------------------------------------------------


class InstalledModel(BaseModel):
    """A GGUF file in the models directory."""

    model_config = ConfigDict(frozen=True)

    path: Path
    size: int
    entry: CuratedModel | None = None

    @property
    def name(self) -> str:
        """The catalog name, else the file name."""
        return self.entry.name if self.entry else self.path.name


def installed(models_dir: Path, curated: Curated) -> list[InstalledModel]:
    """List the GGUF files in ``models_dir`` (partial downloads excluded)."""
    if not models_dir.is_dir():
        return []
    found = []
    for path in sorted(models_dir.glob("*.gguf")):
        with contextlib.suppress(OSError):
            found.append(
                InstalledModel(
                    path=path, size=path.stat().st_size, entry=curated.for_file(path.name)
                )
            )
    return found


def find_installed(models_dir: Path, curated: Curated, name: str) -> InstalledModel:
    """Find an installed model by catalog id, catalog name or file name.

    Raises:
        CatalogError: Nothing installed has that name.
    """
    for m in installed(models_dir, curated):
        if name in (m.path.name, m.path.stem) or (
            m.entry is not None and name in (m.entry.id, m.entry.name)
        ):
            return m
    raise CatalogError(f"no installed model {name!r} in {models_dir}")


def remove(models_dir: Path, curated: Curated, name: str) -> InstalledModel:
    """Delete an installed model and its partial downloads.

    The pin (if any) stays, so a later download is still checked against it.

    Raises:
        CatalogError: Nothing installed has that name, or it cannot be deleted.
    """
    model = find_installed(models_dir, curated, name)
    try:
        model.path.unlink()
        for part in models_dir.glob(f"{model.path.name}.*.part"):
            part.unlink()
    except OSError as e:
        raise CatalogError(f"cannot remove {model.path}: {e.strerror or e}") from e
    return model


# -- pins (trust on first use) ----------------------------------------------------------


def read_pins(models_dir: Path) -> dict[str, str]:
    """The sha256 pinned per catalog id (an unreadable pins file is an error).

    Raises:
        CatalogError: The pins file exists but cannot be read or parsed.
    """
    file = models_dir / PINS_FILE
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        # Failing closed: a damaged pins file must not silently re-trust.
        raise CatalogError(f"the pinned digests {file} cannot be read: {e}") from e
    if not isinstance(raw, dict):
        raise CatalogError(f"the pinned digests {file} are not a JSON object")
    return {k: v["sha256"] for k, v in raw.items() if isinstance(v, dict) and "sha256" in v}


def _write_pin(models_dir: Path, entry: CuratedModel, sha256: str, size: int) -> None:
    file = models_dir / PINS_FILE
    try:
        raw = json.loads(file.read_text(encoding="utf-8")) if file.exists() else {}
    except (OSError, ValueError) as e:
        raise CatalogError(f"the pinned digests {file} cannot be read: {e}") from e
    raw[entry.id] = {
        "sha256": sha256,
        "size": size,
        "repo": entry.repo,
        "file": entry.file,
        "pinned_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    tmp = file.with_name(file.name + ".tmp")
    try:
        tmp.write_text(json.dumps(raw, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, file)
    except OSError as e:
        raise CatalogError(f"cannot pin the digest in {file}: {e.strerror or e}") from e


class PullResult(BaseModel):
    """What :func:`pull` did."""

    model_config = ConfigDict(frozen=True)

    model: ModelFile
    sha256: str
    trust: Literal["published", "pinned", "first-use"]
    already_installed: bool = False


def pull(
    entry: CuratedModel,
    models_dir: Path,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    endpoint: str | None = None,
) -> PullResult:
    """Download a catalog model (resumable, verified) into ``models_dir``.

    The expected digest is the published one, else the one pinned by an
    earlier download; without either the download's own digest is pinned
    (``trust == "first-use"``, which callers show the user).

    Raises:
        DownloadError: Network failure or the hub lacks the file.
        DownloadCancelledError: ``cancel`` was set; the partial file stays.
        DownloadChecksumError: The file does not match the published digest.
        PinMismatchError: The file does not match the pinned digest.
        CatalogError: The pins file cannot be read or written.
        ModelFileError: The file is not a valid GGUF model.
    """
    pins = read_pins(models_dir)
    pinned = pins.get(entry.id)
    expected = entry.sha256 or pinned
    trust: Literal["published", "pinned", "first-use"] = (
        "published" if entry.sha256 else "pinned" if pinned else "first-use"
    )
    final = models_dir / entry.file
    if expected and final.is_file():
        try:
            catalog.verify(
                ModelFile(name=entry.name, path=final, sha256=expected, size=final.stat().st_size)
            )
        except ModelError:
            pass  # damaged or foreign: download it again below
        else:
            model = ModelFile(
                name=entry.name, path=final, sha256=expected, size=final.stat().st_size
            )
            return PullResult(model=model, sha256=expected, trust=trust, already_installed=True)
    try:
        model = catalog.download(
            entry.repo,
            entry.file,
            dest_dir=models_dir,
            progress=progress,
            sha256=expected,
            cancel=cancel,
            endpoint=endpoint,
        )
    except PinMismatchError:
        raise
    except DownloadChecksumError as e:
        if trust == "pinned":
            raise PinMismatchError(
                f"{entry.file} differs from the sha256 pinned at its first download "
                f"({expected}); the download was deleted. {e}"
            ) from e
        raise
    digest = model.sha256 or catalog.sha256_file(model.path, cancel=cancel)
    if trust == "first-use":
        _write_pin(models_dir, entry, digest, model.size)
    return PullResult(
        model=model.model_copy(update={"name": entry.name, "sha256": digest}),
        sha256=digest,
        trust=trust,
    )


def iter_assessments(
    curated: Curated, *, n_ctx: int, ram_available: int, vram_available: int | None
) -> Iterator[tuple[CuratedModel, fit.Assessment]]:
    """Each entry with its offload plan and fit on this machine."""
    for entry in curated.models:
        yield (
            entry,
            fit.assess(
                entry.shape(),
                n_ctx=n_ctx,
                ram_available=ram_available,
                vram_available=vram_available,
            ),
        )
