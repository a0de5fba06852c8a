"""The agent: protocol, executor, tools, sandbox and permission policy."""
