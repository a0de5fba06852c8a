"""A tool server that calls an HTTPS API with the credential in its environment.

It holds only what the host put in ``API_TOKEN`` (a ``cap_`` handle) and
sends it as a Bearer token; its requests go wherever ``HTTPS_PROXY`` points
(the standard library's ``urllib`` honours it and ``SSL_CERT_FILE``).
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request

from mcp.server.fastmcp import FastMCP

server = FastMCP("api")


@server.tool()
def call_api(url: str) -> str:
    """GET an API URL with the API token as a Bearer credential."""
    request = urllib.request.Request(  # noqa: S310 (the test's https URL)
        url, headers={"Authorization": f"Bearer {os.environ.get('API_TOKEN', '')}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:  # noqa: S310
            return f"{response.status} {response.read().decode('utf-8', 'replace')}"
    except urllib.error.HTTPError as e:
        return f"{e.code} {e.read().decode('utf-8', 'replace')}"
    except OSError as e:
        return f"failed: {e}"


@server.tool()
def token() -> str:
    """The credential this server was given."""
    return os.environ.get("API_TOKEN", "(none)")


@server.tool()
def connect_directly(host: str, port: int) -> str:
    """Open a TCP connection without the proxy."""
    try:
        with socket.create_connection((host, port), timeout=5):
            return "connected"
    except OSError as e:
        return f"failed: {e}"


if __name__ == "__main__":
    server.run()
