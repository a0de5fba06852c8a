"""The contract every :class:`models.interface.ChatModel` backend satisfies.

Subclass :class:`ChatModelContract` in a ``test_*.py`` module and override the
``model`` fixture to yield a fresh-state (``reset()``) model of your backend.
Backends that need to be told what to answer (the scripted fake, a fake HTTP
server) override :meth:`ChatModelContract.script`; real models ignore it and
answer whatever they answer, so the assertions only rely on the contract:
the event sequence, limits, cancellation, JSON under a schema, counters.

The ``close`` tests get their own model from :meth:`fresh_model` so a
module-scoped ``model`` is not closed under the other tests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from models.backends import backend_names
from models.errors import ModelError
from models.fake import check_json
from models.interface import (
    CancelToken,
    ChatModel,
    ContextState,
    Finished,
    Message,
    ModelInfo,
    StreamEvent,
    Token,
    complete_chat,
)

HELLO = [
    Message(role="system", content="You are a helpful assistant."),
    Message(role="user", content="Write three sentences about the sea."),
]
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "maxLength": 80},
        "confidence": {"type": "string", "enum": ["low", "medium", "high"]},
    },
    "required": ["answer", "confidence"],
    "additionalProperties": False,
}
LONG_TEXT = (
    "The sea is wide and deep. Ships sail across it carrying goods from port to port, "
    "and the waves roll on the shore from dawn until dusk, every day of the year."
)


def split(events: list[StreamEvent]) -> tuple[list[Token], Finished]:
    """Check the event sequence shape and return (tokens, finished)."""
    assert events, "a generation must yield at least its Finished event"
    *head, last = events
    assert isinstance(last, Finished), f"the last event must be Finished, got {last!r}"
    assert all(isinstance(e, Token) for e in head), "only Token events may precede Finished"
    return [e for e in head if isinstance(e, Token)], last


class ChatModelContract:
    """Shared tests; subclasses provide ``model`` (and maybe ``script``)."""

    @pytest.fixture
    def model(self) -> Iterator[ChatModel]:
        raise NotImplementedError("override the model fixture")

    def fresh_model(self) -> ChatModel:
        """Return a new model the test owns (and closes)."""
        raise NotImplementedError("override fresh_model")

    def script(self, model: ChatModel, text: str) -> None:
        """Make the backend's next answer ``text`` where it can be told; default no-op."""

    # -- shape of a generation ------------------------------------------------------

    def test_info_describes_the_model(self, model: ChatModel) -> None:
        info = model.info
        assert isinstance(info, ModelInfo)
        assert info.backend in backend_names()
        assert info.n_ctx > 0
        assert isinstance(model, ChatModel)

    def test_stream_yields_tokens_then_one_finished(self, model: ChatModel) -> None:
        self.script(model, LONG_TEXT)
        tokens, finished = split(list(model.stream_chat(HELLO, max_tokens=40)))
        assert tokens, "the model produced no text"
        assert finished.text == "".join(t.text for t in tokens)
        assert finished.stats.n_generated >= len(tokens) > 0
        assert finished.stats.n_generated <= 40
        assert finished.stats.stop_reason in {"eos", "max_tokens"}
        assert finished.stats.time_to_first_token_s is not None
        assert finished.stats.time_to_first_token_s >= 0

    def test_max_tokens_is_respected(self, model: ChatModel) -> None:
        self.script(model, LONG_TEXT)
        _, finished = split(list(model.stream_chat(HELLO, max_tokens=3)))
        assert 1 <= finished.stats.n_generated <= 3
        if finished.stats.n_generated == 3:
            assert finished.stats.stop_reason == "max_tokens"

    def test_zero_max_tokens_generates_nothing(self, model: ChatModel) -> None:
        self.script(model, LONG_TEXT)
        tokens, finished = split(list(model.stream_chat(HELLO, max_tokens=0)))
        assert tokens == []
        assert finished.text == ""
        assert finished.stats.n_generated == 0

    def test_complete_chat_returns_the_final_event(self, model: ChatModel) -> None:
        self.script(model, LONG_TEXT)
        finished = complete_chat(model, HELLO, max_tokens=10)
        assert isinstance(finished, Finished)
        assert 0 < finished.stats.n_generated <= 10

    def test_empty_conversation_is_refused(self, model: ChatModel) -> None:
        with pytest.raises(ModelError):
            list(model.stream_chat([], max_tokens=5))

    # -- cancellation ------------------------------------------------------------------

    def test_cancel_before_start_generates_nothing(self, model: ChatModel) -> None:
        self.script(model, LONG_TEXT)
        cancel = CancelToken()
        cancel.cancel()
        tokens, finished = split(list(model.stream_chat(HELLO, max_tokens=50, cancel=cancel)))
        assert tokens == []
        assert finished.stats.stop_reason == "cancelled"

    def test_cancel_from_another_thread_stops_within_one_token(self, model: ChatModel) -> None:
        self.script(model, LONG_TEXT)
        cancel = CancelToken()
        events: list[StreamEvent] = []
        after_cancel = 0
        for event in model.stream_chat(HELLO, max_tokens=200, ignore_eos=True, cancel=cancel):
            events.append(event)
            if cancel.cancelled and isinstance(event, Token):
                after_cancel += 1
            if len(events) == 2 and not cancel.cancelled:
                # Cancel from another thread and wait for it, while the stream is paused.
                worker = threading.Thread(target=cancel.cancel)
                worker.start()
                worker.join()
        tokens, finished = split(events)
        assert finished.stats.stop_reason == "cancelled"
        assert after_cancel <= 1
        assert finished.stats.n_generated <= 3

    # -- constrained output ---------------------------------------------------------------

    def test_json_schema_output_validates(self, model: ChatModel) -> None:
        self.script(model, '{"answer": "blue", "confidence": "high"}')
        messages = [
            Message(role="system", content="Answer in JSON."),
            Message(role="user", content="What colour is the sky? Reply as JSON."),
        ]
        _, finished = split(
            list(model.stream_chat(messages, max_tokens=120, json_schema=ANSWER_SCHEMA))
        )
        assert finished.stats.stop_reason == "eos", "the JSON object should end by itself"
        value = check_json(finished.text, ANSWER_SCHEMA)
        assert value["confidence"] in {"low", "medium", "high"}

    # -- counters ---------------------------------------------------------------------------

    def test_count_tokens_grows_with_text(self, model: ChatModel) -> None:
        assert model.count_tokens("") == 0
        one = model.count_tokens("hello")
        many = model.count_tokens("hello " * 50)
        assert 0 < one < many

    def test_context_state_is_consistent(self, model: ChatModel) -> None:
        self.script(model, LONG_TEXT)
        list(model.stream_chat(HELLO, max_tokens=10))
        state = model.context_state()
        assert isinstance(state, ContextState)
        assert state.n_sink + state.n_window <= state.n_ctx
        assert state.n_sink + state.n_window > 0
        assert state.n_evicted >= 0 and state.n_shifts >= 0

    def test_reset_forgets_the_conversation(self, model: ChatModel) -> None:
        self.script(model, LONG_TEXT)
        list(model.stream_chat(HELLO, max_tokens=5))
        model.reset()
        state = model.context_state()
        assert state.n_sink + state.n_window == 0
        assert state.n_evicted == 0

    # -- lifetime ------------------------------------------------------------------------------

    def test_close_twice_and_refuse_afterwards(self) -> None:
        model = self.fresh_model()
        model.close()
        model.close()
        with pytest.raises(ModelError):
            list(model.stream_chat(HELLO, max_tokens=5))
