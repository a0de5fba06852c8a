"""Token and group confidence (DeepConf) from logits and from returned log-probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.confidence import (
    lowest_group_confidence,
    token_confidence_from_logits,
    token_confidence_from_logprobs,
)


def test_a_peaked_distribution_is_more_confident_than_a_flat_one() -> None:
    flat = np.zeros(100, dtype=np.float32)
    peaked = flat.copy()
    peaked[7] = 20.0
    assert token_confidence_from_logits(peaked) > token_confidence_from_logits(flat)


def test_the_token_confidence_is_the_negative_mean_top_k_log_probability() -> None:
    logits = np.log(np.array([0.5, 0.25, 0.125, 0.125], dtype=np.float32))
    expected = -(math.log(0.5) + math.log(0.25)) / 2
    assert token_confidence_from_logits(logits, k=2) == pytest.approx(expected, rel=1e-5)
    assert token_confidence_from_logprobs([math.log(0.5), math.log(0.25)]) == pytest.approx(
        expected
    )
    assert token_confidence_from_logprobs([]) is None


def test_the_lowest_group_is_the_weakest_window() -> None:
    values = [9.0] * 10 + [1.0, 1.0] + [9.0] * 10
    assert lowest_group_confidence(values, window=2) == 1.0
    assert lowest_group_confidence(values, window=4) == 5.0
    assert lowest_group_confidence([3.0, 5.0], window=8) == 4.0
    assert lowest_group_confidence([]) is None


@pytest.mark.model
def test_the_llama_runtime_reports_the_confidence_of_a_generation() -> None:
    from models.factory import ModelSpec, open_model
    from models.interface import Message, complete_chat

    model = open_model(ModelSpec(n_ctx=512))
    try:
        done = complete_chat(model, [Message(role="user", content="Say hi.")], max_tokens=12)
    finally:
        model.close()
    assert done.stats.n_generated > 0
    assert done.stats.confidence is not None and done.stats.confidence > 0
