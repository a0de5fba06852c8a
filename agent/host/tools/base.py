"""The pieces every tool is made of: its spec, the context it runs in, its output.

A tool is one module defining an ``Args`` pydantic model (a described field
each, so the JSON schema the model is decoded against is generated, never
written by hand) and ``TOOL = ToolSpec(...)``. The host runs tools through
:func:`agent.host.tools.registry.run_tool`, which validates the arguments first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.errors import ToolDeniedError
from agent.host.ports import BrokerPort, MemoryPort
from agent.host.sandbox import Limits, Sandbox
from agent.host.tools.paths import Workspace

if TYPE_CHECKING:
    from agent.host.egress.proxy import EgressProxy

#: What a call does, for the policy defaults: reads are allowed inside the
#: workspace, everything else asks unless a rule decides. ``egress`` is a
#: request a sandboxed command sends through the egress proxy (the ``net``
#: rule kind); unlike ``network`` it asks in a tainted context only when it
#: carries a capability.
Effect = Literal[
    "read", "write", "execute", "network", "egress", "memory_read", "memory_write", "final"
]

#: How a rule's pattern matches the tool's main argument: a workspace path glob
#: (``src/**``), a shell command (split on separators, prefix matches), an
#: HTTP host (``domain:*.example.com``), a proxied request (``host[, METHOD...]``
#: over the ``host`` argument and the call's ``method``), or a plain glob
#: (memory topics).
PatternKind = Literal["path", "command", "domain", "request", "glob"]

#: How large a tool result may be before it is cut (bytes of UTF-8).
DEFAULT_OUTPUT_BYTES = 32 * 1024
#: Bytes kept free for the "[truncated …]" marker.
MARKER_RESERVE = 100


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ArgsModel(BaseModel):
    """Base of every tool's ``Args``: unknown fields are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ToolOutput(BaseModel):
    """What a tool returns to the host (and, after the policy and audit, to the agent)."""

    model_config = ConfigDict(frozen=True)

    content: str = Field(description="Text shown to the model.")
    truncated: bool = Field(default=False, description="Whether content was cut at a limit.")
    untrusted: bool = Field(
        default=True,
        description="Whether content comes from outside the user (files, web, command output).",
    )
    redacted: list[str] = Field(
        default_factory=list, description="Names of secrets the broker removed from the content."
    )
    final: bool = Field(default=False, description="Whether this ends the errand (finish).")


@dataclass
class ToolContext:
    """Everything a tool may touch; built by the host for one errand.

    Attributes:
        workspace: The directory file tools are confined to.
        session_id: The errand's session, passed to the broker and memory.
        sandbox: The shell sandbox (``None`` means no shell at all).
        broker: The vault broker, or ``None`` when no vault is open.
        memory: The memory service, or ``None`` when memory is off.
        unsandboxed_approved: The user gave the separate "run unsandboxed"
            approval for this one call (only read by ``shell``).
        limits: Resource limits for shell commands.
        output_bytes: Size limit of a tool's content.
        read_bytes: Size limit of one ``read_file``.
        hidden_paths: Paths no tool may touch: the shell sandbox hides them,
            the file tools refuse them (data dir with the vault, config dir,
            the keyring's files), wherever they lie.
        tainted: Untrusted content is in the agent's context (memory the agent
            writes then is stamped untrusted and waits for review).
        memory_source: Builds the provenance stamped on memory the agent
            writes; ``None`` builds ``memory.frontmatter.Provenance``.
        may_read: Whether a workspace-relative path may be read; tools that
            read many files (``search_files``) skip the others, so a deny rule
            on ``read_file`` cannot be dodged by searching
            (:meth:`agent.host.policy.PolicyEngine.read_filter`).
        egress: The session's egress proxy: a sandboxed ``shell`` command
            reaches the network only through it; ``None``: no network.
        now: The clock (a parameter so tests can fix time).
    """

    workspace: Path
    session_id: str
    sandbox: Sandbox | None = None
    broker: BrokerPort | None = None
    memory: MemoryPort | None = None
    unsandboxed_approved: bool = False
    limits: Limits = field(default_factory=Limits)
    output_bytes: int = DEFAULT_OUTPUT_BYTES
    read_bytes: int = 64 * 1024
    hidden_paths: tuple[Path, ...] = ()
    tainted: bool = False
    memory_source: Callable[[], Any] | None = None
    may_read: Callable[[str], bool] | None = None
    egress: EgressProxy | None = None
    now: Callable[[], datetime] = _utc_now

    def files(self) -> Workspace:
        """The workspace as the file tools see it, with the hidden paths refused."""
        return Workspace(self.workspace, refused=self.hidden_paths)


ToolRun = Callable[[Any, ToolContext], ToolOutput]


@dataclass(frozen=True)
class ToolSpec:
    """A tool: its name, what it is for, its arguments and how to run it.

    Attributes:
        name: The name the model calls it by.
        description: One or two sentences shown to the model.
        args_model: The pydantic model its arguments validate against.
        effect: What the call does, for the policy's defaults.
        run: ``run(args, ctx) -> ToolOutput``; raises ``ToolError`` subclasses.
        main_argument: The argument rule patterns match (``path``, ``command``,
            ``url``); None when rules name the tool only (``finish(*)``).
        pattern: How a rule's pattern matches ``main_argument``.
        capability_argument: The argument that may carry a ``cap_`` handle;
            a call that passes one asks once untrusted content is in the context.
        reads_content: The tool shows a file's content: files that usually
            hold credentials ask by default, and its deny rules also keep
            those files out of tools that read many (``search_files``).
    """

    name: str
    description: str
    args_model: type[ArgsModel]
    effect: Effect
    run: ToolRun
    main_argument: str | None = None
    pattern: PatternKind = "glob"
    capability_argument: str | None = None
    reads_content: bool = False

    def schema(self) -> dict[str, Any]:
        """The generated JSON schema of the arguments."""
        return self.args_model.model_json_schema()


def decided_elsewhere(reason: str) -> ToolRun:
    """The ``run`` of a rule kind that is never called as a tool (``net``, ``mcp``).

    Such a spec exists so the policy, the rule editor and the permission
    prompt know its arguments; the call itself is made by whoever the host
    allows (the egress proxy, an MCP server). Calling it is refused with
    ``reason``.
    """

    def run(args: Any, ctx: ToolContext) -> ToolOutput:
        del args, ctx
        raise ToolDeniedError(reason)

    return run


def truncate_text(text: str, limit: int, *, what: str = "output") -> tuple[str, bool]:
    """Cut ``text`` to at most ``limit`` bytes of UTF-8, with an explicit marker.

    Args:
        text: The text to cut.
        limit: Largest size in bytes of UTF-8 of the result, marker included.
        what: What is being cut, named in the marker.

    Returns:
        The (possibly cut) text and whether it was cut.
    """
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text, False
    # Room for the marker, so the result as a whole stays within the limit.
    budget = limit - MARKER_RESERVE if limit > 2 * MARKER_RESERVE else limit // 2
    kept = data[:budget].decode("utf-8", errors="ignore")
    dropped = len(data) - len(kept.encode("utf-8"))
    return f"{kept}\n[truncated {what}: {dropped} more bytes not shown]", True
