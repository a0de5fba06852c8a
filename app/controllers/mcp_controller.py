"""The MCP servers of the Settings screen: list, add, remove, test, approve.

The same store and hub as ``keyless mcp`` (:mod:`app.cli_mcp`): servers and
pinned tool definitions in ``keyless.db``; a test starts the server (a stdio
one in its sandbox, a URL one from the host under the ``net(...)`` rules),
compares its tools with the pins and shows the difference; approving pins
the tools as listed now. Every job runs on one worker thread, which opens
and closes the store itself (an SQLite connection belongs to its thread).
"""

from __future__ import annotations

import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.controllers.jobs import SerialWorker
from app.qt import QObject, Signal
from app.services import AppServices


@dataclass(frozen=True)
class McpServerRow:
    """One configured server as the Settings screen lists it.

    Attributes:
        name: Its name (tools are offered as ``name.tool``).
        transport: ``"stdio"`` or ``"http"``.
        target: The command line or the URL.
        detail: Workspace access or local-address permission, in words.
        approved: How many tools are pinned.
        state: ``"not tested"``, ``"up"``, ``"pending"`` (changes wait for
            approval) or ``"down"``.
        reason: Why it is down, or what waits for approval.
    """

    name: str
    transport: str
    target: str
    detail: str
    approved: int
    state: str = "not tested"
    reason: str = ""


@dataclass(frozen=True)
class McpTestReport:
    """What a test (or an approval) of one server found.

    Attributes:
        name: The server.
        state: ``"up"``, ``"pending"`` or ``"down"``.
        reason: Why it is down, or what waits for approval.
        lines: One line per tool: approved, CHANGED, new, removed, left out.
        diff: The unified difference between the pinned and the listed definitions.
    """

    name: str
    state: str
    reason: str
    lines: list[str] = field(default_factory=list)
    diff: str = ""

    @property
    def pending(self) -> bool:
        """Whether tools wait for the user's approval."""
        return self.state == "pending"


class McpController(QObject):
    """Reads and changes the configured MCP servers for the Settings screen.

    Args:
        services: The host's services (paths, protected paths, saved rules, workspace).
        parent: The Qt parent.

    Signals:
        servers_loaded: A list of :class:`McpServerRow`.
        added: The name of a server just added.
        tested: A :class:`McpTestReport` (after a test or an approval).
        notice: A sentence saying what was done.
        error: A sentence saying what went wrong.
        busy_changed: Whether work is in flight.
    """

    servers_loaded = Signal(list)
    added = Signal(str)
    tested = Signal(object)
    notice = Signal(str)
    error = Signal(str)
    busy_changed = Signal(bool)

    def __init__(self, services: AppServices, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self._states: dict[str, tuple[str, str]] = {}
        self._worker = SerialWorker(self)
        self._worker.busy_changed.connect(self.busy_changed)

    @property
    def busy(self) -> bool:
        """Whether work is in flight."""
        return self._worker.busy

    def wait(self, msecs: int = -1) -> bool:
        """Block until queued work ran (shutdown and tests)."""
        return self._worker.wait(msecs)

    # -- actions ------------------------------------------------------------------------

    def refresh(self) -> None:
        """List the configured servers."""
        self._worker.submit(self._rows, self.servers_loaded.emit, self._report)

    def add_command(self, name: str, command_line: str, *, writable: bool = False) -> None:
        """Add a stdio server: ``command_line`` is split as a shell would (quotes kept together)."""
        try:
            argv = shlex.split(command_line)
        except ValueError as e:
            self.error.emit(f"Cannot read the command line: {e}")
            return
        if not argv:
            self.error.emit("Give the server's command (and its arguments).")
            return
        self._add(
            name, {"command": argv[0], "args": argv[1:], "workspace_writable": writable}
        )

    def add_url(self, name: str, url: str, *, allow_local: bool = False) -> None:
        """Add a streamable-HTTP server; its requests are decided by the ``net(...)`` rules."""
        if not url.strip():
            self.error.emit("Give the server's URL (https://host/mcp).")
            return
        self._add(name, {"url": url.strip(), "allow_local": allow_local})

    def remove(self, name: str) -> None:
        """Remove a server and its approvals."""

        def work() -> list[McpServerRow]:
            store = self._store()
            try:
                store.remove(name)
            finally:
                store.close()
            self._states.pop(name, None)
            return self._rows()

        def done(rows: list[McpServerRow]) -> None:
            self.notice.emit(f"Removed {name} and its approved tools.")
            self.servers_loaded.emit(rows)

        self._worker.submit(work, done, self._report)

    def test(self, name: str) -> None:
        """Start the server, list its tools and compare them with what was approved."""
        self._with_hub(name, lambda hub: _report_of(name, hub.connect([name])[0]))

    def approve(self, name: str) -> None:
        """Pin the server's tools as it lists them now (after the user saw the difference)."""

        def approve(hub: Any) -> McpTestReport:
            hub.approve(name)
            return _report_of(name, hub.status[name])

        self._with_hub(name, approve)

    # -- helpers ----------------------------------------------------------------------

    def _store(self) -> Any:
        from agent.host.mcpserver.store import McpStore

        return McpStore(self.services.paths.database)

    def _rows(self) -> list[McpServerRow]:
        store = self._store()
        try:
            rows = []
            for config in store.servers():
                if config.url is not None:
                    detail = "local address allowed" if config.allow_local else "public address"
                else:
                    detail = "workspace read-write" if config.workspace_writable else (
                        "workspace read-only"
                    )
                    if config.hosts:
                        detail += f"; hosts {', '.join(config.hosts)}"
                    for secret in config.secrets:
                        detail += f"; {secret.env} = secret {secret.secret} for {secret.host}"
                state, reason = self._states.get(config.name, ("not tested", ""))
                rows.append(
                    McpServerRow(
                        name=config.name, transport=config.transport, target=config.describe(),
                        detail=detail, approved=len(store.pins(config.name)), state=state,
                        reason=reason,
                    )
                )  # fmt: skip
            return rows
        finally:
            store.close()

    def _add(self, name: str, fields: dict[str, Any]) -> None:
        from agent.host.mcpserver.store import McpServerConfig

        try:
            config = McpServerConfig(name=name.strip(), **fields)
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            self.error.emit(str(first["msg"]).removeprefix("Value error, "))
            return

        def work() -> list[McpServerRow]:
            store = self._store()
            try:
                store.add(config)
            finally:
                store.close()
            return self._rows()

        def done(rows: list[McpServerRow]) -> None:
            self.notice.emit(f"Added {config.name}: test it, then approve its tools.")
            self.servers_loaded.emit(rows)
            self.added.emit(config.name)

        self._worker.submit(work, done, self._report)

    def _with_hub(self, name: str, action: Any) -> None:
        def work() -> tuple[McpTestReport, list[McpServerRow]]:
            from app.cli_mcp import hub_for

            store = self._store()
            # Without a chosen workspace a stdio server sees an empty directory,
            # never whatever directory the app was started in.
            with tempfile.TemporaryDirectory(prefix="keyless-mcp-") as empty:
                hub = hub_for(self.services, store, self.services.workspace or Path(empty))
                try:
                    store.server(name)
                    report = action(hub)
                finally:
                    hub.close()
                    store.close()
            self._states[name] = (report.state, report.reason)
            return report, self._rows()

        def done(result: tuple[McpTestReport, list[McpServerRow]]) -> None:
            report, rows = result
            self.servers_loaded.emit(rows)
            self.tested.emit(report)

        self._worker.submit(work, done, self._report)

    def _report(self, error: Exception) -> None:
        self.error.emit(str(error) or type(error).__name__)


def _report_of(name: str, status: Any) -> McpTestReport:
    """A hub's ``ServerStatus`` as a :class:`McpTestReport`."""
    lines: list[str] = []
    diff = ""
    check = status.check
    if check is not None:
        # What needs the user's eyes first; the tools already approved last.
        lines += [f"CHANGED   {name}.{t.name}" for t in check.changed]
        lines += [f"new       {name}.{t.name}" for t in check.new]
        lines += [f"removed   {name}.{tool}" for tool in check.removed]
    lines += [f"left out: {problem}" for problem in status.rejected]
    if check is not None:
        lines += [f"approved  {name}.{t.name}" for t in check.approved]
        diff = check.diff
    return McpTestReport(name, status.state, status.reason, lines, diff)
