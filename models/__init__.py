"""Local language models: catalog, llama.cpp runtime, sink cache, fakes.

The light names (the interface, errors, :class:`ModelSpec`, the scripted fake)
import eagerly; the ones that load llama.cpp (:class:`Runtime`,
:class:`SinkCache`) import on first use, so ``import models`` stays cheap for
the host and the scripted worker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from models.catalog import ModelFile, download, embedded_default, local_file, verify
from models.errors import (
    ChecksumError,
    ContextTooSmallError,
    DownloadCancelledError,
    DownloadChecksumError,
    DownloadError,
    GenerationError,
    ModelError,
    ModelFileError,
    ModelLoadError,
    ModelProcessError,
)
from models.factory import ModelSpec, open_model
from models.fake import ScriptedModel
from models.interface import (
    CancelToken,
    ChatModel,
    ContextState,
    Finished,
    GenerationStats,
    Message,
    ModelInfo,
    StreamEvent,
    Token,
    complete_chat,
)

if TYPE_CHECKING:
    from models.runtime import RopeScaling, Runtime, RuntimeConfig
    from models.sinkcache import SinkCache

_LAZY = {
    "Runtime": "models.runtime",
    "RuntimeConfig": "models.runtime",
    "RopeScaling": "models.runtime",
    "SinkCache": "models.sinkcache",
}

__all__ = [
    "CancelToken",
    "ChatModel",
    "ChecksumError",
    "ContextState",
    "ContextTooSmallError",
    "DownloadCancelledError",
    "DownloadChecksumError",
    "DownloadError",
    "Finished",
    "GenerationError",
    "GenerationStats",
    "Message",
    "ModelError",
    "ModelFile",
    "ModelFileError",
    "ModelInfo",
    "ModelLoadError",
    "ModelProcessError",
    "ModelSpec",
    "RopeScaling",
    "Runtime",
    "RuntimeConfig",
    "ScriptedModel",
    "SinkCache",
    "StreamEvent",
    "Token",
    "complete_chat",
    "download",
    "embedded_default",
    "local_file",
    "open_model",
    "verify",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
