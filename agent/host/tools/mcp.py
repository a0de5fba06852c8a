"""``mcp``: a call of an MCP server's tool, as the policy sees it.

Not a tool the model calls by this name: the agent calls ``server.tool`` (an
MCP server's tool, offered by :class:`agent.host.mcpserver.hub.McpHub`), and
the host decides that call as an ``mcp`` call whose main argument is the
``server.tool`` name (:func:`agent.host.mcpserver.hub.mcp_call`). It is registered as a rule kind
(:data:`agent.host.tools.registry.RULE_KINDS`), so the policy reads its data
like a tool's, rules look like ``mcp(github.*)`` (a glob over ``server.tool``),
the settings screen offers it for rules, and it is never offered to the agent
process nor run by :func:`agent.host.tools.registry.run_tool`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from agent.host.tools.base import ArgsModel, ToolSpec, decided_elsewhere

MCP_RULE = "mcp"
"""The name rules give MCP servers' tools: ``mcp(server.tool-glob)``."""


class Args(ArgsModel):
    """What the policy and the permission prompt see of one MCP tool call."""

    tool: str = Field(description="The tool called, as server.tool.")
    server: str = Field(default="", description="The MCP server the tool comes from.")
    arguments: dict[str, Any] = Field(
        default_factory=dict, description="The arguments the tool is called with."
    )


TOOL = ToolSpec(
    name=MCP_RULE,
    description="A call of an MCP server's tool (server.tool).",
    args_model=Args,
    # Like shell: code the user did not write runs; it asks unless a rule decides.
    effect="execute",
    run=decided_elsewhere("mcp is decided by the host and run by an MCP server"),
    main_argument="tool",
    pattern="glob",
)
