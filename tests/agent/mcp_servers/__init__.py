"""MCP servers written with the SDK, started by the tests in their sandboxes."""
