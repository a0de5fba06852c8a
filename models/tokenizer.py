"""Count tokens with a model's own tokenizer, without loading its weights.

The host needs token counts (memory budgets per level) but does not run the
model: the agent process does. llama.cpp can open a GGUF file with
``vocab_only=True``, which reads the vocabulary and none of the tensors — a
few milliseconds and a few megabytes — so the host counts exactly what the
model will see.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from models.errors import ModelFileError, ModelLoadError


class TokenCounter:
    """Counts tokens with the vocabulary of one GGUF file.

    Args:
        model_path: The GGUF file.

    Raises:
        ModelFileError: The file does not exist.
        ModelLoadError: llama.cpp could not read its vocabulary.
    """

    def __init__(self, model_path: Path | str) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise ModelFileError(f"model file {path} does not exist")
        import llama_cpp

        try:
            with _quiet_stderr():
                self._llm: Any = llama_cpp.Llama(
                    model_path=str(path), vocab_only=True, verbose=False
                )
        except (ValueError, RuntimeError, OSError) as e:
            raise ModelLoadError(f"cannot read the vocabulary of {path.name}: {e}") from e
        self.path = path
        self._lock = threading.Lock()

    def __call__(self, text: str) -> int:
        """Return how many tokens ``text`` takes (no BOS; special tokens as text)."""
        if not text:
            return 0
        with self._lock:  # llama.cpp's tokenizer state is not shared-thread safe
            return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def close(self) -> None:
        """Free the vocabulary."""
        with self._lock:
            llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()


@lru_cache(maxsize=4)
def counter_for(model_path: str) -> TokenCounter:
    """A shared :class:`TokenCounter` per model file (vocabularies are read-only)."""
    return TokenCounter(model_path)


def approximate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about 4 characters per token) for remote models."""
    return max(1, len(text) // 4) if text else 0


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    # llama.cpp prints its loader log on fd 2 even with verbose=False for some
    # messages; keep the terminal of `keyless` clean.
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    saved = os.dup(fd)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def counter_for_spec(spec: Any) -> Callable[[str], int]:
    """The best token counter for a ``models.factory.ModelSpec``.

    The backend's own counter where it ``counts_tokens_locally`` (a local
    GGUF: its vocabulary); otherwise, or when it cannot count for these
    settings (a file whose vocabulary cannot be read; the agent process will
    report that file's real problem when it loads it), :func:`approximate_tokens`.
    """
    if spec is None:
        return approximate_tokens
    from models.backends import backend_for

    backend = backend_for(spec)
    counter = backend.counter(spec.settings) if backend.counter is not None else None
    return counter if counter is not None else approximate_tokens
