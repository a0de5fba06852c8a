"""The agent package's exceptions.

Three families, as in pydantic-ai: control flow the loop handles (a refused or
denied call, a cancelled errand), misuse of a tool by the model (arguments that
fail validation, a path outside the workspace) and runtime failures (the agent
process crashed, the pipe carried garbage, the sandbox could not start).
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class of every error raised by the agent package."""


class ProtocolError(AgentError):
    """A message on the agent pipe was malformed, oversized or of the wrong version."""


class AgentCrashedError(AgentError):
    """The agent process exited or stopped answering."""


class ErrandCancelledError(AgentError):
    """The user cancelled the errand."""


class ToolError(AgentError):
    """A tool call could not be carried out; the message is shown to the model."""


class ToolValidationError(ToolError):
    """The tool's arguments did not validate against its schema."""


class UnknownToolError(ToolError):
    """The model asked for a tool that does not exist."""


class PathRefusedError(ToolError):
    """A path resolves outside the workspace, through a symlink, or to a protected file."""


class ToolDeniedError(ToolError):
    """The policy or the user refused the call."""


class SandboxError(AgentError):
    """The sandbox could not be set up or refused to run the command."""


class PolicyError(AgentError):
    """A permission rule is malformed."""


class AuditWriteError(AgentError):
    """The audit log could not record an action, so the action is not taken."""


class McpError(AgentError):
    """An MCP tool server is misconfigured, down, or answered something unusable."""


class McpServerDownError(McpError, ToolError):
    """The MCP server crashed, hung, flooded or broke the protocol; it is marked down."""
