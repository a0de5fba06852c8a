"""The configured MCP servers and the tool definitions the user approved, in ``keyless.db``.

A server is a stdio command (run in its own sandbox) or a streamable-HTTP
URL (reached from the host under the ``net(...)`` rules). Each approved tool is
pinned by a digest of its name, description and input schema, with the text
kept so a later change can be shown as a difference (the "rug pull": a server
that changes a tool after it was approved is asked about again).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.errors import McpError

#: Server names: they prefix tool names (``files.read``) and rule patterns.
SERVER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,22}$")
#: Environment variable names a server's secret handle may be given in.
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class McpSecret(BaseModel):
    """A vault secret a stdio server uses, given to it as a ``cap_`` handle.

    The server finds the handle in its environment variable ``env`` and sends
    it as a credential; the egress proxy swaps it for the secret on requests
    to ``host`` (the grant's scope) and nowhere else.

    Attributes:
        env: The variable the handle is put in.
        secret: The vault secret's name.
        host: The host the grant is scoped to (one of the server's hosts).
        port: Its port.
        inject: Where the proxy puts the secret (``Header-Name: template with {}``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    env: str = Field(description="The environment variable holding the handle.")
    secret: str = Field(min_length=1, max_length=200, description="The vault secret's name.")
    host: str = Field(min_length=1, description="The host the grant is scoped to.")
    port: int = Field(default=443, gt=0, lt=65536, description="The host's port.")
    inject: str = Field(
        default="Authorization: Bearer {}", description="Header the proxy puts the secret in."
    )

    @field_validator("env")
    @classmethod
    def _env(cls, value: str) -> str:
        if not ENV_NAME.match(value):
            raise ValueError(f"{value[:70]!r} is not an environment variable name")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _host_name(value)

    @field_validator("inject")
    @classmethod
    def _inject(cls, value: str) -> str:
        from vault.grants import header_injection

        header_injection(value)  # raises ValueError naming the problem
        return value


def _host_name(value: str) -> str:
    host = value.strip().lower().rstrip(".")
    if not host or any(c in host for c in "/:@ *?") or len(host) > 253:
        raise ValueError(f"{value[:100]!r} is not a host name")
    return host


def parse_host(text: str) -> tuple[str, int]:
    """``host`` or ``host:port`` as a checked host name and a port (443 by default).

    Raises:
        ValueError: Not a host name, or a bad port.
    """
    host, sep, port = text.strip().rpartition(":") if ":" in text else (text, "", "")
    if sep and not port.isdigit():
        raise ValueError(f"{text[:100]!r}: the port must be a number")
    number = int(port) if sep else 443
    if not 0 < number < 65536:
        raise ValueError(f"{text[:100]!r}: the port must be 1-65535")
    return _host_name(host), number


class McpServerConfig(BaseModel):
    """One configured MCP server: a stdio command or a streamable-HTTP URL, not both.

    Attributes:
        name: Short name; its tools are offered as ``name.tool``.
        command: The program to start (stdio transport).
        args: Its arguments.
        url: The endpoint of a streamable-HTTP server (``https://host/mcp``).
        allow_local: Let ``url`` (or a stdio server's ``hosts``) reach this
            machine or the LAN (refused otherwise, as the broker and the egress
            proxy refuse them); plain ``http`` is accepted only then.
        workspace_writable: Bind the workspace read-write (default read-only).
        hosts: The hosts a stdio server may reach through the egress proxy
            (any other is refused); none: no network at all.
        secrets: Vault secrets given to a stdio server as ``cap_`` handles,
            each scoped to one of ``hosts``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Short name; tools are offered as name.tool.")
    command: str | None = Field(default=None, min_length=1, description="The program to start.")
    args: list[str] = Field(default_factory=list, description="Its arguments.")
    url: str | None = Field(default=None, description="A streamable-HTTP endpoint.")
    allow_local: bool = Field(default=False, description="url may be loopback or private.")
    workspace_writable: bool = Field(default=False, description="Workspace read-write.")
    hosts: list[str] = Field(
        default_factory=list, description="Hosts a stdio server may reach via the egress proxy."
    )
    secrets: list[McpSecret] = Field(
        default_factory=list, description="Vault secrets given as cap_ handles."
    )

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return sorted({_host_name(h) for h in value})

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either a command (stdio) or a URL (streamable HTTP), not both")
        if self.url is None:
            if self.allow_local and not self.hosts:
                raise ValueError("allow_local applies to a URL server or a server with hosts")
            for secret in self.secrets:
                if secret.host not in self.hosts:
                    raise ValueError(
                        f"secret {secret.env}: its host {secret.host!r} is not one of the "
                        "server's hosts"
                    )
            if len({s.env for s in self.secrets}) != len(self.secrets):
                raise ValueError("two secrets are given in the same environment variable")
            return self
        if self.args or self.workspace_writable or self.hosts or self.secrets:
            raise ValueError("a URL server takes no arguments, workspace, hosts or secrets")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the URL must be http(s)://host[:port]/path, got {self.url[:100]!r}")
        if parts.username or parts.password:
            raise ValueError("the URL must not carry credentials")
        try:
            parts.port  # noqa: B018  # urlsplit checks the port only when asked
        except ValueError as e:
            raise ValueError(f"the URL has an invalid port: {self.url[:100]!r}") from e
        if parts.scheme != "https" and not self.allow_local:
            raise ValueError("a server that is not local needs https")
        return self

    @property
    def transport(self) -> str:
        """``"stdio"`` or ``"http"``."""
        return "http" if self.url is not None else "stdio"

    def describe(self) -> str:
        """The command line or the URL, for lists."""
        if self.url is not None:
            return self.url
        return " ".join([self.command or "", *self.args])

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SERVER_NAME.match(value):
            raise ValueError(
                f"server name {value!r} must be 1-23 of a-z, 0-9, '_', '-', starting with a letter"
            )
        return value


@dataclass(frozen=True)
class ToolDefinition:
    """A tool as a server describes it: what is pinned and compared."""

    name: str
    description: str
    input_schema: dict[str, Any]

    def canonical(self) -> str:
        """The definition as stable, readable JSON (what the digest and the diff are of)."""
        body = {
            "name": self.name,
            "description": self.description,
            "inputSchema": self.input_schema,
        }
        return json.dumps(body, sort_keys=True, indent=2, ensure_ascii=False)

    def digest(self) -> str:
        """SHA-256 of :meth:`canonical`."""
        return hashlib.sha256(self.canonical().encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PinCheck:
    """A server's tools compared with what the user approved.

    Attributes:
        approved: Tools unchanged since approval (offered).
        changed: Tools whose description or schema changed (held back).
        new: Tools never approved (held back).
        removed: Approved tools the server no longer lists.
        diff: A unified diff of the held-back tools against the pins.
    """

    approved: tuple[ToolDefinition, ...]
    changed: tuple[ToolDefinition, ...]
    new: tuple[ToolDefinition, ...]
    removed: tuple[str, ...]
    diff: str

    @property
    def pending(self) -> bool:
        """Whether something waits for the user's approval."""
        return bool(self.changed or self.new)


class McpStore:
    """``mcp_servers`` and ``mcp_pins`` tables of ``keyless.db``.

    Args:
        db_path: The SQLite database file (created if missing).
    """

    SERVERS = "mcp_servers"
    PINS = "mcp_pins"

    def __init__(self, db_path: Path) -> None:
        import sqlite_utils

        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite_utils.Database(db_path)
            self._db[self.SERVERS].create(  # type: ignore[union-attr]  # sqlite_utils: Table|View
                {"name": str, "config": str, "created_at": str}, pk="name", if_not_exists=True
            )
            self._db[self.PINS].create(  # type: ignore[union-attr]  # sqlite_utils: Table|View
                {"server": str, "tool": str, "digest": str, "definition": str, "approved_at": str},
                pk=("server", "tool"),
                if_not_exists=True,
            )
        except Exception as e:
            raise McpError(f"cannot open the MCP server store {db_path}: {e}") from e

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def add(self, config: McpServerConfig, *, now: datetime | None = None) -> None:
        """Save a new server.

        Raises:
            McpError: A server of that name exists.
        """
        table = self._db.table(self.SERVERS)
        if table.count_where("name = ?", [config.name]):
            raise McpError(f"an MCP server named {config.name!r} exists; remove it first")
        when = (now or datetime.now(UTC)).isoformat()
        table.insert({"name": config.name, "config": config.model_dump_json(), "created_at": when})

    def remove(self, name: str) -> None:
        """Forget a server and its pins.

        Raises:
            McpError: No such server.
        """
        table = self._db.table(self.SERVERS)
        if not table.count_where("name = ?", [name]):
            raise McpError(f"no MCP server named {name!r}")
        table.delete(name)
        self._db.execute(f"DELETE FROM {self.PINS} WHERE server = ?", [name])
        self._db.conn.commit()

    def servers(self) -> list[McpServerConfig]:
        """Every configured server, by name.

        Raises:
            McpError: A saved row does not validate; the message names it.
        """
        out = []
        for row in self._db.table(self.SERVERS).rows_where(order_by="name"):
            try:
                out.append(McpServerConfig.model_validate_json(row["config"]))
            except ValidationError as e:
                raise McpError(f"saved MCP server {row['name']!r} is invalid: {e}") from e
        return out

    def server(self, name: str) -> McpServerConfig:
        """The server ``name``.

        Raises:
            McpError: No such server.
        """
        for config in self.servers():
            if config.name == name:
                return config
        raise McpError(f"no MCP server named {name!r}")

    def pins(self, server: str) -> dict[str, ToolDefinition]:
        """The approved definitions of ``server``'s tools, by tool name."""
        out: dict[str, ToolDefinition] = {}
        for row in self._db.table(self.PINS).rows_where("server = ?", [server]):
            body = json.loads(row["definition"])
            out[row["tool"]] = ToolDefinition(
                name=body["name"], description=body["description"], input_schema=body["inputSchema"]
            )
        return out

    def approve(
        self, server: str, tools: Iterable[ToolDefinition], *, now: datetime | None = None
    ) -> None:
        """Pin exactly ``tools`` as ``server``'s approved tools (replacing earlier pins)."""
        when = (now or datetime.now(UTC)).isoformat()
        rows = [
            {
                "server": server,
                "tool": t.name,
                "digest": t.digest(),
                "definition": t.canonical(),
                "approved_at": when,
            }
            for t in tools
        ]
        with self._db.conn:
            self._db.execute(f"DELETE FROM {self.PINS} WHERE server = ?", [server])
            if rows:
                self._db.table(self.PINS).insert_all(rows)

    def check(self, server: str, tools: Iterable[ToolDefinition]) -> PinCheck:
        """Compare what ``server`` lists now with its pins."""
        pins = self.pins(server)
        approved, changed, new = [], [], []
        diff: list[str] = []
        current = list(tools)
        for tool in current:
            pinned = pins.get(tool.name)
            if pinned is None:
                new.append(tool)
                before: list[str] = []
            elif pinned.digest() == tool.digest():
                approved.append(tool)
                continue
            else:
                changed.append(tool)
                before = pinned.canonical().splitlines(keepends=True)
            after = tool.canonical().splitlines(keepends=True)
            diff += difflib.unified_diff(
                before, after, f"{server}.{tool.name} (approved)", f"{server}.{tool.name} (now)"
            )
            diff.append("\n")
        names = {t.name for t in current}
        removed = tuple(sorted(n for n in pins if n not in names))
        return PinCheck(tuple(approved), tuple(changed), tuple(new), removed, "".join(diff))
