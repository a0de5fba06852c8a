"""The app's own settings file (JSON in the config dir).

Window geometry lives in QSettings; everything a user chooses about the model,
memory capacities and workspaces lives here, validated by pydantic so a broken
or hand-edited file gives a clear error instead of a crash.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.paths import AppPaths
from models.eviction import EvictionMode

#: A vault secret's name as the settings may name it (never a key's value).
SECRET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"


class SettingsError(Exception):
    """The settings file could not be read or written."""


class ModelProfile(BaseModel):
    """The runtime options remembered for one model file."""

    model_config = ConfigDict(extra="ignore")

    n_ctx: int = Field(default=2048, ge=256, le=1_048_576)
    n_gpu_layers: int | None = None
    n_sink: int = Field(default=4, ge=0, le=256)
    rope_scaling: Literal["none", "linear", "yarn"] = "none"
    rope_factor: float = Field(default=1.0, ge=1.0, le=64.0)
    n_threads: int | None = Field(default=None, ge=1, le=1024)


#: The fields of :class:`ModelSettings` that are remembered per model.
PROFILE_FIELDS = tuple(ModelProfile.model_fields)


class ModelSettings(BaseModel):
    """Which model runs the agent and how."""

    model_config = ConfigDict(extra="ignore")

    backend: str = Field(
        default="llama.cpp",
        min_length=1,
        description="A registered model backend (models.backends); checked when the model opens.",
    )
    path: str | None = Field(default=None, description="GGUF file; None = embedded default.")
    # 2048 keeps the default app (host + agent with the embedded model) under
    # 400 MB; the sink cache carries a conversation past it either way.
    n_ctx: int = Field(default=2048, ge=256, le=1_048_576)
    n_gpu_layers: int | None = Field(default=None, description="None = automatic.")
    n_sink: int = Field(default=4, ge=0, le=256)
    rope_scaling: Literal["none", "linear", "yarn"] = "none"
    rope_factor: float = Field(default=1.0, ge=1.0, le=64.0)
    n_threads: int | None = Field(default=None, ge=1, le=1024, description="None = automatic.")
    eviction: EvictionMode = Field(
        default="sinks",
        description="Experimental: KV-cache eviction. sinks (StreamingLLM) is the default; "
        "h2o and sinks+h2o keep the most-attended tokens (slower; see docs/benchmarks.md).",
    )
    base_url: str | None = None
    remote_model: str | None = None
    remote_key_secret: str | None = Field(
        default=None,
        pattern=SECRET_NAME_PATTERN,
        description="The vault secret holding the API key (its name; never the key itself).",
    )
    allow_local_remote: bool = False
    backend_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings of the chosen backend beyond the fields above (a plugin's own).",
    )
    profiles: dict[str, ModelProfile] = Field(
        default_factory=dict,
        description="Runtime options per model, keyed by path ('embedded' for the default).",
    )

    @property
    def profile_key(self) -> str:
        """The key of the chosen model in :attr:`profiles`."""
        return profile_key(self.backend, self.path, self.remote_model)


def profile_key(backend: str, path: str | None, remote_model: str | None) -> str:
    """The key under which a model's runtime options are remembered.

    A GGUF file by its path ('embedded' for the default); a model of another
    backend by the backend and the model's name.
    """
    if backend == "llama.cpp":
        return path or "embedded"
    return f"{backend}:{remote_model or ''}"


def model_spec_from_settings(m: ModelSettings, data_dir: Path) -> Any:
    """The ``models.factory.ModelSpec`` that model settings describe.

    The fields above are offered to every backend, which takes those it has
    (:meth:`models.factory.ModelSpec.from_options`); ``backend_options``
    add a plugin backend's own.

    Raises:
        models.errors.ModelError: The backend is not registered.
        pydantic.ValidationError: A setting is invalid for the backend.
    """
    from models.factory import ModelSpec

    options: dict[str, Any] = {
        "path": Path(m.path) if m.path else None,
        "n_ctx": m.n_ctx,
        "n_gpu_layers": m.n_gpu_layers,
        "n_sink": m.n_sink,
        "rope_scaling": m.rope_scaling,
        "rope_factor": m.rope_factor,
        "n_threads": m.n_threads,
        "eviction": m.eviction,
        "base_url": m.base_url,
        "model_name": m.remote_model,
        "allow_local": m.allow_local_remote,
        "verified_cache": data_dir / "verified-models.json",
    }
    return ModelSpec.from_options(m.backend, {**options, **m.backend_options})


class MemoryCapacities(BaseModel):
    """Token capacity of each memory level."""

    model_config = ConfigDict(extra="ignore")

    user: int = Field(default=1500, ge=100)
    project: int = Field(default=1500, ge=100)
    session: int = Field(default=1000, ge=100)


class AppSettings(BaseModel):
    """Everything the user chose, persisted between launches."""

    model_config = ConfigDict(extra="ignore")

    model: ModelSettings = Field(default_factory=ModelSettings)
    memory: MemoryCapacities = Field(default_factory=MemoryCapacities)
    workspace: str | None = None
    recent_workspaces: list[str] = Field(default_factory=list)
    auto_lock_minutes: int = Field(default=10, ge=1, le=24 * 60)
    #: Hosts the egress proxy passes through without interception (never with a capability).
    egress_pinned_hosts: list[str] = Field(default_factory=list)
    kv_state_cap_mb: int = Field(
        default=2048,
        ge=0,
        le=1_048_576,
        description="Disk for sessions' saved model state (oldest deleted first); 0: none saved.",
    )

    @field_validator("egress_pinned_hosts")
    @classmethod
    def _pinned_hosts(cls, hosts: list[str]) -> list[str]:
        """Each host as the proxy matches it (lower case), once; a URL, port or wildcard refused."""
        from agent.host.egress.settings import pinned_host

        return list(dict.fromkeys(pinned_host(h) for h in hosts))


def load_settings(paths: AppPaths) -> AppSettings:
    """Read the settings file, or return defaults when there is none.

    Raises:
        SettingsError: The file exists but is not valid JSON or not valid settings.
    """
    file = paths.settings_file
    try:
        raw = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return AppSettings()
    except OSError as e:
        raise SettingsError(f"cannot read settings {file}: {e.strerror}") from e
    try:
        return AppSettings.model_validate(json.loads(raw))
    except (json.JSONDecodeError, ValidationError) as e:
        raise SettingsError(f"settings file {file} is invalid: {e}") from e


def save_settings(paths: AppPaths, settings: AppSettings) -> None:
    """Write the settings atomically (temp file, fsync, rename).

    Raises:
        SettingsError: The file could not be written; the old one is kept.
    """
    file = paths.settings_file
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = settings.model_dump_json(indent=2).encode()
    fd, tmp = tempfile.mkstemp(prefix=".settings-", dir=file.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise SettingsError(f"cannot write settings {file}: {e.strerror}") from e
