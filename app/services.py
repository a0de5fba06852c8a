"""The trusted host's services, built once and shared by the controllers.

:class:`AppServices` is what the GUI's controllers receive. Each service
(vault, grants, broker, audit log, permission rules, memory) is built lazily on
first use, so a package that is missing or broken makes only the screens that
need it unavailable, with the reason recorded in :attr:`AppServices.problems`
for the GUI to show, instead of the whole app failing to start.

Widgets never reach these objects: controllers do, off the GUI thread where the
work touches the disk, the keyring or the model.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import platformdirs

from app.paths import AppPaths, default_paths
from app.settings import (
    AppSettings,
    SettingsError,
    load_settings,
    model_spec_from_settings,
    save_settings,
)

if TYPE_CHECKING:
    from agent.host.policy import RuleStore

log = logging.getLogger(__name__)


class ServiceUnavailableError(Exception):
    """A service could not be built; the message says which one and why."""


def optional_module(name: str) -> ModuleType | None:
    """Import ``name`` if that module exists, else return None.

    Only the module itself being absent counts as "not there"; an
    ImportError raised *inside* an existing module propagates, because that is
    a bug to report, not a feature to hide.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            return None
        raise


class AppServices:
    """Lazily built host services shared by every controller.

    Args:
        paths: Where Keyless keeps its files (defaults to :func:`default_paths`).
        settings: The settings to use; when None they are read from disk, and a
            broken settings file falls back to defaults with the problem
            recorded in :attr:`problems` (the file itself is left untouched).
    """

    def __init__(self, paths: AppPaths | None = None, settings: AppSettings | None = None) -> None:
        self.paths = (paths or default_paths()).ensure()
        self.problems: dict[str, str] = {}
        self._lock = threading.RLock()
        self._built: dict[str, Any] = {}
        self._vault: Any = None
        if settings is None:
            try:
                settings = load_settings(self.paths)
            except SettingsError as e:
                self.problems["settings"] = f"{e}; using defaults until you save new settings"
                settings = AppSettings()
        self.settings = settings

    # -- settings -------------------------------------------------------------------

    def save_settings(self) -> None:
        """Persist :attr:`settings`.

        Raises:
            SettingsError: The file could not be written; the old one is kept.
        """
        save_settings(self.paths, self.settings)
        self.problems.pop("settings", None)

    @property
    def workspace(self) -> Path | None:
        """The workspace errands run in, or None when none is chosen."""
        ws = self.settings.workspace
        return Path(ws) if ws else None

    def protected_paths(self) -> tuple[Path, ...]:
        """Paths no tool may touch wherever they lie: Keyless's data and config dirs, the keyring's.

        The host hides them from every sandbox and the file tools refuse them
        by canonical path (see ``agent.host.tools.paths.Workspace``).
        """
        paths = [self.paths.data_dir, self.paths.config_dir, *keyring_paths()]
        unique: list[Path] = []
        for path in paths:
            if path not in unique:
                unique.append(path)
        return tuple(unique)

    def workspace_warning(self, workspace: Path) -> str | None:
        """Say why ``workspace`` is a poor choice (it holds or lies in a protected path), or None.

        A warning rather than a refusal: the tools refuse those paths anyway,
        but the user should know that the folder mixes a project with
        Keyless's own or the keyring's files.
        """
        ws = Path(os.path.realpath(workspace))
        for path in self.protected_paths():
            real = Path(os.path.realpath(path))
            if ws == real or real in ws.parents:
                return (
                    f"The workspace {ws} lies inside {real} (Keyless's own or the keyring's "
                    "files); the agent's tools refuse everything there. Choose a project folder."
                )
            if ws in real.parents and os.path.lexists(real):
                return (
                    f"The workspace {ws} contains {real} (Keyless's own or the keyring's "
                    "files). The agent's tools and sandbox refuse it, but a narrower project "
                    "folder is safer."
                )
        return None

    def set_workspace(self, workspace: Path) -> None:
        """Choose the workspace and remember it among the recent ones.

        Raises:
            NotADirectoryError: ``workspace`` is not an existing directory.
            SettingsError: The choice could not be saved.
        """
        resolved = workspace.expanduser().resolve()
        if not resolved.is_dir():
            raise NotADirectoryError(f"workspace {resolved} is not an existing directory")
        text = str(resolved)
        recent = [text] + [w for w in self.settings.recent_workspaces if w != text]
        self.settings.workspace = text
        self.settings.recent_workspaces = recent[:10]
        self.save_settings()

    # -- lazily built services ------------------------------------------------------

    def _service(self, name: str, build: Callable[[], Any]) -> Any:
        with self._lock:
            if name in self._built:
                return self._built[name]
            try:
                value = build()
            except ServiceUnavailableError as e:
                self.problems[name] = str(e)
                raise
            except Exception as e:
                # Reported to the user through `problems` and re-raised as ours.
                message = f"{name} could not start: {type(e).__name__}: {e}"
                log.exception("service %s failed", name)
                self.problems[name] = message
                raise ServiceUnavailableError(message) from e
            self.problems.pop(name, None)
            self._built[name] = value
            return value

    def _require(self, module: str, what: str) -> ModuleType:
        found = optional_module(module)
        if found is None:
            raise ServiceUnavailableError(f"{what} is not available in this build ({module})")
        return found

    @property
    def audit(self) -> Any:
        """The hash-chained audit log (``vault.audit.AuditLog``).

        Raises:
            ServiceUnavailableError: The vault package is missing or broken.
        """

        def build() -> Any:
            mod = self._require("vault.audit", "the audit log")
            keystore = self._require("vault.keystore", "the keyring").default_keystore()
            # Keyed by the vault once one is unlocked (set_vault); until then by a
            # per-boot key (vault locked) or the keyring's per-install key.
            try:
                vault = self.vault
            except ServiceUnavailableError:
                vault = None  # reported under "vault"; the log still works, unkeyed by it
            return mod.AuditLog(self.paths.database, vault=vault, keystore=keystore)

        return self._service("audit", build)

    @property
    def grants(self) -> Any:
        """The capability grant store (``vault.grants.GrantStore``).

        Raises:
            ServiceUnavailableError: The vault package is missing or broken.
        """

        def build() -> Any:
            mod = self._require("vault.grants", "capability grants")
            return mod.GrantStore(self.paths.database)

        return self._service("grants", build)

    @property
    def vault_exists(self) -> bool:
        """Whether a vault file has been created."""
        return self.paths.vault_file.exists()

    @property
    def vault(self) -> Any:
        """The vault (``vault.store.Vault``), opened but possibly locked; None if none exists.

        Raises:
            ServiceUnavailableError: The vault package is missing, or the file is unreadable.
        """
        with self._lock:
            if self._vault is not None:
                return self._vault
            if not self.vault_exists:
                return None

            def build() -> Any:
                mod = self._require("vault.store", "the vault")
                return mod.Vault.open(self.paths.vault_file)

            self._vault = self._service("vault", build)
            return self._vault

    def set_vault(self, vault: Any) -> None:
        """Use a vault the first-run setup just created (and drop the old broker)."""
        with self._lock:
            self._vault = vault
            self._built["vault"] = vault
            self._built.pop("broker", None)
            self.problems.pop("vault", None)
            audit = self._built.get("audit")
        if audit is not None:
            audit.attach_vault(vault)
            try:
                audit.seal()  # cover what was written while the vault was locked
            except Exception as e:  # reported; the next audited write seals or fails closed
                log.warning("the audit log could not seal the locked-time entries: %s", e)

    @property
    def broker(self) -> Any:
        """The broker that redeems capability handles (``vault.broker.Broker``), or None.

        None when no vault exists yet: errands then run without capabilities.

        Raises:
            ServiceUnavailableError: The vault package is missing or broken.
        """
        vault = self.vault
        if vault is None:
            return None

        def build() -> Any:
            mod = self._require("vault.broker", "the capability broker")
            return mod.Broker(vault, self.grants, self.audit)

        return self._service("broker", build)

    def rule_store(self, workspace: Path | None = None) -> RuleStore:
        """Open the persisted permission rules (a new :class:`agent.host.policy.RuleStore`).

        A new store each call, because its SQLite connection belongs to the
        thread that opens it: call this in the thread that will use it, and
        close it there.

        Raises:
            ServiceUnavailableError: The rules database cannot be opened.
        """
        # Imported here, not optionally: the policy engine ships with the app
        # (errands cannot run without it); importing it lazily keeps it out of
        # commands that never read rules.
        from agent.host.policy import RuleStore

        try:
            store = RuleStore(self.paths.database, workspace=workspace)
        except Exception as e:
            message = f"the permission rules could not be opened: {e}"
            self.problems["rules"] = message
            raise ServiceUnavailableError(message) from e
        self.problems.pop("rules", None)
        return store

    def live_broker(self) -> LiveBroker:
        """A broker that always uses the current vault (e.g. once the Vault screen unlocks it)."""
        return LiveBroker(self)

    def memory_service(
        self,
        *,
        workspace: Path,
        session_id: str,
        count_tokens: Callable[[str], int],
    ) -> Any:
        """Build a ``memory.service.MemoryService`` for one workspace and session.

        Raises:
            ServiceUnavailableError: The memory package is missing or broken.
        """
        try:
            mod = self._require("memory.service", "memory")
            from memory.settings import MemorySettings

            caps = self.settings.memory
            memory_settings = MemorySettings.from_capacities(
                user=caps.user, project=caps.project, session=caps.session
            )
            broker = self.broker
            scan: Callable[[str], list[str]] = broker.scan if broker is not None else _scan_nothing
            service = mod.MemoryService(
                user_dir=self.paths.memory_dir,
                workspace=workspace,
                db_path=self.paths.database,
                session_id=session_id,
                count_tokens=count_tokens,
                scan_secrets=scan,
                settings=memory_settings,
            )
        except ServiceUnavailableError as e:
            self.problems["memory"] = str(e)
            raise
        except Exception as e:
            message = f"memory could not start: {type(e).__name__}: {e}"
            log.exception("memory service failed")
            self.problems["memory"] = message
            raise ServiceUnavailableError(message) from e
        self.problems.pop("memory", None)
        return service

    def model_spec(self) -> Any:
        """The ``models.factory.ModelSpec`` the user's settings describe."""
        return model_spec_from_settings(self.settings.model, self.paths.data_dir)

    def remote_model(self, spec: Any, *, vault_available: bool = True) -> Any:
        """Open the remote model here, in the host, with its API key from the vault.

        The agent process gets only the relayed generations; the key is read
        from the vault at each request and never leaves this process.

        Raises:
            models.errors.ModelError: The server cannot be reached or is refused.
            vault.errors.VaultLockedError: A key is configured but the vault is locked.
        """
        from models.backends import backend_for
        from models.factory import open_model
        from vault.errors import VaultLockedError

        secret = self.settings.model.remote_key_secret
        if not secret or not backend_for(spec).needs_key:
            return open_model(spec)
        vault = self.vault if vault_available else None
        if vault is None or vault.is_locked:
            raise VaultLockedError(
                f"the API key {secret!r} is in the vault, which is locked: unlock it first"
            )

        def api_key() -> bytearray:
            value: bytearray = vault.get(secret)
            return value

        return open_model(spec, api_key=api_key)

    def sandbox_status(self) -> tuple[bool, str]:
        """Return whether OS isolation (bubblewrap) is available, and a sentence saying so."""
        from agent.host.sandbox import Sandbox  # ships with the app, like the policy engine

        try:
            sandbox = Sandbox.detect()
        except Exception as e:  # reported to the user as the status text
            return False, f"sandbox detection failed: {e}"
        if sandbox.available:
            return True, "bubblewrap found: the agent and each shell command run isolated"
        return False, (
            "bubblewrap not found: the agent runs as a separate process with a scrubbed "
            "environment but without OS isolation, and shell commands need an explicit "
            "'run unsandboxed' approval"
        )

    def egress_settings(self) -> Any:
        """How errands' shell commands reach the network: through the shared egress proxy.

        Returns:
            The :class:`agent.host.egress.settings.EgressSettings` every errand
            and ``keyless run`` passes to its host (the user's pinned hosts),
            or None where the proxy cannot run in this build (mitmproxy
            missing): shell commands then have no network, and
            :attr:`problems` says why.
        """
        mod = optional_module("agent.host.egress.settings")
        if mod is None or importlib.util.find_spec("mitmproxy") is None:
            self.problems["egress"] = (
                "the egress proxy (mitmproxy) is not installed: shell commands have no network"
            )
            return None
        return mod.EgressSettings(pinned_hosts=tuple(self.settings.egress_pinned_hosts))

    def kv_states(self) -> dict[str, Any]:
        """The ``AgentHost`` options that save and restore sessions' KV state.

        Empty when the cap setting is 0: nothing is saved or restored.
        """
        from models.kvstate import ModelHashes, StateStore

        cap_mb = self.settings.kv_state_cap_mb
        if cap_mb <= 0:
            return {}
        directory = self.paths.kvstate_dir
        return {
            "kv_store": StateStore(directory, cap_mb * 1024 * 1024),
            "model_hashes": ModelHashes(directory / "model-hashes.json"),
        }

    def close(self) -> None:
        """Lock the vault, stop the shared egress proxy and close the rest. Safe to call twice."""
        egress = sys.modules.get("agent.host.egress.proxy")  # never imported only to stop it
        if egress is not None:
            try:
                egress.stop_shared_server()
            except Exception:  # closing must go on; the failure is logged
                log.exception("stopping the egress proxy on exit failed")
        with self._lock:
            vault = self._vault
            if vault is not None and hasattr(vault, "lock"):
                try:
                    vault.lock()
                except Exception:  # closing must go on; the failure is logged
                    log.exception("locking the vault on exit failed")
            for name, service in list(self._built.items()):
                closer = getattr(service, "close", None)
                if callable(closer) and name != "vault":
                    try:
                        closer()
                    except Exception:  # closing must go on; the failure is logged
                        log.exception("closing %s failed", name)
            self._built.clear()
            self._vault = None


class LiveBroker:
    """Delegates to :attr:`AppServices.broker` at each use.

    An errand's agent host keeps its broker for the whole session; this proxy
    lets a vault unlocked (or created) later in the session take effect at
    the next call instead of the session holding a locked vault's broker.
    Without a vault it offers no capabilities, redacts nothing and refuses calls.
    """

    def __init__(self, services: AppServices) -> None:
        self._services = services

    def _broker(self) -> Any:
        try:
            return self._services.broker
        except ServiceUnavailableError:
            return None

    def capabilities(self, session_id: str) -> Any:
        """The capability infos granted to ``session_id`` (none without a vault)."""
        broker = self._broker()
        return broker.capabilities(session_id) if broker is not None else []

    def check_capabilities_usable(self, session_id: str) -> None:
        """Raise VaultLockedError when ``session_id`` has grants and the vault is locked."""
        broker = self._broker()
        if broker is not None:
            broker.check_capabilities_usable(session_id)

    def redact(self, text: str, *, session_id: str) -> tuple[str, list[str]]:
        """Remove every secret value from ``text`` (nothing to remove without a vault)."""
        broker = self._broker()
        if broker is None:
            return text, []
        result: tuple[str, list[str]] = broker.redact(text, session_id=session_id)
        return result

    def redact_stream(self, *, session_id: str) -> Any:
        """A streaming redactor over the same secrets as :meth:`redact`."""
        broker = self._broker()
        if broker is None:
            return _NothingToRedact()
        return broker.redact_stream(session_id=session_id)

    def call(self, handle: str | None, call: Any, *, session_id: str, now: Any) -> Any:
        """Perform a brokered HTTP call.

        Raises:
            vault.errors.GrantRefused: No vault exists yet (or the broker refused).
        """
        broker = self._broker()
        if broker is None:
            from vault.errors import GrantRefused

            raise GrantRefused("no vault exists yet: set one up on the Vault screen")
        return broker.call(handle, call, session_id=session_id, now=now)

    def redeem_egress(
        self, handle: str, *, method: str, url: str, session_id: str, command: str
    ) -> Any:
        """Redeem a handle a sandboxed command sent through the egress proxy.

        Raises:
            vault.errors.GrantRefused: No vault exists yet (or the broker refused).
        """
        broker = self._broker()
        if broker is None:
            from vault.errors import GrantRefused

            raise GrantRefused("no vault exists yet: set one up on the Vault screen")
        return broker.redeem_egress(
            handle, method=method, url=url, session_id=session_id, command=command
        )

    def grant(self, grant: Any) -> Any:
        """Store a grant (an MCP server's secret, granted for its session).

        Raises:
            vault.errors.VaultLockedError: No vault is open.
        """
        broker = self._broker()
        if broker is None:
            from vault.errors import VaultLockedError

            raise VaultLockedError("no vault is open: unlock it on the Vault screen")
        return broker.grant(grant)

    def revoke(self, handle: str) -> bool:
        """Revoke one grant (False without a vault)."""
        broker = self._broker()
        return bool(broker.revoke(handle)) if broker is not None else False

    def egress_redactor(self, session_id: str) -> Any:
        """The egress proxy's redactor (None without a vault: no secret exists to redact)."""
        broker = self._broker()
        return broker.egress_redactor(session_id) if broker is not None else None

    def scan(self, text: str) -> list[str]:
        """Names of vault secrets found in ``text`` (none without a vault)."""
        broker = self._broker()
        found: list[str] = broker.scan(text) if broker is not None else []
        return found


def keyring_paths() -> list[Path]:
    """Where the keyring backends keep their files on this platform (existing or not).

    The Secret Service's ``keyrings``, KWallet's ``kwalletd``, and the
    ``keyring`` package's own data and config roots (its file backends).
    """
    paths = [
        platformdirs.user_data_path("keyrings", appauthor=False),
        platformdirs.user_data_path("kwalletd", appauthor=False),
    ]
    try:
        from keyring.util import platform_
    except ImportError:
        return paths
    return [*paths, Path(platform_.data_root()), Path(platform_.config_root())]


class _NothingToRedact:
    """The token stream without a vault: every chunk passes as it is."""

    def feed(self, chunk: str) -> str:
        return chunk

    def finish(self) -> str:
        return ""


def _scan_nothing(text: str) -> list[str]:
    return []
