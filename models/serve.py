"""The child side of :class:`models.process.ProcessModel`: ``python -m models.serve SPEC``.

Loads the model the JSON ``SPEC`` (a :class:`models.factory.ModelSpec`)
describes (after loading each ``--backend-source JSON`` that precedes it: a
backend the parent registered at run time, :mod:`models.backends`),
answers ``ready``, then serves one request at a time from stdin.
A reader thread turns a ``cancel`` line into the running generation's
:class:`~models.interface.CancelToken`, so a cancel takes effect within one
token. stdout carries only protocol lines: llama.cpp's own logging goes to
stderr, which the host keeps for crash reports.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
from collections.abc import Sequence
from typing import IO, Any

from models.backends import BackendSource, load_source
from models.errors import ModelError
from models.factory import ModelSpec, open_model
from models.interface import CancelToken, ChatModel, Finished, Message


def _protocol_stdout() -> IO[bytes]:
    # Keep fd 1 for protocol lines only: anything C code prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _emit(out: IO[bytes], lock: threading.Lock, **event: Any) -> None:
    with lock:
        out.write(json.dumps(event).encode() + b"\n")


def _error(e: BaseException) -> dict[str, Any]:
    kind = type(e).__name__ if isinstance(e, ModelError) else "ModelError"
    return {"ev": "error", "type": kind, "message": str(e) or type(e).__name__}


def _read_requests(requests: queue.Queue[dict[str, Any] | None], cancel: list[CancelToken]) -> None:
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
        except ValueError:
            continue
        if not isinstance(request, dict):
            continue
        if request.get("op") == "cancel":
            cancel[0].cancel()
            continue
        if request.get("op") == "chat":
            # The token is made here, in reading order, so a cancel that follows
            # a chat line always reaches that chat's generation.
            cancel[0] = CancelToken()
            request["_cancel"] = cancel[0]
        requests.put(request)
    requests.put(None)


def serve(model: ChatModel, out: IO[bytes]) -> None:
    """Answer requests until ``close`` or the end of stdin."""
    lock = threading.Lock()
    cancel = [CancelToken()]
    requests: queue.Queue[dict[str, Any] | None] = queue.Queue()
    threading.Thread(target=_read_requests, args=(requests, cancel), daemon=True).start()
    _emit(out, lock, ev="ready", info=model.info.model_dump(mode="json"))
    while True:
        request = requests.get()
        if request is None or request.get("op") == "close":
            return
        op = request.get("op")
        try:
            if op == "chat":
                messages = [Message.model_validate(m) for m in request["messages"]]
                for event in model.stream_chat(
                    messages,
                    max_tokens=int(request["max_tokens"]),
                    json_schema=request.get("json_schema"),
                    temperature=float(request.get("temperature", 0.0)),
                    ignore_eos=bool(request.get("ignore_eos", False)),
                    cancel=request["_cancel"],
                ):
                    if isinstance(event, Finished):
                        _emit(out, lock, ev="finished", text=event.text,
                              stats=event.stats.model_dump(mode="json"))  # fmt: skip
                    else:
                        _emit(out, lock, ev="token", text=event.text)
            elif op == "count":
                _emit(out, lock, ev="count", n=model.count_tokens(str(request["text"])))
            elif op == "state":
                _emit(out, lock, ev="state", state=model.context_state().model_dump(mode="json"))
            elif op == "reset":
                model.reset()
                _emit(out, lock, ev="state", state=model.context_state().model_dump(mode="json"))
            else:
                _emit(out, lock, ev="error", type="ModelError", message=f"unknown op {op!r}")
        except (ModelError, KeyError, TypeError, ValueError) as e:
            _emit(out, lock, **_error(e))


def main(argv: Sequence[str] | None = None) -> int:
    """Load the model named by the JSON spec in ``argv[0]`` and serve it."""
    args = list(sys.argv[1:] if argv is None else argv)
    out = _protocol_stdout()
    lock = threading.Lock()
    sources: list[str] = []
    while len(args) > 2 and args[0] == "--backend-source":
        sources.append(args[1])
        del args[:2]
    if len(args) != 1:
        usage = "usage: models.serve [--backend-source JSON]... SPEC_JSON"
        _emit(out, lock, ev="error", type="ModelError", message=usage)
        return 2
    try:
        for source in sources:
            load_source(BackendSource.model_validate_json(source))
        spec = ModelSpec.model_validate_json(args[0])
        model = open_model(spec)
    except (ModelError, ValueError) as e:
        _emit(out, lock, **_error(e))
        return 1
    try:
        serve(model, out)
    finally:
        model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
