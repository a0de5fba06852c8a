"""``net``: a request a sandboxed command sends through the egress proxy.

Not a tool the model calls: the host decides each request the egress proxy
(:mod:`agent.host.egress`) sees as a ``net`` call, by the same rules, prompt and
audit log as a tool call. It is registered as a rule kind
(:data:`agent.host.tools.registry.RULE_KINDS`), so the policy reads its data
like a tool's, the settings screen offers it for rules, and it is never offered
to the agent process nor run by :func:`agent.host.tools.registry.run_tool`.

Rules look like ``net(github.com)``, ``net(*.pypi.org, GET)`` or
``net(api.x.com, GET, POST)``: the ``request`` pattern kind.
"""

from __future__ import annotations

from pydantic import Field

from agent.host.tools.base import ArgsModel, ToolSpec, decided_elsewhere

NET_RULE = "net"
"""The name rules give the egress proxy's requests."""


class Args(ArgsModel):
    """What the policy and the permission prompt see of one proxied request."""

    host: str = Field(description="The host the request goes to (lower case).")
    method: str = Field(description="The HTTP method (upper case).")
    path: str = Field(default="/", description="The path and query of the request.")
    command: str = Field(default="", description="The shell command that sent the request.")
    capability: bool = Field(
        default=False, description="Whether the request carries a cap_ handle for the proxy."
    )


TOOL = ToolSpec(
    name=NET_RULE,
    description="A request a sandboxed command sends through the egress proxy.",
    args_model=Args,
    # Not "network": a command's requests are many, and the command was decided
    # already; tainted context makes one ask only when it carries a capability.
    effect="egress",
    run=decided_elsewhere("net is decided by the egress proxy and cannot be called"),
    main_argument="host",
    pattern="request",
    capability_argument="capability",
)
