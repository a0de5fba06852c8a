"""A :class:`~models.interface.ChatModel` backed by an OpenAI-compatible server.

For models one machine cannot hold, Keyless drives an existing serving engine
instead of growing its own: llama.cpp's ``llama-server`` (which can spread a
model over several machines with its RPC backend), vLLM, or llama-cpp-python's
own server. Only the chat-completions API is used, streamed over SSE.

Trust: this object lives in the **host**. The API key comes from the vault
through ``api_key_provider`` at the moment of each request and is never
stored on the object; the agent process reaches the model only through the
host's relay (``agent/worker/relay.py``), so it needs no network and never sees the
key.

Context overflow is the server's business. ``llama-server`` should run with
``--context-shift --keep 4`` (the same attention-sink policy as the local
:class:`~models.sinkcache.SinkCache`); llama-cpp-python's server and vLLM
refuse an over-long prompt, which arrives here as
:class:`~models.errors.ContextTooSmallError` carrying the server's message.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import jsonschema

from models.errors import ContextTooSmallError, GenerationError, ModelError
from models.interface import (
    CancelToken,
    ContextState,
    Finished,
    GenerationStats,
    Message,
    ModelInfo,
    StopReason,
    StreamEvent,
    Token,
)

ApiKeyProvider = Callable[[], bytes | bytearray | str | None]
StructuredMode = Literal["auto", "json_schema", "json_object"]

#: Sink tokens ``llama-server --keep`` should keep; what the GUI gauge shows.
DEFAULT_KEEP = 4
_MAX_ERROR_BODY = 2000


class RemoteConfigError(ModelError):
    """The server address is not allowed (scheme, local address) or malformed."""


class RemoteAuthError(ModelError):
    """The server refused the API key (HTTP 401/403)."""


class RemoteServerError(GenerationError):
    """The server failed, died mid-stream or answered something that is not the API."""


class ConstrainedOutputUnsupportedError(GenerationError):
    """The server cannot constrain output to a JSON schema."""


def check_base_url(base_url: str, *, allow_local: bool) -> str:
    """Validate the server address and return it without a trailing slash.

    A public host needs ``https``. Loopback, private (LAN) and link-local
    addresses, checked after DNS resolution, need the explicit
    ``allow_local`` setting; then plain ``http`` is accepted too.

    Raises:
        RemoteConfigError: The URL is malformed or not allowed.
    """
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RemoteConfigError(f"server URL must be http(s)://host[:port]/path, got {base_url!r}")
    if parts.username or parts.password:
        raise RemoteConfigError("server URL must not carry credentials; store the key in the vault")
    host = parts.hostname
    try:
        port = parts.port
    except ValueError as e:
        raise RemoteConfigError(f"server URL has an invalid port: {base_url!r}") from e
    try:
        infos = socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise RemoteConfigError(f"cannot resolve server host {host!r}: {e.strerror}") from e
    addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    local = [a for a in addresses if a.is_loopback or a.is_private or a.is_link_local]
    if local and not allow_local:
        raise RemoteConfigError(
            f"server {host!r} resolves to a local or LAN address ({local[0]}); "
            "enable 'allow local server' in the model settings to use it"
        )
    if not local and parts.scheme != "https":
        raise RemoteConfigError(f"server {host!r} is not local: https is required")
    return base_url.rstrip("/")


class OpenAIChatModel:
    """Chat with a model served behind an OpenAI-compatible ``/chat/completions``.

    Args:
        base_url: The API root, e.g. ``http://127.0.0.1:8080/v1``.
        model: The model name the server expects.
        api_key_provider: Called before each request; returns the key or None.
        allow_local: Allow loopback and LAN servers (and plain http for them).
        structured: How to ask for schema-constrained output. ``auto`` tries
            OpenAI's ``json_schema`` response format, then the
            ``json_object`` + ``schema`` form of llama.cpp's servers.
        n_ctx: The context size to assume when the server does not report
            one (llama-server's ``/props`` does); 0 means unknown.
        timeout: Seconds to wait for the connection and for each chunk.
        transport: An httpx transport (tests of TLS setups).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_provider: ApiKeyProvider | None = None,
        allow_local: bool = False,
        structured: StructuredMode = "auto",
        n_ctx: int | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._base_url = check_base_url(base_url, allow_local=allow_local)
        self._model = model
        self._api_key_provider = api_key_provider
        self._structured: StructuredMode = structured
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
            follow_redirects=False,
        )
        # What the server says wins; the configured size is the fallback.
        self._n_ctx = self._query_n_ctx() or (n_ctx or 0)
        self._last_tokens = 0
        self._closed = False

    # -- ChatModel -------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        """Describe the remote model."""
        return ModelInfo(
            name=self._model,
            backend="openai",
            path=self._base_url,
            n_ctx=self._n_ctx,
        )

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
        """Stream the server's answer; see :meth:`models.interface.ChatModel.stream_chat`.

        Raises:
            RemoteAuthError: The key was refused.
            ContextTooSmallError: The server says the prompt does not fit.
            ConstrainedOutputUnsupportedError: The server cannot follow a schema.
            RemoteServerError: The server failed, died or spoke nonsense.
        """
        if self._closed:
            raise ModelError("the remote model was closed")
        if not messages:
            raise GenerationError("cannot generate from an empty conversation")
        if max_tokens < 0:
            raise GenerationError(f"max_tokens must be >= 0, got {max_tokens}")
        if max_tokens == 0 or (cancel is not None and cancel.cancelled):
            # Nothing to ask the server (OpenAI servers read 0 as "no limit").
            return iter([_empty_finish("cancelled" if max_tokens else "max_tokens")])
        body: dict[str, Any] = {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if ignore_eos:
            body["ignore_eos"] = True  # llama-server and vLLM extension
        modes: list[StructuredMode] = []
        if json_schema is not None:
            auto: list[StructuredMode] = ["json_schema", "json_object"]
            modes = auto if self._structured == "auto" else [self._structured]
        return self._stream(body, json_schema, modes, cancel)

    def count_tokens(self, text: str) -> int:
        """Count tokens with the server's tokenizer.

        Tries llama-server's ``/tokenize`` and llama-cpp-python's
        ``/extras/tokenize``.

        Raises:
            RemoteServerError: The server offers no tokenizer endpoint.
        """
        if not text:
            return 0
        root = self._server_root()
        attempts = (
            (f"{root}/tokenize", {"content": text}),
            (f"{root}/extras/tokenize", {"input": text, "model": self._model}),
        )
        for url, payload in attempts:
            try:
                response = self._client.post(url, json=payload, headers=self._headers())
            except httpx.HTTPError as e:
                raise RemoteServerError(f"cannot reach {url}: {e}") from e
            if response.status_code == 200:
                try:
                    tokens = response.json()["tokens"]
                except (ValueError, KeyError, TypeError) as e:
                    raise RemoteServerError(f"{url} answered without a token list") from e
                return len(tokens)
            self._raise_for_auth(response)
        raise RemoteServerError("the server offers no tokenizer endpoint (/tokenize)")

    def context_state(self) -> ContextState:
        """Describe the server-side context as far as the API tells it."""
        window = max(0, self._last_tokens - DEFAULT_KEEP)
        return ContextState(
            n_ctx=self._n_ctx,
            n_sink=min(DEFAULT_KEEP, self._last_tokens),
            n_window=window,
            n_evicted=0,
            n_shifts=0,
            shift_supported=True,
        )

    def reset(self) -> None:
        """Nothing to do: the API is stateless (servers cache prompts themselves)."""
        self._last_tokens = 0

    def close(self) -> None:
        """Close the HTTP connection pool. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._client.close()

    # -- internals -------------------------------------------------------------

    def _server_root(self) -> str:
        root = self._base_url
        return root[: -len("/v1")] if root.endswith("/v1") else root

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self._api_key_provider is None:
            return headers
        key = self._api_key_provider()
        if key is None:
            return headers
        if isinstance(key, bytearray):
            try:
                value = key.decode()
            finally:
                key[:] = b"\0" * len(key)
        elif isinstance(key, bytes):
            value = key.decode()
        else:
            value = key
        headers["Authorization"] = f"Bearer {value}"
        return headers

    def _query_n_ctx(self) -> int:
        try:
            response = self._client.get(f"{self._server_root()}/props", headers=self._headers())
            if response.status_code == 200:
                settings = response.json().get("default_generation_settings", {})
                n_ctx = settings.get("n_ctx")
                if isinstance(n_ctx, int):
                    return n_ctx
        except (httpx.HTTPError, ValueError, AttributeError):
            pass  # not llama-server: the context size stays unknown
        return 0

    @staticmethod
    def _raise_for_auth(response: httpx.Response) -> None:
        if response.status_code in (401, 403):
            raise RemoteAuthError(
                f"the server refused the API key (HTTP {response.status_code}); "
                "check the secret named in the model settings"
            )

    def _error_for(self, response: httpx.Response, key: str | None = None) -> ModelError:
        response.read()
        # A server may echo the request (and its Authorization header) in an
        # error page; the key must not travel on in our message.
        text = _without(response.text, key)[:_MAX_ERROR_BODY]
        if response.status_code in (401, 403):
            try:
                self._raise_for_auth(response)
            except RemoteAuthError as e:
                return e
        lowered = text.lower()
        if "context" in lowered and any(w in lowered for w in ("exceed", "too long", "length")):
            return ContextTooSmallError(f"the server's context window is too small: {text}")
        return RemoteServerError(f"the server answered HTTP {response.status_code}: {text}")

    def _stream(
        self,
        body: dict[str, Any],
        json_schema: Mapping[str, Any] | None,
        modes: list[StructuredMode],
        cancel: CancelToken | None,
    ) -> Iterator[StreamEvent]:
        started = time.perf_counter()
        attempts: list[StructuredMode | None] = [*modes] or [None]
        for attempt, mode in enumerate(attempts):
            request = dict(body)
            if mode == "json_schema" and json_schema is not None:
                request["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "keyless_output", "schema": dict(json_schema)},
                }
            elif mode == "json_object" and json_schema is not None:
                request["response_format"] = {"type": "json_object", "schema": dict(json_schema)}
            url = f"{self._base_url}/chat/completions"
            headers = self._headers()
            key = headers.get("Authorization", "").removeprefix("Bearer ") or None
            try:
                with self._client.stream("POST", url, json=request, headers=headers) as rsp:
                    if rsp.status_code in (400, 422, 500) and json_schema is not None:
                        # llama-cpp-python answers an unknown response_format with a 500
                        rsp.read()
                        if "response_format" in rsp.text and attempt + 1 < len(attempts):
                            continue  # this server wants the other form
                        if "response_format" in rsp.text:
                            detail = _without(rsp.text, key)[:_MAX_ERROR_BODY]
                            raise ConstrainedOutputUnsupportedError(
                                f"the server cannot constrain output to a JSON schema: {detail}"
                            )
                    if rsp.status_code != 200:
                        raise self._error_for(rsp, key)
                    yield from self._read_events(rsp, started, json_schema, cancel)
                    return
            except httpx.TimeoutException as e:
                raise RemoteServerError(f"the server stopped answering ({e})") from e
            except httpx.HTTPError as e:
                raise RemoteServerError(f"the connection to the server failed: {e}") from e

    def _read_events(
        self,
        response: httpx.Response,
        started: float,
        json_schema: Mapping[str, Any] | None,
        cancel: CancelToken | None,
    ) -> Iterator[StreamEvent]:
        pieces: list[str] = []
        n_chunks = 0
        first: float | None = None
        usage: dict[str, Any] = {}
        finish: str | None = None
        done = False
        lines = response.iter_lines()
        for line in lines:
            if cancel is not None and cancel.cancelled:
                break  # leaving the `with` closes the connection: the server stops
            if not line or line.startswith(":"):
                continue
            if not line.startswith("data:"):
                raise RemoteServerError(
                    f"the server sent something that is not SSE: {line[:200]!r}"
                )
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                done = True
                break
            try:
                chunk = json.loads(data)
                choices = chunk.get("choices") or []
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if chunk.get("error"):
                    raise RemoteServerError(f"the server reported an error: {chunk['error']}")
                if not choices:
                    continue
                choice = choices[0]
                text = (choice.get("delta") or {}).get("content") or ""
                finish = choice.get("finish_reason") or finish
            except (ValueError, AttributeError, TypeError, IndexError) as e:
                raise RemoteServerError(
                    f"the server sent a chunk that is not a chat completion: {data[:200]!r}"
                ) from e
            if text:
                if first is None:
                    first = time.perf_counter()
                n_chunks += 1
                pieces.append(text)
                yield Token(text=text)
        cancelled = cancel is not None and cancel.cancelled
        if not done and not cancelled and finish is None:
            raise RemoteServerError(
                f"the server closed the stream mid-answer after {n_chunks} chunks"
            )
        end = time.perf_counter()
        text = "".join(pieces)
        # A reply cut off at max_tokens cannot match the schema; the caller sees
        # the stop reason, and it is no sign that the server ignored the schema.
        if json_schema is not None and not cancelled and finish != "length":
            _check_schema(text, json_schema)
        n_generated = int(usage.get("completion_tokens") or n_chunks)
        n_prompt = int(usage.get("prompt_tokens") or 0)
        self._last_tokens = n_prompt + n_generated
        decode_s = end - first if first is not None else 0.0
        stats = GenerationStats(
            n_prompt_tokens=n_prompt,
            n_generated=n_generated,
            time_to_first_token_s=(first - started) if first is not None else None,
            tokens_per_second=(n_generated / decode_s) if decode_s > 0 else 0.0,
            stop_reason=_stop_reason(cancelled, finish),
        )
        yield Finished(text=text, stats=stats)


def _empty_finish(reason: StopReason) -> Finished:
    stats = GenerationStats(
        n_prompt_tokens=0,
        n_generated=0,
        time_to_first_token_s=None,
        tokens_per_second=0.0,
        stop_reason=reason,
    )
    return Finished(text="", stats=stats)


def _without(text: str, key: str | None) -> str:
    return text.replace(key, "[REDACTED:API_KEY]") if key else text


def _stop_reason(cancelled: bool, finish: str | None) -> StopReason:
    if cancelled:
        return "cancelled"
    return "max_tokens" if finish == "length" else "eos"


def _check_schema(text: str, schema: Mapping[str, Any]) -> None:
    try:
        jsonschema.validate(json.loads(text), dict(schema))
    except (ValueError, jsonschema.ValidationError) as e:
        raise ConstrainedOutputUnsupportedError(
            f"the server did not constrain its output to the schema: {str(e)[:300]}"
        ) from e
