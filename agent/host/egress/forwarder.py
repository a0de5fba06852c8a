"""The forwarder inside a shell sandbox (standard library only).

Run as ``python3 -I -S forwarder.py PORT SOCKET -- ARGV...`` as the sandbox's
first program: it listens on ``127.0.0.1:PORT`` inside the sandbox's own
network namespace (bubblewrap brings ``lo`` up there), starts ``ARGV`` once
the port is open, relays every connection to the host's egress proxy through
the Unix socket ``SOCKET`` (bound into the sandbox), and exits with the
command's status. It never parses what it relays: the host decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

_CHUNK = 1 << 16


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _relay(
    socket_path: str, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
) -> None:
    try:
        host_r, host_w = await asyncio.open_unix_connection(socket_path)
    except OSError:
        client_w.close()
        return
    try:
        await asyncio.gather(_pipe(client_r, host_w), _pipe(host_r, client_w))
    finally:
        for writer in (client_w, host_w):
            with contextlib.suppress(OSError):
                writer.close()


async def _main(port: int, socket_path: str, argv: list[str]) -> int:
    server = await asyncio.start_server(
        lambda r, w: _relay(socket_path, r, w), "127.0.0.1", port, reuse_address=True
    )
    async with server:
        proc = await asyncio.create_subprocess_exec(*argv)
        code = await proc.wait()
    return code if code >= 0 else 128 - code


def main(args: list[str]) -> int:
    """Parse ``PORT SOCKET -- ARGV...`` and run; returns the command's exit status."""
    if len(args) < 4 or args[2] != "--":
        sys.stderr.write("usage: forwarder.py PORT SOCKET -- ARGV...\n")
        return 2
    return asyncio.run(_main(int(args[0]), args[1], args[3:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
