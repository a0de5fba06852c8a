"""The forwarder inside a shell sandbox (standard library only).

Run as ``python3 -I -S forwarder.py PORT SOCKET -- ARGV...`` as the sandbox's
first program: it listens on ``127.0.0.1:PORT`` inside the sandbox's own
network namespace (bubblewrap brings ``lo`` up there), starts ``ARGV`` once
the port is open, relays every connection to the host's egress proxy through
the Unix socket ``SOCKET`` (bound into the sandbox), and exits with the
command's status. It never parses what it relays: the host decides.

Blocking sockets and a thread per direction, not asyncio: importing asyncio
(it pulls in ssl and concurrent.futures) took most of the sandbox's extra
start time, and a command opens only a few connections.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

_CHUNK = 1 << 16


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until end of stream, then half-close ``dst``."""
    try:
        while data := src.recv(_CHUNK):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _relay(client: socket.socket, socket_path: str) -> None:
    host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        host.connect(socket_path)
    except OSError:
        client.close()
        host.close()
        return
    upstream = threading.Thread(target=_pipe, args=(client, host), daemon=True)
    upstream.start()
    _pipe(host, client)
    upstream.join()
    client.close()
    host.close()


def _serve(listener: socket.socket, socket_path: str) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_relay, args=(client, socket_path), daemon=True).start()


def _run(port: int, socket_path: str, argv: list[str]) -> int:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    threading.Thread(target=_serve, args=(listener, socket_path), daemon=True).start()
    pid = os.posix_spawnp(argv[0], argv, os.environ)  # the listener is not inherited
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def main(args: list[str]) -> int:
    """Parse ``PORT SOCKET -- ARGV...`` and run; returns the command's exit status."""
    if len(args) < 4 or args[2] != "--":
        sys.stderr.write("usage: forwarder.py PORT SOCKET -- ARGV...\n")
        return 2
    return _run(int(args[0]), args[1], args[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
