"""The host's side of a relayed generation: run the agent's request on the real model.

The agent process has no network and never sees an API key, so a remote
model is opened here and its generations are relayed: the agent sends a
:class:`agent.protocol.ModelRequest` (see :mod:`agent.worker.relay`) and the
host streams :class:`agent.protocol.ModelChunk` events back, then one
:class:`agent.protocol.ModelDone` or :class:`agent.protocol.ModelFailed`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from agent.host.delivery import ResultDelivery
from agent.host.ports import StreamRedaction
from agent.host.supervisor import WorkerProcess
from agent.protocol import AnyMessage, ModelChunk, ModelDone, ModelFailed, ModelRequest
from models.errors import ModelError
from models.factory import ModelSpec
from models.interface import CancelToken, ChatModel, Finished, StreamEvent, Token
from vault.errors import VaultError


def serve_model_request(
    model: ChatModel,
    request: ModelRequest,
    send: Callable[[AnyMessage], None],
    cancel: CancelToken,
    *,
    redaction: Callable[[], StreamRedaction] | None = None,
) -> None:
    """Run a relayed generation on the host's model and stream it to the agent.

    Every outcome ends with exactly one :class:`ModelDone` or
    :class:`ModelFailed`, so the agent never waits forever. Errors of the
    model are reported to the agent by their message only: a remote model's
    errors never carry the API key (models.remote's contract).

    With ``redaction``, every chunk goes through one stream of it (which
    holds back what may still turn out to be a secret) and the final text
    through another: a remote server may echo a vault secret (the API key it
    was sent, a key pasted into the conversation). If redaction cannot run,
    nothing more of the generation is sent: the agent gets
    :class:`ModelFailed` (fail closed), and when that happens before the model
    starts, the model is not asked at all.

    Args:
        model: The host's model (e.g. models.remote.OpenAIChatModel).
        request: The agent's request.
        send: Writes one message to the agent process.
        cancel: Fired when the user cancels the errand.
        redaction: Makes a fresh streaming redactor.
    """
    rid = request.request_id
    try:
        chunks = redaction() if redaction is not None else None
    except VaultError as e:
        send(ModelFailed(request_id=rid, message=_withheld(e)))
        return
    events: Iterator[StreamEvent] | None = None
    try:
        events = model.stream_chat(
            request.messages,
            max_tokens=request.max_tokens,
            json_schema=request.json_schema,
            temperature=request.temperature,
            cancel=cancel,
        )
        for event in events:
            if isinstance(event, Token):
                text = event.text if chunks is None else chunks.feed(event.text)
                if text:
                    send(ModelChunk(request_id=rid, text=text))
            elif isinstance(event, Finished):
                text = event.text
                if chunks is not None and redaction is not None:
                    rest = chunks.finish()
                    if rest:
                        send(ModelChunk(request_id=rid, text=rest))
                    whole = redaction()
                    text = whole.feed(text) + whole.finish()
                send(ModelDone(request_id=rid, text=text, stats=event.stats))
                return
    except ModelError as e:
        send(ModelFailed(request_id=rid, message=str(e) or type(e).__name__))
        return
    except VaultError as e:
        close = getattr(events, "close", None)  # a generator holds the model until closed
        if close is not None:
            close()
        send(ModelFailed(request_id=rid, message=_withheld(e)))
        return
    send(ModelFailed(request_id=rid, message="the model's stream ended early"))


def _withheld(error: VaultError) -> str:
    return f"the model's output could not be checked for secrets, so it is withheld: {error}"


class ModelRelay(ResultDelivery):
    """The part of :class:`agent.host.errand.AgentHost` that serves relayed generations."""

    _relay_model: ChatModel | None
    _spec: ModelSpec | None
    _cancel: CancelToken

    def _serve_model(self, proc: WorkerProcess, req: ModelRequest) -> None:
        model = self._relay()
        if model is None:
            proc.send(ModelFailed(request_id=req.request_id, message="the host relays no model"))
            return
        serve_model_request(
            model, req, self._relay_sender(proc), self._cancel, redaction=self._relay_redaction()
        )

    def _relay_sender(self, proc: WorkerProcess) -> Callable[[AnyMessage], None]:
        """``proc.send``, withholding a relayed error that quotes a vault secret.

        A remote server's error text (a 401 page, say) may echo the API key
        the host sent; the key need not be granted to this session, so the
        whole vault is scanned, not just the session's redaction set.
        """

        def send(msg: AnyMessage) -> None:
            if isinstance(msg, ModelFailed):
                msg = msg.model_copy(update={"message": self._relay_error_text(msg.message)})
            proc.send(msg)

        return send

    def _relay_redaction(self) -> Callable[[], StreamRedaction] | None:
        """Streaming redactors for a relayed generation's text, as for the tokens.

        A remote server may echo a vault secret; the agent process gets the
        chunks only through these (see :func:`serve_model_request`).
        """
        broker = self._broker
        if broker is None:
            return None
        return lambda: broker.redact_stream(session_id=self.session_id)

    def _relay_error_text(self, text: str) -> str:
        withheld = "the remote model failed; its error message quoted a secret and is withheld"
        scan = getattr(self._broker, "scan", None)
        if scan is not None:
            try:
                found = scan(text)
            except VaultError:  # cannot check (vault locked): fail closed
                return "the remote model failed; its error message could not be checked"
            if found:
                self._record("relay_error_withheld", details={"secrets": list(found)})
                return withheld
        return self._redact(text)[0]

    def _relay(self) -> ChatModel | None:
        if self._relay_model is None and self._spec is not None and is_remote(self._spec):
            from models.factory import open_model

            self._relay_model = open_model(self._spec)
        return self._relay_model


def is_remote(spec: ModelSpec | None) -> bool:
    """Whether ``spec``'s backend runs in the host, which opens it and relays it."""
    from models.backends import runs_in_host

    return runs_in_host(spec)
