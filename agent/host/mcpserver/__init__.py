"""Model Context Protocol tool servers: configured, sandboxed, pinned, and offered as tools."""
