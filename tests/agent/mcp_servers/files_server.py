"""A small file tool server: lists and reads files of its working directory (the workspace)."""

from __future__ import annotations

from pathlib import Path

from mcp.server.fastmcp import FastMCP

server = FastMCP("files")


@server.tool()
def list_names() -> str:
    """List the names of the files in the workspace."""
    return "\n".join(sorted(p.name for p in Path.cwd().iterdir()))


@server.tool()
def read_text(path: str) -> str:
    """Read a text file of the workspace."""
    return (Path.cwd() / path).read_text(encoding="utf-8")


@server.tool()
def write_text(path: str, text: str) -> str:
    """Write a text file in the workspace."""
    (Path.cwd() / path).write_text(text, encoding="utf-8")
    return f"wrote {len(text)} characters"


if __name__ == "__main__":
    server.run()
