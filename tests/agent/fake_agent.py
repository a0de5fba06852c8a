"""A hostile stand-in for the agent process, driven by a JSON plan (host tests).

Run as ``python tests/agent/fake_agent.py PLAN.json``. The plan is a list of
steps, executed in order:

- ``{"op": "ready"}``: read the Hello line and answer Ready.
- ``{"op": "read"}``: read one line from the host (and drop it).
- ``{"op": "send", "msg": {...}}``: write the object as one JSON line, as is.
- ``{"op": "raw", "data": "..."}``: write these characters (no newline added).
- ``{"op": "big", "size": N}``: write N bytes of ``x`` and a newline.
- ``{"op": "exit", "code": N}``: exit at once with status N.
- ``{"op": "hang"}``: stop talking (block until stdin closes or the host kills us).
- ``{"op": "stderr", "size": N}``: write N bytes of ``e`` to stderr on one line.
- ``{"op": "deaf"}``: stop reading and writing, without exiting.
- ``{"op": "spam"}``: stream token messages until the host kills us (ignores Cancel).

It imports nothing from Keyless: it is the untrusted side and writes bytes.
"""

from __future__ import annotations

import json
import os
import sys
import threading


def main(plan_file: str) -> int:
    plan = json.loads(open(plan_file, encoding="utf-8").read())
    out = sys.stdout.buffer
    inp = sys.stdin.buffer
    for step in plan:
        op = step["op"]
        if op == "ready":
            inp.readline()
            out.write(json.dumps({"v": 2, "type": "ready", "pid": os.getpid()}).encode() + b"\n")
        elif op == "read":
            inp.readline()
        elif op == "send":
            out.write(json.dumps(step["msg"]).encode() + b"\n")
        elif op == "raw":
            out.write(step["data"].encode())
        elif op == "big":
            out.write(b"x" * step["size"] + b"\n")
        elif op == "exit":
            out.flush()
            os._exit(step["code"])
        elif op == "hang":
            out.flush()
            inp.read()
        elif op == "stderr":
            sys.stderr.buffer.write(b"e" * step["size"] + b"\n")
            sys.stderr.buffer.flush()
        elif op == "deaf":
            out.flush()
            threading.Event().wait()
        elif op == "spam":
            token = json.dumps({"v": 2, "type": "token", "text": "more", "step": 1}).encode()
            while True:
                out.write(token + b"\n")
                out.flush()
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
