"""Open the model a :class:`ModelSpec` names, whatever its backend.

The agent worker and the app describe the model they want as a
:class:`ModelSpec` (it travels over the agent pipe as JSON) and call
:func:`open_model`. A spec is a backend's name and that backend's own
settings (:mod:`models.backends`); the backend decides how to open it, so
opening the scripted fake never loads llama.cpp.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, model_validator

from models.backends import BackendSettings, KeyProvider, backend_for
from models.errors import ModelError
from models.interface import ChatModel

DEFAULT_BACKEND = "llama.cpp"


class ModelSpec(BaseModel):
    """Which model to open and how: a backend and its settings.

    ``settings`` is validated by the backend's own settings model (looked
    up in the registry), so the spec round-trips through JSON in any
    process that knows the backend. The flat form of older specs and
    settings (``{"backend": "openai", "base_url": ..., "n_ctx": ...}``, one
    set of fields for every backend) is still read: the fields the backend
    has move into ``settings``, the others (they were ignored) are dropped.
    """

    model_config = ConfigDict(frozen=True)

    backend: str = DEFAULT_BACKEND
    settings: SerializeAsAny[BackendSettings] = Field(
        description="The backend's own settings model."
    )

    @model_validator(mode="before")
    @classmethod
    def _settings_of_the_backend(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        name = data.get("backend", DEFAULT_BACKEND)
        if not isinstance(name, str):
            return data  # the field's own validation names the problem
        try:
            backend = backend_for(name)
        except ModelError as e:
            raise ValueError(str(e)) from e
        settings = data.get("settings")
        if "settings" not in data:
            flat = {k: data.pop(k) for k in list(data) if k != "backend"}
            settings = {k: v for k, v in flat.items() if k in backend.settings_model.model_fields}
        if not isinstance(settings, backend.settings_model):
            if isinstance(settings, BaseModel):
                settings = settings.model_dump()
            settings = backend.settings_model.model_validate(settings)
        data["settings"] = settings
        data["backend"] = name
        return data

    @classmethod
    def of(cls, backend: str = DEFAULT_BACKEND, **settings: Any) -> ModelSpec:
        """A spec for ``backend`` with these settings (validated by the backend).

        Raises:
            pydantic.ValidationError: Unknown backend or an invalid setting.
        """
        return cls.model_validate({"backend": backend, "settings": settings})

    @classmethod
    def from_options(cls, backend: str, options: Mapping[str, Any]) -> ModelSpec:
        """A spec for ``backend`` from a pool of options offered to every backend.

        See :meth:`models.backends.BackendSpec.settings_from_options`: the
        options the backend has no setting for, and None values, are ignored.

        Raises:
            models.backends.BackendError: Unknown backend.
            pydantic.ValidationError: An invalid setting.
        """
        chosen = backend_for(backend)
        return cls(backend=backend, settings=chosen.settings_from_options(options))

    @property
    def n_ctx(self) -> int:
        """The context size, which every backend has."""
        return self.settings.n_ctx

    def label(self) -> str:
        """``backend:what`` in a line (the session's model record)."""
        return f"{self.backend}:{backend_for(self).label(self.settings)}"


def open_model(spec: ModelSpec, *, api_key: KeyProvider | None = None) -> ChatModel:
    """Open the model ``spec`` describes, through its backend.

    Args:
        spec: The backend and its settings.
        api_key: The API key for a backend that ``needs_key`` (host side).

    Raises:
        ModelError: The spec is incomplete or the model cannot be opened.
    """
    return backend_for(spec).open(spec.settings, api_key)
