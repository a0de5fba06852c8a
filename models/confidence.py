"""How sure the model was of what it generated, from its own log-probabilities.

DeepConf (Fu et al., 2025, "Deep Think with Confidence") flags weak reasoning
traces by *token confidence*: at each generated token, the negative mean
log-probability of the ``k`` most likely tokens (a peaked distribution gives
a high value, a flat one a low value). A trace's confidence is its *lowest
group confidence*: the smallest mean token confidence over a sliding window
of consecutive tokens, so one unsure stretch marks the whole trace even when
the rest is boilerplate the grammar forces.

The llama.cpp runtime computes the token confidence from each step's logits;
a remote server does from the ``top_logprobs`` it returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

TOP_K = 5
"""Candidates per token whose log-probabilities are averaged."""

WINDOW = 8
"""Tokens per group: a tool call is some 15 to 60 tokens, a group is one argument or so."""


def token_confidence_from_logits(logits: npt.NDArray[np.float32], k: int = TOP_K) -> float:
    """The token confidence of one position from its raw logits (one per vocabulary entry).

    Args:
        logits: The model's logits for the position.
        k: How many of the most likely tokens to average over.

    Returns:
        ``-mean(log p)`` over the ``k`` most likely tokens (0 or more; higher is surer).
    """
    # It runs once per generated token: the vocabulary-wide work stays in
    # float32 (no copy of llama.cpp's buffer), only the sum is float64.
    row = np.asarray(logits, dtype=np.float32)
    k = max(1, min(k, row.size))
    top = np.partition(row, row.size - k)[row.size - k :].astype(np.float64)
    peak = float(row.max())
    log_z = peak + float(np.log(np.exp(row - peak).sum(dtype=np.float64)))
    return float(-(top - log_z).mean())


def token_confidence_from_logprobs(top_logprobs: Sequence[float]) -> float | None:
    """The token confidence of one position from the log-probabilities a server returned.

    Returns:
        ``-mean`` of them; None when there are none.
    """
    if not top_logprobs:
        return None
    return -sum(top_logprobs) / len(top_logprobs)


def lowest_group_confidence(confidences: Sequence[float], window: int = WINDOW) -> float | None:
    """The smallest mean token confidence over any ``window`` consecutive tokens.

    Shorter sequences are one group. None when there are no tokens.
    """
    if not confidences:
        return None
    window = max(1, min(window, len(confidences)))
    sums = np.convolve(np.asarray(confidences, dtype=np.float64), np.ones(window), "valid")
    return float(sums.min() / window)
