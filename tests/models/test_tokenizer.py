"""The host's vocabulary-only token counter agrees with the loaded model."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.catalog import embedded_default
from models.errors import ModelFileError, ModelLoadError
from models.runtime import Runtime, RuntimeConfig
from models.tokenizer import TokenCounter, approximate_tokens, counter_for

TEXTS = ["", "hello", "Hello, world! 你好 — ünïcödé", "<|im_start|>user\nhi<|im_end|>", "x " * 500]


@pytest.mark.model
def test_counts_match_the_runtime_tokenizer() -> None:
    path = embedded_default().path
    counter = TokenCounter(path)
    runtime = Runtime(RuntimeConfig(model_path=path, n_ctx=512))
    try:
        for text in TEXTS:
            assert counter(text) == runtime.count_tokens(text), text
    finally:
        runtime.close()
        counter.close()


@pytest.mark.model
def test_counter_for_shares_one_counter_per_file() -> None:
    path = str(embedded_default().path)
    assert counter_for(path) is counter_for(path)
    assert counter_for(path)("one two three") >= 3


def test_missing_and_corrupt_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        TokenCounter(tmp_path / "nope.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="vocabulary of bad.gguf"):
        TokenCounter(bad)


def test_approximation_is_monotonic_and_zero_for_empty() -> None:
    assert approximate_tokens("") == 0
    assert 0 < approximate_tokens("abc") <= approximate_tokens("abc" * 100)


@pytest.mark.model
def test_counter_for_spec_picks_the_vocabulary_or_the_estimate(tmp_path: Path) -> None:
    from models.factory import ModelSpec
    from models.tokenizer import counter_for_spec

    assert counter_for_spec(ModelSpec()) is counter_for(str(embedded_default().path))
    assert counter_for_spec(ModelSpec(backend="fake")) is approximate_tokens
    assert counter_for_spec(None) is approximate_tokens
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a model")
    assert counter_for_spec(ModelSpec(path=broken)) is approximate_tokens
