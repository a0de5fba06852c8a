"""A scripted stand-in for a real model, for tests and the scripted worker.

:class:`ScriptedModel` satisfies :class:`~models.interface.ChatModel`: each
generation pops the next scripted response and streams it word by word.
When the caller asks for JSON matching a schema, the scripted text must be
JSON that validates against it, just as a grammar-constrained real model's
output would; otherwise the generation fails with
:class:`~models.errors.GenerationError`, so a test cannot silently pass a
tool call the real model could never have produced.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from models.errors import GenerationError, ModelFileError
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

_TOKEN_RE = re.compile(r"\s*\S+|\s+")
_N_SINK = 4


def fake_tokens(text: str) -> list[str]:
    """Split text the way the fake model counts tokens: words with their leading space."""
    return _TOKEN_RE.findall(text)


class ScriptedModel:
    """A :class:`ChatModel` that replays scripted responses.

    Args:
        responses: Responses returned by successive generations, in order.
        n_ctx: Context size reported by :meth:`context_state`.
    """

    def __init__(self, responses: Iterable[str] = (), *, n_ctx: int = 4096) -> None:
        if n_ctx <= _N_SINK:
            raise GenerationError(f"n_ctx must be larger than {_N_SINK}, got {n_ctx}")
        self._queue: deque[str] = deque(responses)
        self.calls: list[list[Message]] = []
        self._n_ctx = n_ctx
        self._n_tokens = 0
        self._n_evicted = 0
        self._n_shifts = 0
        self._closed = False

    @classmethod
    def from_file(cls, path: Path | str, *, n_ctx: int = 4096) -> ScriptedModel:
        """Load responses from a JSON file holding a list of strings.

        Raises:
            ModelFileError: The file is missing, not JSON, or not a list of strings.
        """
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise ModelFileError(f"cannot read scripted responses {p}: {e.strerror or e}") from e
        except ValueError as e:
            raise ModelFileError(f"scripted responses {p} are not valid JSON: {e}") from e
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise ModelFileError(f"scripted responses {p} must be a JSON list of strings")
        return cls(data, n_ctx=n_ctx)

    def enqueue(self, *texts: str) -> None:
        """Add responses to the end of the script."""
        self._queue.extend(texts)

    @property
    def remaining(self) -> int:
        """Scripted responses not yet used."""
        return len(self._queue)

    @property
    def info(self) -> ModelInfo:
        """Describe the fake."""
        return ModelInfo(name="scripted", backend="fake", n_ctx=self._n_ctx)

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
        """Stream the next scripted response (see :class:`ChatModel`).

        Raises:
            GenerationError: No response is left, the conversation is empty,
                or the response does not satisfy ``json_schema``.
        """
        self._require_open()
        if not messages:
            raise GenerationError("cannot generate from an empty conversation")
        if max_tokens < 0:
            raise GenerationError(f"max_tokens must be >= 0, got {max_tokens}")
        text = self._next_response(messages, json_schema)
        if json_schema is not None:
            check_json(text, json_schema)
        self.calls.append(list(messages))
        return self._stream(messages, text, max_tokens, cancel)

    def _next_response(
        self, messages: Sequence[Message], json_schema: Mapping[str, Any] | None
    ) -> str:
        """The response to this call: the next scripted one.

        A subclass may answer otherwise (e.g. make one up when the script ran
        out); the caller still checks it against ``json_schema`` and streams it.

        Raises:
            GenerationError: No response is left.
        """
        if not self._queue:
            raise GenerationError("the scripted model has no response left")
        return self._queue.popleft()

    def _stream(
        self,
        messages: Sequence[Message],
        text: str,
        max_tokens: int,
        cancel: CancelToken | None,
    ) -> Iterator[StreamEvent]:
        prompt = sum(self.count_tokens(m.content) + 4 for m in messages) + 1
        self._account(prompt)
        out: list[str] = []
        stop: StopReason = "eos"
        for piece in fake_tokens(text):
            if cancel is not None and cancel.cancelled:
                stop = "cancelled"
                break
            if len(out) >= max_tokens:
                stop = "max_tokens"
                break
            out.append(piece)
            self._account(1)
            yield Token(text=piece)
        yield Finished(
            text="".join(out),
            stats=GenerationStats(
                n_prompt_tokens=prompt,
                n_generated=len(out),
                time_to_first_token_s=0.0 if out else None,
                tokens_per_second=0.0,
                stop_reason=stop,
            ),
        )

    def _account(self, n: int) -> None:
        self._n_tokens += n
        while self._n_tokens > self._n_ctx:
            chunk = max(1, (self._n_ctx - _N_SINK) // 8)
            self._n_tokens -= chunk
            self._n_evicted += chunk
            self._n_shifts += 1

    def count_tokens(self, text: str) -> int:
        """Count whitespace-separated words (each with its leading space)."""
        return len(fake_tokens(text))

    def context_state(self) -> ContextState:
        """Report a simulated sink cache."""
        sinks = min(_N_SINK, self._n_tokens)
        return ContextState(
            n_ctx=self._n_ctx,
            n_sink=sinks,
            n_window=self._n_tokens - sinks,
            n_evicted=self._n_evicted,
            n_shifts=self._n_shifts,
            shift_supported=True,
        )

    def reset(self) -> None:
        """Forget the simulated conversation (the script stays)."""
        self._require_open()
        self._n_tokens = self._n_evicted = self._n_shifts = 0

    def close(self) -> None:
        """Refuse further generations. Safe to call twice."""
        self._closed = True

    def _require_open(self) -> None:
        if self._closed:
            raise GenerationError("the scripted model was closed")


def check_json(text: str, schema: Mapping[str, Any]) -> Any:
    """Parse ``text`` as JSON and check it against ``schema``.

    Returns:
        The parsed value.

    Raises:
        GenerationError: Not JSON, an invalid schema, or the first violation
            found, with its path.
    """
    import jsonschema

    try:
        value = json.loads(text)
    except ValueError as e:
        raise GenerationError(f"scripted output is not JSON: {e}") from e
    try:
        validator_cls = jsonschema.validators.validator_for(schema)
        validator_cls.check_schema(dict(schema))
        validator = validator_cls(dict(schema))
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    except jsonschema.exceptions.SchemaError as e:
        raise GenerationError(f"invalid JSON schema: {e.message}") from e
    if error is not None:
        where = error.json_path
        raise GenerationError(
            f"scripted output does not match the JSON schema at {where}: {error.message}"
        )
    return value
