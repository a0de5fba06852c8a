"""The model backends: one registration each; the rest of the code asks the registry.

A backend is a :class:`BackendSpec`: its name, its settings model (pydantic;
what a :class:`models.factory.ModelSpec` carries for it), how to open it,
where it runs and what it needs. The built-in backends (``llama.cpp``,
``openai``, ``fake``, in :mod:`models.builtin_backends`) register through
the same :func:`register` call as any other, so nothing outside this module
compares backend names.

Where a backend comes from:

* built in, or installed: a distribution that declares an entry point in
  the ``keyless.backends`` group (its value: a module that calls
  :func:`register` on import, or a :class:`BackendSpec`). Every process —
  the host, the agent process, the model process — runs the same
  interpreter and finds these itself, so nothing about code crosses a pipe.
* registered at run time by code the host imported that is not installed
  (a backend in the test tree): the host names its module and file on the
  child's command line (:func:`source_for`, :func:`load_source`). A
  message never names code to import; only the parent's argv does, and only
  a module the parent has already imported itself.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from models.errors import ModelError
from models.interface import ChatModel

ENTRY_POINT_GROUP = "keyless.backends"
BUILTIN_MODULE = "models.builtin_backends"

KeyProvider = Callable[[], bytearray]
"""Returns the API key for one request (host-side backends); the caller wipes it."""

TokenCounter = Callable[[str], int]


class BackendError(ModelError):
    """A backend is unknown, registered twice, or cannot be loaded."""


class BackendSettings(BaseModel):
    """What every backend's settings have: the context size. Subclass it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_ctx: int = Field(default=4096, ge=1, description="Context size in tokens.")


S = TypeVar("S", bound=BackendSettings)


def _no_files(settings: Any) -> Sequence[Path]:
    return ()


def _no_label(settings: Any) -> str:
    return "default"


@dataclass(frozen=True)
class BackendSpec(Generic[S]):
    """One model backend, as data the rest of the code asks.

    Attributes:
        name: What ``ModelSpec.backend`` and ``--backend`` say.
        settings_model: Its settings (a :class:`BackendSettings` subclass).
        open: Opens the model: ``open(settings, api_key)``; ``api_key`` is
            None unless the backend ``needs_key`` and the user configured one.
        runs_in: ``"agent"``: the agent process (or the model process) opens
            it; ``"host"``: the trusted host opens it (it may hold a key, or
            need the network) and relays its generations to the agent.
        needs_key: It takes an API key from the vault (host backends only).
        counter: A token counter for these settings without loading the
            model (its vocabulary), or None to estimate.
        agent_files: Files the agent process must read (bound read-only into
            its sandbox).
        prepare: Run in the host before the settings cross to the agent
            process (which cannot see the data dir): e.g. verify a file.
        label: A short description of the chosen model (session records).
        description: One line for ``--help``.
        module: The module that registered it (set by :func:`register`).
    """

    name: str
    settings_model: type[S]
    open: Callable[[S, KeyProvider | None], ChatModel]
    runs_in: Literal["agent", "host"] = "agent"
    needs_key: bool = False
    counter: Callable[[S], TokenCounter | None] | None = None
    agent_files: Callable[[S], Sequence[Path]] = _no_files
    prepare: Callable[[S], S] | None = None
    label: Callable[[S], str] = _no_label
    description: str = ""
    module: str = field(default="", compare=False)

    @property
    def counts_tokens_locally(self) -> bool:
        """Whether the host can count this backend's tokens without the model."""
        return self.counter is not None

    def settings(self, values: Mapping[str, Any]) -> S:
        """Validate ``values`` as this backend's settings.

        Raises:
            pydantic.ValidationError: A value is invalid or not a setting of this backend.
        """
        return self.settings_model.model_validate(dict(values))

    def settings_from_options(self, options: Mapping[str, Any]) -> S:
        """This backend's settings from a pool of options shared by all backends.

        Options it has no field for are ignored, as are None values (the
        field's default applies): the command line and the app settings
        offer every backend the same pool.

        Raises:
            pydantic.ValidationError: A value it does have is invalid.
        """
        fields = self.settings_model.model_fields
        return self.settings({k: v for k, v in options.items() if k in fields and v is not None})


class BackendSource(BaseModel):
    """Where a backend registered at run time lives, for a child process to load it."""

    model_config = ConfigDict(frozen=True)

    module: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
    file: Path


_lock = threading.RLock()
_backends: dict[str, BackendSpec[Any]] = {}
_entry_points_loaded = False


def register(spec: BackendSpec[Any], *, replace: bool = False) -> BackendSpec[Any]:
    """Add a backend; returns it (with ``module`` filled in).

    Raises:
        BackendError: Another backend already has that name (and not ``replace``).
    """
    if not spec.module:
        caller = sys._getframe(1).f_globals.get("__name__", "")  # noqa: SLF001 - who registers
        spec = dataclasses.replace(spec, module=str(caller))
    with _lock:
        known = _backends.get(spec.name)
        # The same module registering again (a reload) replaces its own entry.
        if known is not None and not replace and known.module != spec.module:
            raise BackendError(f"a model backend named {spec.name!r} is already registered")
        _backends[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a backend (tests)."""
    with _lock:
        _backends.pop(name, None)


def _load_builtins_and_plugins() -> None:
    global _entry_points_loaded
    importlib.import_module(BUILTIN_MODULE)
    with _lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
        except Exception as e:  # a broken plugin must not hide the built-ins
            raise BackendError(f"the model backend plugin {ep.name!r} failed to load: {e}") from e
        if isinstance(loaded, BackendSpec):
            register(loaded)


def backend_names() -> list[str]:
    """The registered backends' names, built-ins first."""
    _load_builtins_and_plugins()
    with _lock:
        return list(_backends)


def backend_for(spec_or_name: Any) -> BackendSpec[Any]:
    """The backend a name (or a ``ModelSpec``) names.

    Raises:
        BackendError: No backend has that name.
    """
    name = spec_or_name if isinstance(spec_or_name, str) else spec_or_name.backend
    _load_builtins_and_plugins()
    with _lock:
        found = _backends.get(name)
        known = ", ".join(_backends)
    if found is None:
        raise BackendError(f"unknown model backend {name!r} (known: {known})")
    return found


def runs_in_host(spec: Any) -> bool:
    """Whether ``spec`` (a ``ModelSpec`` or None) is opened in the host and relayed."""
    return spec is not None and backend_for(spec).runs_in == "host"


def source_for(name: str) -> BackendSource | None:
    """What a child process must load to know backend ``name``; None when it finds it itself.

    Built-in and installed (entry point) backends need nothing; one
    registered by a module the host imported from elsewhere is named with
    that module's file.

    Raises:
        BackendError: The backend is unknown, or its module has no file.
    """
    backend = backend_for(name)
    if backend.module == BUILTIN_MODULE or backend.module.startswith("models."):
        return None
    installed = {ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if backend.module in installed:
        return None
    module = sys.modules.get(backend.module)
    file = getattr(module, "__file__", None)
    if not file:
        raise BackendError(f"the model backend {name!r} has no module file a child could load")
    return BackendSource(module=backend.module, file=Path(file).resolve())


def load_source(source: BackendSource) -> None:
    """Import a backend's module from its file (a child process, told by its parent's argv).

    Raises:
        BackendError: The file cannot be loaded.
    """
    if source.module in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(source.module, source.file)
    if spec is None or spec.loader is None:
        raise BackendError(f"cannot load the model backend module {source.module!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[source.module] = module
    try:
        spec.loader.exec_module(module)
    except (OSError, ImportError, SyntaxError) as e:
        del sys.modules[source.module]
        raise BackendError(f"cannot load the model backend module {source.module!r}: {e}") from e


def source_arguments(sources: Sequence[BackendSource]) -> list[str]:
    """The ``--backend-source JSON`` arguments naming ``sources`` for a child's argv."""
    args: list[str] = []
    for source in sources:
        args += ["--backend-source", source.model_dump_json()]
    return args
