"""The configured MCP servers and the tool definitions the user approved, in ``keyless.db``.

A server is a stdio command (run in its own sandbox). Each approved tool is
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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.errors import McpError

#: Server names: they prefix tool names (``files.read``) and rule patterns.
SERVER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,22}$")


class McpServerConfig(BaseModel):
    """One configured MCP server.

    Attributes:
        name: Short name; its tools are offered as ``name.tool``.
        command: The program to start (stdio transport).
        args: Its arguments.
        workspace_writable: Bind the workspace read-write (default read-only).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Short name; tools are offered as name.tool.")
    command: str = Field(min_length=1, description="The program to start.")
    args: list[str] = Field(default_factory=list, description="Its arguments.")
    workspace_writable: bool = Field(default=False, description="Workspace read-write.")

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
