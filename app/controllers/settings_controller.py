"""The settings screen's controller: permission rules, capacities, sandbox status, paths.

Rules are kept by :class:`agent.host.policy.RuleStore` (in ``keyless.db``), the
capacities in the app's settings file, sessions' saved model state in
:class:`models.kvstate.StateStore` files; all are read and written on the
controller's worker thread.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.host.tools.registry import rule_names
from app.controllers.jobs import WorkerController
from app.paths import AppPaths
from app.qt import QObject, Signal
from app.settings import AppSettings, MemoryCapacities, save_settings

if TYPE_CHECKING:
    from agent.host.policy import RuleStore, StoredRule
    from models.kvstate import StateStore


@dataclass(frozen=True)
class SandboxStatus:
    """Whether tool commands and the agent run inside bubblewrap, and what that means."""

    available: bool
    bwrap_path: str | None
    explanation: str


@dataclass(frozen=True)
class SavedStateUsage:
    """The disk sessions' saved model state (KV state files) takes now."""

    files: int
    size: int


@dataclass(frozen=True)
class RuleRow:
    """One saved permission rule as the editor shows it."""

    rule_id: int
    tool: str
    pattern: str
    action: str
    scope: str
    workspace: str | None

    def label(self) -> str:
        """The rule as the user writes it, e.g. ``shell(git status)``."""
        return f"{self.tool}({self.pattern})"


def tool_names() -> tuple[str, ...]:
    """What rules can name: every registered tool but ``finish``, and the rule kinds (``net``)."""
    return rule_names()


def detect_sandbox() -> SandboxStatus:
    """Ask :class:`agent.host.sandbox.Sandbox` whether bubblewrap works here."""
    from agent.host.sandbox import Sandbox

    sandbox = Sandbox.detect()
    available = sandbox.available
    path = sandbox.bwrap or shutil.which("bwrap")
    if available:
        text = (
            "bubblewrap found: the agent process runs without network, home directory or "
            "vault, and each shell command runs in its own sandbox (workspace writable, "
            "system read-only, no network)."
        )
    elif path is not None:
        text = (
            f"bubblewrap is installed ({path}) but cannot create a sandbox here (user "
            "namespaces disabled, or prlimit missing): OS isolation is off. The agent runs as "
            "a separate process with a scrubbed environment, and the shell tool is refused "
            "unless you approve each command to run unsandboxed."
        )
    else:
        text = (
            "bubblewrap NOT found: OS isolation is off. The agent still runs as a separate "
            "process with a scrubbed environment, but the shell tool is refused unless you "
            "approve each command to run unsandboxed. Install bubblewrap (package 'bubblewrap')."
        )
    return SandboxStatus(
        available=available, bwrap_path=str(path) if path else None, explanation=text
    )


class SettingsController(WorkerController):
    """Reads and changes what the settings screen shows.

    Signals:
        settings_changed: The saved :class:`app.settings.AppSettings`.
        rules_loaded: A list of :class:`RuleRow` (user rules and the workspace's).
        sandbox_detected: A :class:`SandboxStatus`.
        kv_states_measured: A :class:`SavedStateUsage`.
        notice: A sentence for the user about what was done.
        error: A sentence for the user.
        busy_changed: Whether work is in flight.
    """

    settings_changed = Signal(object)
    rules_loaded = Signal(list)
    sandbox_detected = Signal(object)
    kv_states_measured = Signal(object)
    notice = Signal(str)
    error = Signal(str)

    def __init__(
        self,
        paths: AppPaths,
        settings: AppSettings,
        *,
        rule_store_factory: Callable[..., RuleStore] | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.paths = paths
        self._settings = settings
        self._rule_store_factory = rule_store_factory or self._default_rule_store
        self._store: RuleStore | None = None  # created and used on the worker thread only
    @property
    def settings(self) -> AppSettings:
        """The settings as last saved."""
        return self._settings

    @property
    def workspace(self) -> str | None:
        """The workspace whose rules are shown next to the user's."""
        return self._settings.workspace

    def _default_rule_store(self, workspace: Path | None = None) -> RuleStore:
        from agent.host.policy import RuleStore

        return RuleStore(self.paths.database, workspace=workspace)

    def _rules(self) -> RuleStore:
        if self._store is None:
            self._store = self._rule_store_factory()
        return self._store

    # -- actions ------------------------------------------------------------------------

    def refresh(self) -> None:
        """Load the rules and detect the sandbox."""
        self._worker.submit(self._load_rules, self.rules_loaded.emit, self._report)
        self._worker.submit(detect_sandbox, self.sandbox_detected.emit, self._report)
        self._worker.submit(self._measure_kv_states, self.kv_states_measured.emit, self._report)

    def save_preferences(
        self, *, user: int, project: int, session: int, auto_lock_minutes: int
    ) -> None:
        """Persist the token capacity of each memory level and the vault's auto-lock delay."""
        try:
            capacities = MemoryCapacities(user=user, project=project, session=session)
            updated = AppSettings.model_validate(
                {
                    **self._settings.model_dump(),
                    "memory": capacities.model_dump(),
                    "auto_lock_minutes": auto_lock_minutes,
                }
            )
        except ValueError as e:
            self.error.emit(f"Invalid setting: {e}")
            return
        self._save(updated)

    def save_kv_state_cap(self, cap_mb: int) -> None:
        """Persist the cap on sessions' saved model state and apply it to the files now.

        A lower cap deletes the oldest files until the rest fit (what the
        agent host does at its next save anyway); 0 turns saving and
        restoring off and leaves the files for "Delete saved states". An
        agent already running keeps the cap it started with: the new one
        holds from the next session opened (or the next model change).
        """
        try:
            updated = AppSettings.model_validate(
                {**self._settings.model_dump(), "kv_state_cap_mb": cap_mb}
            )
        except ValueError as e:
            self.error.emit(f"Invalid setting: {_first(e)}")
            return
        self._save(updated)

        def work() -> tuple[list[str], SavedStateUsage]:
            removed = self._kv_store(cap_mb).enforce_cap() if cap_mb > 0 else []
            return removed, self._measure_kv_states()

        def done(result: tuple[list[str], SavedStateUsage]) -> None:
            removed, usage = result
            self.kv_states_measured.emit(usage)
            if cap_mb == 0:
                self.notice.emit(
                    "Saved model state is off for the sessions you open from now on: they "
                    "read their conversation again. The states on disk stay until you delete them."
                )
            elif removed:
                self.notice.emit(
                    f"Cap set to {cap_mb} MB: the {len(removed)} oldest saved states were deleted."
                )

        self._worker.submit(work, done, self._report)

    def delete_kv_states(self) -> None:
        """Delete every session's saved model state (the sessions themselves stay)."""

        def work() -> tuple[int, SavedStateUsage]:
            store = self._kv_store(0)
            saved = store.files()
            for state in saved:
                store.remove_session(state.key)
            return len(saved), self._measure_kv_states()

        def done(result: tuple[int, SavedStateUsage]) -> None:
            deleted, usage = result
            self.kv_states_measured.emit(usage)
            self.notice.emit(f"Deleted the saved model state of {deleted} session(s).")

        self._worker.submit(work, done, self._report)

    def pin_host(self, text: str) -> bool:
        """Pin a host: the proxy passes its HTTPS through uninspected, never with a capability.

        For programs that pin a server's certificate and so fail through the
        proxy's session CA. The change holds from the next errand (a running
        one keeps the proxy it started with).

        Returns:
            Whether ``text`` was a host and is being saved; otherwise
            :attr:`error` says what is wrong with it and nothing is saved.
        """
        from agent.host.egress.settings import pinned_host

        try:
            host = pinned_host(text)
        except ValueError as e:
            self.error.emit(f"Cannot pin {text.strip()!r}: {e}")
            return False
        hosts = list(self._settings.egress_pinned_hosts)
        if host in hosts:
            self.notice.emit(f"{host} is already pinned.")
            return True
        self._save(
            self._settings.model_copy(update={"egress_pinned_hosts": [*hosts, host]}),
            then=f"Pinned {host}: its HTTPS passes through uninspected and can never carry "
            "a capability, from the next errand on.",
        )
        return True

    def unpin_host(self, host: str) -> None:
        """Unpin a host: its HTTPS is inspected again (and may carry a capability)."""
        hosts = list(self._settings.egress_pinned_hosts)
        if host not in hosts:
            self.notice.emit(f"{host} is not pinned.")
            return
        hosts.remove(host)
        self._save(
            self._settings.model_copy(update={"egress_pinned_hosts": hosts}),
            then=f"Unpinned {host}: its HTTPS is inspected again from the next errand on.",
        )

    def add_rule(self, tool: str, pattern: str, action: str, scope: str) -> None:
        """Save a rule for the user (``scope="user"``) or the current workspace.

        An empty pattern means every call of the tool (``*``). An invalid rule
        is reported through :attr:`error` with the policy engine's reason.
        """
        if scope == "workspace" and not self.workspace:
            self.error.emit("Choose a workspace first: no workspace rules without one.")
            return
        from pydantic import ValidationError

        from agent.host.policy import Rule

        try:
            rule = Rule(tool=tool, pattern=pattern.strip() or "*", action=action, scope=scope)
        except ValidationError as e:
            self.error.emit(f"Rule {tool}({pattern.strip() or '*'}) is invalid: {_first(e)}")
            return
        workspace = self._workspace_path() if scope == "workspace" else None

        def work() -> list[RuleRow]:
            self._rules().add(rule, workspace=workspace)
            return self._load_rules()

        self._worker.submit(work, self.rules_loaded.emit, self._report)

    def remove_rule(self, row: RuleRow) -> None:
        """Delete a saved rule."""

        def work() -> list[RuleRow]:
            self._rules().remove(row.rule_id)
            return self._load_rules()

        self._worker.submit(work, self.rules_loaded.emit, self._report)

    # -- helpers ----------------------------------------------------------------------

    def _workspace_path(self) -> Path | None:
        return Path(self.workspace) if self.workspace else None

    def _kv_store(self, cap_mb: int) -> StateStore:
        from models.kvstate import StateStore

        return StateStore(self.paths.kvstate_dir, cap_mb * 1024 * 1024)

    def _measure_kv_states(self) -> SavedStateUsage:
        files = self._kv_store(0).files()
        return SavedStateUsage(files=len(files), size=sum(f.size for f in files))

    def _load_rules(self) -> list[RuleRow]:
        # stored() gives this workspace's rules first, then the user's.
        return [_rule_row(s) for s in self._rules().stored(self._workspace_path())]

    def _save(self, settings: AppSettings, then: str | None = None) -> None:
        def work() -> AppSettings:
            save_settings(self.paths, settings)
            return settings

        def done(saved: AppSettings) -> None:
            # Update the shared settings object in place: the rest of the app
            # holds the same instance (AppServices.settings).
            for name in AppSettings.model_fields:
                setattr(self._settings, name, getattr(saved, name))
            self.settings_changed.emit(self._settings)
            if then is not None:
                self.notice.emit(then)

        self._worker.submit(work, done, self._report)

    def _report(self, error: Exception) -> None:
        self.error.emit(_first(error) or type(error).__name__)


def _rule_row(stored: StoredRule) -> RuleRow:
    rule = stored.rule
    return RuleRow(
        rule_id=stored.id,
        tool=rule.tool,
        pattern=rule.pattern,
        action=rule.action,
        scope=rule.scope,
        workspace=stored.workspace,
    )


def _first(error: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(error, ValidationError) and error.errors():
        return str(error.errors()[0].get("msg", error)).removeprefix("Value error, ")
    return str(error)
