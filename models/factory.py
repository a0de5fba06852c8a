"""Open the model a :class:`ModelSpec` names, whatever its backend.

The agent worker and the app describe the model they want as a
:class:`ModelSpec` (it travels over the agent pipe as JSON) and call
:func:`open_model`. Backends are imported lazily, so opening the scripted
fake never loads llama.cpp and the remote backend is optional.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.errors import ModelError
from models.eviction import EvictionMode
from models.interface import ChatModel

Backend = Literal["llama.cpp", "fake", "openai"]


class ModelSpec(BaseModel):
    """Which model to open and how."""

    model_config = ConfigDict(frozen=True)

    backend: Backend = "llama.cpp"
    path: Path | None = Field(
        default=None, description="GGUF file; None means the embedded default model."
    )
    n_ctx: int = Field(default=4096, ge=1)
    n_gpu_layers: int | None = None
    n_threads: int | None = Field(default=None, ge=1)
    n_sink: int = Field(default=4, ge=0)
    rope_scaling: Literal["none", "linear", "yarn"] = "none"
    rope_factor: float = Field(default=1.0, ge=1.0)
    eviction: EvictionMode = Field(
        default="sinks",
        description="KV eviction: sinks (default), h2o or sinks+h2o (experimental).",
    )
    base_url: str | None = None
    model_name: str | None = None
    allow_local: bool = False
    scripted_file: Path | None = None
    verified_cache: Path | None = Field(
        default=None, description="JSON cache of verified sha256 digests (the host's data dir)."
    )


def open_model(spec: ModelSpec) -> ChatModel:
    """Open the model ``spec`` describes.

    ``llama.cpp`` loads ``spec.path`` (validated as GGUF) or, when None, the
    embedded default after checking its sha256; ``fake`` loads the scripted
    responses in ``spec.scripted_file``; ``openai`` connects to
    ``spec.base_url``.

    Raises:
        ModelError: The spec is incomplete or the model cannot be opened.
    """
    if spec.backend == "fake":
        from models.fake import ScriptedModel

        if spec.scripted_file is None:
            return ScriptedModel(n_ctx=spec.n_ctx)
        return ScriptedModel.from_file(spec.scripted_file, n_ctx=spec.n_ctx)
    if spec.backend == "openai":
        if not spec.base_url or not spec.model_name:
            raise ModelError("the openai backend needs a base URL and a model name")
        try:
            from models.remote import OpenAIChatModel
        except ModuleNotFoundError as e:
            if e.name != "models.remote":
                raise
            raise ModelError("this build has no OpenAI-compatible backend") from e
        remote: ChatModel = OpenAIChatModel(
            spec.base_url, spec.model_name, allow_local=spec.allow_local, n_ctx=spec.n_ctx
        )
        return remote
    from models.catalog import embedded_default, verify
    from models.runtime import RopeScaling, Runtime, RuntimeConfig

    if spec.path is None:
        model_file = verify(embedded_default(), cache_file=spec.verified_cache)
        path, name = model_file.path, model_file.name
    else:
        path, name = spec.path, None
    return Runtime(
        RuntimeConfig(
            model_path=path,
            name=name,
            n_ctx=spec.n_ctx,
            n_gpu_layers=spec.n_gpu_layers,
            n_threads=spec.n_threads,
            n_sink=spec.n_sink,
            rope_scaling=RopeScaling(kind=spec.rope_scaling, factor=spec.rope_factor),
            eviction=spec.eviction,
        )
    )
