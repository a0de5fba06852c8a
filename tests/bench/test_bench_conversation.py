"""The conversation benchmark's harness, once, small, with the embedded model.

The real host, agent process and model run at n_ctx 512: the next errand of a
session with 2x n_ctx of history evaluates fewer tokens than a fresh agent
process given the same history, and a read of 10x n_ctx leaves the pins in
the cache at every step.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_conversation import quarterly_report, run_history, run_tool_output, tokens_of

pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.timeout(600)]

N_CTX = 512


def test_the_report_is_dense_in_tokens_and_fits_one_tool_result() -> None:
    text = quarterly_report(4096)
    assert len(text.encode()) <= 4096
    assert tokens_of([text]) > len(text) // 2


def test_the_next_errand_evaluates_fewer_tokens_than_a_re_prefill(tmp_path: Path) -> None:
    (row,) = run_history(N_CTX, [2], 1, tmp_path)
    conv, fresh = row["conversation"], row["re_prefill"]
    assert conv["outcome"] in ("final", "finish", "max_steps"), conv
    assert fresh["outcome"] in ("final", "finish", "max_steps"), fresh
    assert conv["conversation_tokens"] > 2 * N_CTX
    assert 0 < conv["evaluated_tokens"] < fresh["evaluated_tokens"] <= N_CTX
    assert conv["ttft_s"] is not None and fresh["ttft_s"] is not None


def test_ten_contexts_of_tool_output_leave_the_pins_in_the_cache(tmp_path: Path) -> None:
    result = run_tool_output(N_CTX, 10, 1, tmp_path)
    assert result["enough_output"], result["tool_output_tokens"]
    assert result["steps_checked"] >= 2
    assert result["pins_intact"], result["most_evicted"]
    assert result["most_evicted"]["n_evicted"] > 9 * N_CTX
    assert result["valid_end"], result["outcome"]
