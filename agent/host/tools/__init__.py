"""The tools the agent can call; the host runs them (see :mod:`agent.host.tools.registry`).

Host side only: a tool imports what it uses (the vault broker, the memory
types, the sandbox) at module top. The agent process never imports a tool; it
learns each one from the :class:`agent.protocol.ToolOffer` the host sends.
"""
