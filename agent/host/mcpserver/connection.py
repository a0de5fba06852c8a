"""One running MCP server: its sandboxed process and the SDK client session.

The ``mcp`` SDK is asyncio; the host's dispatch is synchronous threads. Each
connection runs its client session on a thread of its own with its own event
loop, and the host calls into it with :func:`asyncio.run_coroutine_threadsafe`
and a timeout. Any failure (the process exits, a call hangs past its timeout,
a reply is malformed or too large) marks the connection down and stops the
process; the hub starts a fresh one on the next errand or on demand.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import timedelta
from typing import Any, TypeVar

import jsonschema

from agent.errors import McpError, McpServerDownError
from agent.host.mcpserver.store import ToolDefinition

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a server may take to start and list its tools.
START_TIMEOUT_S = 20.0
#: Seconds one tool call may take.
CALL_TIMEOUT_S = 30.0
#: Bytes of text one result may carry before the server counts as flooding.
RESULT_LIMIT_BYTES = 1024 * 1024


def result_text(result: Any, *, limit: int = RESULT_LIMIT_BYTES) -> tuple[str, bool]:
    """The text of an MCP ``CallToolResult`` and whether the server reported an error.

    Text blocks are joined; other blocks (images, audio, resources) are named,
    not passed on.

    Raises:
        McpServerDownError: The result is larger than ``limit`` (flooding).
    """
    parts: list[str] = []
    size = 0
    for block in getattr(result, "content", None) or []:
        kind = getattr(block, "type", "unknown")
        text = getattr(block, "text", None) if kind == "text" else f"[{kind} content not shown]"
        text = str(text)
        size += len(text.encode("utf-8", errors="replace"))
        if size > limit:
            raise McpServerDownError(f"the result is larger than {limit} bytes (flooding)")
        parts.append(text)
    return "\n".join(parts), bool(getattr(result, "isError", False))


def check_definition(tool: Any) -> ToolDefinition:
    """A listed MCP tool as a :class:`ToolDefinition`, its input schema checked.

    Raises:
        McpError: The name is not usable or the schema is not a JSON schema of an object.
    """
    name = str(getattr(tool, "name", ""))
    if not name or len(name) > 40 or not all(c.isalnum() or c in "_-" for c in name):
        raise McpError(f"tool name {name[:60]!r} is not 1-40 letters, digits, '_' or '-'")
    schema = getattr(tool, "inputSchema", None)
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise McpError(f"tool {name!r}: its input schema is not a JSON schema of an object")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise McpError(f"tool {name!r}: its input schema is invalid: {e.message}") from e
    return ToolDefinition(name=name, description=str(tool.description or ""), input_schema=schema)


class McpConnection:
    """A started MCP stdio server and its client session, on a thread of its own.

    Args:
        name: The server's name (for messages).
        argv: The full command line (already wrapped in the sandbox).
        env: The environment of the process (bubblewrap clears it again inside).
        cwd: Its working directory.
        start_timeout: Seconds to start and list tools.
        call_timeout: Seconds one call may take.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        cwd: str | None = None,
        start_timeout: float = START_TIMEOUT_S,
        call_timeout: float = CALL_TIMEOUT_S,
    ) -> None:
        self.name = name
        self._argv = list(argv)
        self._env = env
        self._cwd = cwd
        self._start_timeout = start_timeout
        self.call_timeout = call_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: Any = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.tools: list[Any] = []
        self.down_reason: str | None = None

    @property
    def up(self) -> bool:
        """Started, and not marked down."""
        return self._ready.is_set() and self.down_reason is None and self._session is not None

    def start(self) -> None:
        """Start the process, initialize the session and list the tools.

        Raises:
            McpServerDownError: It did not start or list its tools in time.
        """
        self._thread = threading.Thread(target=self._main, name=f"mcp-{self.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._start_timeout):
            self.mark_down(f"it did not start within {self._start_timeout:g} s")
        if self.down_reason is not None:
            raise McpServerDownError(f"MCP server {self.name!r} is down: {self.down_reason}")

    def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        """Call ``tool`` and return the SDK's ``CallToolResult``.

        Raises:
            McpServerDownError: The server is down, or broke during this call
                (it is then marked down and stopped).
        """
        if not self.up:
            raise McpServerDownError(
                f"MCP server {self.name!r} is down: {self.down_reason or 'not started'}"
            )
        timeout = timedelta(seconds=self.call_timeout)
        return self._run(
            self._session.call_tool(tool, arguments, read_timeout_seconds=timeout),
            self.call_timeout + 1,
        )

    def mark_down(self, reason: str) -> None:
        """Record why the server is unusable and stop its process."""
        if self.down_reason is None:
            self.down_reason = reason
            log.info("MCP server %s is down: %s", self.name, reason)
        self._ready.set()
        self.close()

    def close(self) -> None:
        """Stop the session and the process (the SDK closes stdin, then terminates)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # the loop already ended
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        loop = self._loop
        assert loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except FutureTimeout as e:
            future.cancel()
            self.mark_down(f"a call took longer than {timeout:g} s (hung)")
            raise McpServerDownError(f"MCP server {self.name!r} hung; it was stopped") from e
        except McpServerDownError:
            raise
        except Exception as e:  # the SDK's McpError, a closed stream, a broken message
            reason = _describe(e)
            if "timed out" in reason.lower():
                self.mark_down(f"a call took longer than {self.call_timeout:g} s (hung)")
                raise McpServerDownError(
                    f"MCP server {self.name!r} hung (no answer in {self.call_timeout:g} s); "
                    "it was stopped"
                ) from e
            if not _is_tool_level(e):
                self.mark_down(reason)
            raise McpServerDownError(f"MCP server {self.name!r} failed: {reason}") from e

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported, never raised on a background thread
            self.down_reason = self.down_reason or f"it stopped: {_describe(e)}"
        finally:
            if self.down_reason is None:
                self.down_reason = "it exited"
            self._session = None
            self._ready.set()

    async def _serve(self) -> None:
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        params = StdioServerParameters(
            command=self._argv[0], args=self._argv[1:], env=self._env, cwd=self._cwd
        )
        with open(os.devnull, "w") as errlog:  # noqa: PTH123  # the server's stderr is not shown
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                listed = await session.list_tools()
                self.tools = list(listed.tools)
                self._session = session
                self._ready.set()
                await self._stop.wait()


def _is_tool_level(error: BaseException) -> bool:
    """An error the server reported for one call (bad arguments), the connection intact."""
    from mcp.shared.exceptions import McpError as SdkMcpError

    if not isinstance(error, SdkMcpError):
        return False
    code = getattr(getattr(error, "error", None), "code", None)
    return code in (-32602, -32601)  # invalid params, method not found


def _describe(error: BaseException) -> str:
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in error.exceptions)
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
