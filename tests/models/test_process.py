"""A model in a child process: the same stream, and a crash the host survives."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.catalog import embedded_default
from models.errors import ModelFileError, ModelProcessError
from models.factory import ModelSpec
from models.interface import CancelToken, Finished, Message, Token, complete_chat
from models.process import ProcessModel

HI = [Message(role="user", content="hi")]


def scripted(tmp_path: Path, *replies: str) -> ModelSpec:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(list(replies)))
    return ModelSpec(backend="fake", scripted_file=script)


def test_streams_the_childs_tokens_and_stats(tmp_path: Path) -> None:
    model = ProcessModel(scripted(tmp_path, "hello from the child", "second"))
    try:
        events = list(model.stream_chat(HI, max_tokens=50))
        assert isinstance(events[-1], Finished)
        assert events[-1].text == "hello from the child"
        assert "".join(e.text for e in events if isinstance(e, Token)) == events[-1].text
        assert model.info.backend == "fake"
        assert model.count_tokens("one two three") > 0
        assert model.context_state().n_ctx == model.info.n_ctx
        assert complete_chat(model, HI, max_tokens=50).text == "second"
    finally:
        model.close()
    model.close()  # twice is fine


def test_a_model_error_in_the_child_keeps_its_type(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file")
    with pytest.raises(ModelFileError, match="bad.gguf"):
        ProcessModel(ModelSpec(path=bad))


def test_the_child_dying_mid_stream_is_reported_and_the_host_carries_on(tmp_path: Path) -> None:
    model = ProcessModel(scripted(tmp_path, "word " * 2000))
    with pytest.raises(ModelProcessError, match="exited with status"):
        for event in model.stream_chat(HI, max_tokens=5000):
            if isinstance(event, Token):
                os.kill(model._proc.pid, signal.SIGKILL)
    model.close()
    again = ProcessModel(scripted(tmp_path, "alive"))
    try:
        assert complete_chat(again, HI, max_tokens=10).text == "alive"
    finally:
        again.close()


def test_garbage_from_the_child_is_a_clear_error() -> None:
    argv = [sys.executable, "-c", "import sys; print('not json'); sys.stdout.flush()"]
    with pytest.raises(ModelProcessError, match="non-JSON"):
        ProcessModel(ModelSpec(backend="fake"), argv=argv)


def test_a_child_that_never_answers_times_out() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(ModelProcessError, match="did not answer"):
        ProcessModel(ModelSpec(backend="fake"), argv=argv, start_timeout=1.0)


@pytest.mark.model
def test_real_model_generates_and_cancels_within_a_token() -> None:
    model = ProcessModel(ModelSpec(path=embedded_default().path, n_ctx=256, n_threads=1))
    try:
        cancel = CancelToken()
        seen = 0
        final = None
        for event in model.stream_chat(HI, max_tokens=2000, ignore_eos=True, cancel=cancel):
            if isinstance(event, Token):
                seen += 1
                if seen == 5:
                    threading.Thread(target=cancel.cancel).start()
            else:
                final = event
        assert final is not None and final.stats.stop_reason == "cancelled"
        assert final.stats.n_generated < 100
        past = complete_chat(model, HI, max_tokens=8)
        assert past.stats.n_generated > 0
        assert model.info.backend == "llama.cpp"
    finally:
        model.close()


def test_abandoning_a_stream_leaves_the_next_request_clean(tmp_path: Path) -> None:
    model = ProcessModel(scripted(tmp_path, "one two three four five six seven " * 50, "next"))
    try:
        stream = model.stream_chat(HI, max_tokens=5000)
        assert isinstance(next(stream), Token)
        stream.close()  # what a Ctrl+C or an exception in the consumer does
        assert complete_chat(model, HI, max_tokens=10).text == "next"
    finally:
        model.close()


from tests.models.contract import ChatModelContract  # noqa: E402 - after the helpers it uses


def _real_process_model() -> ProcessModel:
    return ProcessModel(ModelSpec(path=embedded_default().path, n_ctx=512, n_threads=1))


@pytest.fixture(scope="module")
def shared() -> Iterator[ProcessModel]:
    model = _real_process_model()
    yield model
    model.close()


@pytest.mark.model
class TestProcessModelContract(ChatModelContract):
    """The shared ChatModel contract, with the real model in a child process."""

    @pytest.fixture
    def model(self, shared: ProcessModel) -> ProcessModel:
        shared.reset()
        return shared

    def fresh_model(self) -> ProcessModel:
        return _real_process_model()
