"""A model backend defined in the test tree: proof that adding one is one module.

``echo`` answers with its scripted ``replies`` first, then echoes the last
user message after ``prefix``. It registers itself on import, as a plugin
would; the agent process and the model process load this file because the
host names it on their command line (:func:`models.backends.source_for`).
Imports only what a child process can import (``models``), never ``tests``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from models.backends import BackendSettings, BackendSpec, KeyProvider, register
from models.fake import ScriptedModel
from models.interface import ChatModel, Message, ModelInfo


class EchoSettings(BackendSettings):
    """The echo backend's own settings."""

    replies: list[str] = Field(default_factory=list, description="Answers before echoing.")
    prefix: str = Field(default="echo: ", description="Put before the echoed message.")


class EchoModel(ScriptedModel):
    """Scripted replies, then the last user message echoed."""

    def __init__(self, settings: EchoSettings) -> None:
        super().__init__(settings.replies, n_ctx=settings.n_ctx)
        self._prefix = settings.prefix

    @property
    def info(self) -> ModelInfo:
        """Describe the echo."""
        return ModelInfo(name="echo", backend="echo", n_ctx=self._n_ctx)

    def _next_response(
        self, messages: Sequence[Message], json_schema: Mapping[str, Any] | None
    ) -> str:
        """The next reply, or once they ran out the last user message echoed."""
        users = [m.content for m in messages if m.role == "user"]
        if self.remaining == 0 and users and json_schema is None:
            return self._prefix + users[-1]
        return super()._next_response(messages, json_schema)


def _open(settings: EchoSettings, api_key: KeyProvider | None) -> ChatModel:
    return EchoModel(settings)


ECHO = register(
    BackendSpec(
        name="echo",
        settings_model=EchoSettings,
        open=_open,
        label=lambda s: f"{len(s.replies)} replies",
        description="scripted replies, then echoes (a test backend)",
    )
)
