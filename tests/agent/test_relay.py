"""The model relay: RelayedModel (agent side) against serve_model_request (host side)."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from agent.host.ports import StreamRedaction
from agent.host.relay import serve_model_request
from agent.protocol import (
    AnyMessage,
    HostMessage,
    ModelCancel,
    ModelChunk,
    ModelFailed,
    ModelRequest,
    decode,
    encode,
)
from agent.worker.relay import RelayedModel
from models.errors import GenerationError
from models.fake import ScriptedModel
from models.interface import (
    CancelToken,
    ChatModel,
    Finished,
    Message,
    StreamEvent,
    Token,
    complete_chat,
)


class Loopback:
    """Both ends of the pipe in one process: a ModelRequest is served at once.

    Every message goes through encode/decode, as on the real pipe.
    """

    def __init__(self, host_model: ChatModel, host_cancel: CancelToken | None = None) -> None:
        self.host_model = host_model
        self.host_cancel = host_cancel or CancelToken()
        self.to_agent: queue.Queue[HostMessage] = queue.Queue()
        self.to_host: list[AnyMessage] = []
        self.serve = True
        self.redaction: Callable[[], StreamRedaction] | None = None

    def _deliver(self, msg: AnyMessage) -> None:
        self.to_agent.put(decode(encode(msg), sender="host"))  # type: ignore[arg-type]

    def send(self, msg: AnyMessage) -> None:
        msg = decode(encode(msg), sender="agent")
        self.to_host.append(msg)
        if isinstance(msg, ModelRequest) and self.serve:
            serve_model_request(
                self.host_model, msg, self._deliver, self.host_cancel, redaction=self.redaction
            )

    def receive(self, cancel: CancelToken) -> HostMessage | None:
        if cancel.cancelled or self.to_agent.empty():
            return None
        return self.to_agent.get_nowait()


INFO = ScriptedModel().info.model_copy(update={"name": "remote", "backend": "openai"})
MESSAGES = [Message(role="user", content="hi")]


def test_a_relayed_generation_streams_the_host_models_tokens() -> None:
    host = ScriptedModel(["hello there friend"])
    relayed = RelayedModel(Loopback(host), INFO)
    events = list(relayed.stream_chat(MESSAGES, max_tokens=10))
    assert [e.text for e in events if isinstance(e, Token)] == ["hello", " there", " friend"]
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.text == "hello there friend"
    assert finished.stats.n_generated == 3
    assert host.calls == [MESSAGES]
    assert relayed.info.name == "remote"


def test_the_json_schema_and_limits_reach_the_host_model() -> None:
    schema = {"type": "object", "properties": {"final": {"type": "string"}}, "required": ["final"]}
    loop = Loopback(ScriptedModel(['{"final": "x"}', "not json"]))
    relayed = RelayedModel(loop, INFO)
    finished = complete_chat(relayed, MESSAGES, max_tokens=7, json_schema=schema)
    assert finished.text == '{"final": "x"}'
    request = loop.to_host[0]
    assert isinstance(request, ModelRequest)
    assert (request.max_tokens, request.json_schema) == (7, schema)
    # The host model refuses output outside the schema; the agent gets a clear error.
    with pytest.raises(GenerationError, match="host's model failed: .*not JSON"):
        complete_chat(relayed, MESSAGES, max_tokens=7, json_schema=schema)
    assert isinstance(loop.to_host[-1], ModelRequest)


class Exploding:
    """A host model whose server dies after one token."""

    info = INFO

    def stream_chat(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        json_schema: Mapping[str, Any] | None = None,
        temperature: float = 0.0,
        ignore_eos: bool = False,
        cancel: CancelToken | None = None,
    ) -> Iterator[StreamEvent]:
        yield Token(text="half")
        raise GenerationError("server closed the stream")

    def count_tokens(self, text: str) -> int:
        return len(text)

    def context_state(self) -> Any:
        raise NotImplementedError

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_host_model_failure_becomes_a_generation_error_in_the_agent() -> None:
    loop = Loopback(Exploding())  # type: ignore[arg-type]
    relayed = RelayedModel(loop, INFO)
    stream = relayed.stream_chat(MESSAGES, max_tokens=5)
    assert next(stream) == Token(text="half")
    with pytest.raises(GenerationError, match="server closed the stream"):
        next(stream)


def test_cancel_tells_the_host_and_ends_the_stream() -> None:
    loop = Loopback(ScriptedModel(["a b c"]))
    loop.serve = False  # the host has not answered yet
    relayed = RelayedModel(loop, INFO)
    cancel = CancelToken()
    cancel.cancel()
    events = list(relayed.stream_chat(MESSAGES, max_tokens=5, cancel=cancel))
    assert isinstance(events[-1], Finished) and events[-1].stats.stop_reason == "cancelled"
    assert isinstance(loop.to_host[-1], ModelCancel)
    assert loop.to_host[-1].request_id == loop.to_host[0].request_id  # type: ignore[union-attr]


def test_a_closed_pipe_mid_generation_is_an_error() -> None:
    loop = Loopback(ScriptedModel(["a"]))
    loop.serve = False
    with pytest.raises(GenerationError, match="closed the pipe"):
        list(RelayedModel(loop, INFO).stream_chat(MESSAGES, max_tokens=5))


def test_late_answers_to_an_abandoned_request_are_skipped() -> None:
    loop = Loopback(ScriptedModel(["fresh answer"]))
    loop.to_agent.put(ModelChunk(request_id="m0", text="stale"))
    loop.to_agent.put(ModelFailed(request_id="m0", message="stale failure"))
    relayed = RelayedModel(loop, INFO)
    finished = complete_chat(relayed, MESSAGES, max_tokens=5)
    assert finished.text == "fresh answer"


def test_host_cancel_stops_the_host_model() -> None:
    host_cancel = CancelToken()
    host_cancel.cancel()
    loop = Loopback(ScriptedModel(["a b c"]), host_cancel)
    finished = complete_chat(RelayedModel(loop, INFO), MESSAGES, max_tokens=5)
    assert finished.stats.stop_reason == "cancelled" and finished.text == ""


def test_token_counts_are_estimates_and_state_reports_the_remote_context() -> None:
    relayed = RelayedModel(Loopback(ScriptedModel()), INFO)
    assert relayed.count_tokens("abcdefgh") == 2
    assert relayed.context_state().n_ctx == INFO.n_ctx


SECRET = "sk-relay-" + "Zm9vYmFyYmF6cXV4"


def test_relayed_chunks_and_the_final_text_go_through_the_redactor() -> None:
    from vault.redact import Redactor

    # The server echoes the secret split across two of its tokens.
    host = ScriptedModel([f"you sent {SECRET[:8]} {SECRET[8:]} to us"])
    loop = Loopback(host)
    loop.redaction = Redactor({"KEY": SECRET}).stream
    events = list(RelayedModel(loop, INFO).stream_chat(MESSAGES, max_tokens=20))
    finished = events[-1]
    assert isinstance(finished, Finished)
    shown = "".join(e.text for e in events if isinstance(e, Token))
    assert shown == finished.text == "you sent [REDACTED:KEY] to us"


class _FailingAfter:
    """A stream redactor that cannot go on after ``n`` chunks (as when its index breaks)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def feed(self, chunk: str) -> str:
        from vault.errors import RedactionError

        self.n -= 1
        if self.n < 0:
            raise RedactionError("redaction failed: broken index")
        return chunk

    def finish(self) -> str:
        return ""


def test_a_redactor_that_cannot_run_withholds_the_generation() -> None:
    from vault.errors import RedactionError

    def unavailable() -> StreamRedaction:
        raise RedactionError("the vault is locked and its secrets were never indexed")

    host = ScriptedModel(["never asked"])
    loop = Loopback(host)
    loop.redaction = unavailable
    with pytest.raises(GenerationError, match="could not be checked for secrets.*never indexed"):
        list(RelayedModel(loop, INFO).stream_chat(MESSAGES, max_tokens=5))
    assert host.calls == []  # the remote model was not asked at all

    host = ScriptedModel(["one two three four"])
    loop = Loopback(host)
    loop.redaction = lambda: _FailingAfter(2)
    stream = RelayedModel(loop, INFO).stream_chat(MESSAGES, max_tokens=10)
    assert [next(stream).text, next(stream).text] == ["one", " two"]
    with pytest.raises(GenerationError, match="withheld: redaction failed"):
        next(stream)
    assert [type(m).__name__ for m in _drain(loop)] == []  # nothing after the failure


def _drain(loop: Loopback) -> list[HostMessage]:
    out = []
    while not loop.to_agent.empty():
        out.append(loop.to_agent.get_nowait())
    return out
