"""The built-in model backends, registered the way any other backend is.

Each backend's heavy module (llama.cpp, httpx) is imported when it is
opened, not here, so asking the registry stays cheap in every process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field

from models.backends import BackendSettings, BackendSpec, KeyProvider, TokenCounter, register
from models.errors import ModelError
from models.eviction import EvictionMode
from models.interface import ChatModel

# --------------------------------------------------------------------------- llama.cpp


class LlamaSettings(BackendSettings):
    """A local GGUF model run by llama.cpp."""

    path: Path | None = Field(
        default=None, description="GGUF file; None means the embedded default model."
    )
    n_gpu_layers: int | None = None
    n_threads: int | None = Field(default=None, ge=1)
    n_sink: int = Field(default=4, ge=0)
    rope_scaling: Literal["none", "linear", "yarn"] = "none"
    rope_factor: float = Field(default=1.0, ge=1.0)
    eviction: EvictionMode = Field(
        default="sinks",
        description="KV eviction: sinks (default), h2o or sinks+h2o (experimental).",
    )
    verified_cache: Path | None = Field(
        default=None, description="JSON cache of verified sha256 digests (the host's data dir)."
    )


def _open_llama(s: LlamaSettings, api_key: KeyProvider | None) -> ChatModel:
    from models.catalog import embedded_default, verify
    from models.runtime import RopeScaling, Runtime, RuntimeConfig

    if s.path is None:
        model_file = verify(embedded_default(), cache_file=s.verified_cache)
        path, name = model_file.path, model_file.name
    else:
        path, name = s.path, None
    return Runtime(
        RuntimeConfig(
            model_path=path,
            name=name,
            n_ctx=s.n_ctx,
            n_gpu_layers=s.n_gpu_layers,
            n_threads=s.n_threads,
            n_sink=s.n_sink,
            rope_scaling=RopeScaling(kind=s.rope_scaling, factor=s.rope_factor),
            eviction=s.eviction,
        )
    )


def _llama_counter(s: LlamaSettings) -> TokenCounter | None:
    from models.catalog import embedded_default
    from models.tokenizer import counter_for

    try:
        path = s.path if s.path is not None else embedded_default().path
        return counter_for(str(path))
    except ModelError:
        return None  # the agent process reports the file's real problem when it loads it


def _llama_prepare(s: LlamaSettings) -> LlamaSettings:
    # Verify the embedded model in the host, where the digest cache is
    # writable, and send the agent a plain path: it cannot see the data dir.
    if s.path is not None:
        return s
    from models.catalog import embedded_default, verify

    checked = verify(embedded_default(), cache_file=s.verified_cache)
    return s.model_copy(update={"path": checked.path, "verified_cache": None})


def _llama_files(s: LlamaSettings) -> Sequence[Path]:
    return [s.path] if s.path is not None else []


def _llama_label(s: LlamaSettings) -> str:
    return s.path.name if s.path is not None else "embedded default"


LLAMA = register(
    BackendSpec(
        name="llama.cpp",
        settings_model=LlamaSettings,
        open=_open_llama,
        counter=_llama_counter,
        agent_files=_llama_files,
        prepare=_llama_prepare,
        label=_llama_label,
        description="a local GGUF model (llama.cpp)",
    )
)

# --------------------------------------------------------------------------- openai


class OpenAISettings(BackendSettings):
    """A model behind an OpenAI-compatible server."""

    base_url: str | None = Field(default=None, description="The server's /v1 URL.")
    model_name: str | None = Field(default=None, description="The model the server serves.")
    allow_local: bool = Field(default=False, description="Let base_url point at this machine.")


def _open_openai(s: OpenAISettings, api_key: KeyProvider | None) -> ChatModel:
    if not s.base_url or not s.model_name:
        raise ModelError("the openai backend needs a base URL and a model name")
    try:
        from models.remote import OpenAIChatModel
    except ModuleNotFoundError as e:
        if e.name != "models.remote":
            raise
        raise ModelError("this build has no OpenAI-compatible backend") from e
    remote: ChatModel = OpenAIChatModel(
        s.base_url, s.model_name, api_key_provider=api_key, allow_local=s.allow_local, n_ctx=s.n_ctx
    )
    return remote


OPENAI = register(
    BackendSpec(
        name="openai",
        settings_model=OpenAISettings,
        open=_open_openai,
        # The agent process has no network and must never hold the key.
        runs_in="host",
        needs_key=True,
        label=lambda s: s.model_name or "unnamed",
        description="an OpenAI-compatible server (opened in the host, relayed)",
    )
)

# --------------------------------------------------------------------------- fake


class FakeSettings(BackendSettings):
    """The scripted fake (tests, demos)."""

    scripted_file: Path | None = Field(
        default=None, description="JSON list of the replies, in order."
    )


def _open_fake(s: FakeSettings, api_key: KeyProvider | None) -> ChatModel:
    from models.fake import ScriptedModel

    if s.scripted_file is None:
        return ScriptedModel(n_ctx=s.n_ctx)
    return ScriptedModel.from_file(s.scripted_file, n_ctx=s.n_ctx)


FAKE = register(
    BackendSpec(
        name="fake",
        settings_model=FakeSettings,
        open=_open_fake,
        agent_files=lambda s: [s.scripted_file] if s.scripted_file is not None else [],
        label=lambda s: s.scripted_file.name if s.scripted_file is not None else "scripted",
        description="scripted replies from a JSON file (tests)",
    )
)
