"""The tools the agent can call; the host runs them (see :mod:`agent.host.tools.registry`).

Importing a tool module loads only its argument schema and implementation;
nothing here imports the vault broker or the memory service at import time,
so the agent process can import the schemas.
"""
