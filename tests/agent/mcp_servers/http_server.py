"""A streamable-HTTP MCP server on loopback: prints its port, then serves until killed.

Run as ``python http_server.py [PEM]``; the first line on stdout is the port it
listens on (127.0.0.1, chosen by the system). With ``PEM`` (a private key and
certificate chain in one file) it serves https.
"""

from __future__ import annotations

import socket
import sys

import uvicorn
from mcp.server.fastmcp import FastMCP
from mcp.server.transport_security import TransportSecuritySettings

# The SDK's DNS-rebinding guard checks the Host header: the tests reach this
# server by its address and by a name only their resolver knows.
server = FastMCP(
    "weather",
    transport_security=TransportSecuritySettings(
        allowed_hosts=["127.0.0.1:*", "weather.test:*"],
        allowed_origins=["http://127.0.0.1:*", "http://weather.test:*", "https://weather.test:*"],
    ),
)


@server.tool()
def forecast(city: str) -> str:
    """Tomorrow's weather in a city."""
    return f"{city}: sunny, 21 °C"


@server.tool()
def add(a: int, b: int) -> str:
    """Add two integers."""
    return str(a + b)


def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    print(sock.getsockname()[1], flush=True)
    pem = sys.argv[1] if len(sys.argv) > 1 else None
    config = uvicorn.Config(
        server.streamable_http_app(), log_level="warning", lifespan="on",
        ssl_certfile=pem, ssl_keyfile=pem,
    )  # fmt: skip
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
