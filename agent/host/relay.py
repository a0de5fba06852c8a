"""The host's side of a relayed generation: run the agent's request on the real model.

The agent process has no network and never sees an API key, so a remote
model is opened here and its generations are relayed: the agent sends a
:class:`agent.protocol.ModelRequest` (see :mod:`agent.worker.relay`) and the
host streams :class:`agent.protocol.ModelChunk` events back, then one
:class:`agent.protocol.ModelDone` or :class:`agent.protocol.ModelFailed`.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.protocol import AnyMessage, ModelChunk, ModelDone, ModelFailed, ModelRequest
from models.errors import ModelError
from models.interface import CancelToken, ChatModel, Finished, Token


def serve_model_request(
    model: ChatModel,
    request: ModelRequest,
    send: Callable[[AnyMessage], None],
    cancel: CancelToken,
) -> None:
    """Run a relayed generation on the host's model and stream it to the agent.

    Every outcome ends with exactly one :class:`ModelDone` or
    :class:`ModelFailed`, so the agent never waits forever. Errors of the
    model are reported to the agent by their message only: a remote model's
    errors never carry the API key (models.remote's contract).

    Args:
        model: The host's model (e.g. models.remote.OpenAIChatModel).
        request: The agent's request.
        send: Writes one message to the agent process.
        cancel: Fired when the user cancels the errand.
    """
    try:
        for event in model.stream_chat(
            request.messages,
            max_tokens=request.max_tokens,
            json_schema=request.json_schema,
            temperature=request.temperature,
            cancel=cancel,
        ):
            if isinstance(event, Token):
                send(ModelChunk(request_id=request.request_id, text=event.text))
            elif isinstance(event, Finished):
                send(ModelDone(request_id=request.request_id, text=event.text, stats=event.stats))
                return
    except ModelError as e:
        send(ModelFailed(request_id=request.request_id, message=str(e) or type(e).__name__))
        return
    send(ModelFailed(request_id=request.request_id, message="the model's stream ended early"))
