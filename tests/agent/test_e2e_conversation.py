"""A session as one conversation, with the real embedded model.

Through the real path (AgentHost, the agent process, llama.cpp): a second
errand evaluates only its new tokens. In process (the executor on a
:class:`~models.runtime.Runtime`): tool output far past n_ctx in one errand
leaves the pinned instructions and task in the cache, and the errand still
ends in a valid step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.host.errand import AgentHost
from agent.host.policy import PolicyEngine
from agent.host.tools.registry import offers
from agent.protocol import ErrandLimits, Task, ToolRequest, ToolResult
from agent.worker.executor import Executor
from models.catalog import embedded_default
from models.factory import ModelSpec
from models.interface import CancelToken
from models.runtime import Runtime, RuntimeConfig
from tests.agent.hostkit import ScriptedAnswerer

pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.timeout(1200)]

N_CTX = 768  # the instructions (~370 tokens) and the task pinned, with a window left


def test_the_second_errand_of_a_session_evaluates_only_its_new_tokens(workspace: Path) -> None:
    (workspace / "notes.txt").write_text("buy milk\n")
    host = AgentHost(
        ModelSpec(n_ctx=N_CTX, n_threads=1),
        workspace=workspace,
        broker=None,
        memory=None,
        policy=PolicyEngine(),
        prompt=ScriptedAnswerer(),
        audit=None,
        session_id="conversation-test",
        tools=["list_dir"],
        limits=ErrandLimits(max_steps=2, max_tokens_per_step=48),
    )
    try:
        first = host.run_errand("List the files in the workspace.")
        second = host.run_errand("Say hello.")
    finally:
        host.close()
    assert first.stats is not None and second.stats is not None, (first.error, second.error)
    assert first.outcome in ("final", "finish", "max_steps")
    assert second.outcome in ("final", "finish", "max_steps")
    # The first errand prefilled the system prompt (hundreds of tokens); the
    # second reuses it and everything after it: only its task and its steps' output.
    assert first.stats.evaluated_tokens > 200
    assert second.stats.evaluated_tokens < first.stats.evaluated_tokens * 2 / 3, (
        first.stats,
        second.stats,
    )


class BigFile:
    """Answers every read_file with text far longer than the context."""

    def __init__(self, chars: int) -> None:
        self.chars = chars
        self.calls = 0

    def call(self, request: ToolRequest, cancel: CancelToken) -> ToolResult:
        self.calls += 1
        text = ("The quarterly numbers went up again. " * (self.chars // 37 + 1))[: self.chars]
        return ToolResult(call_id=request.call_id, ok=True, content=text)


@pytest.mark.parametrize("can_shift", [True, False])
def test_instructions_and_task_stay_pinned_after_ten_contexts_of_tool_output(
    can_shift: bool,
) -> None:
    config = RuntimeConfig(model_path=embedded_default().path, n_ctx=N_CTX, n_threads=1)
    tools = BigFile(chars=10 * N_CTX * 4)
    task = Task(
        task="Read report.txt with read_file, then say in one sentence what it is about.",
        tools=offers(["read_file"]),
        limits=ErrandLimits(max_steps=3, max_tokens_per_step=48, max_result_chars=10**6),
        conversation="pinned",
    )
    with Runtime(config, can_shift=can_shift) as rt:
        # Open paths: the small-model scaffold would answer from a short side prompt
        # after the read, and the tool output would never reach the conversation.
        executor = Executor(rt, tools, lambda _: None, closed_paths=False)
        answer = executor.run(task, CancelToken())
        cache = rt.cache
        prefix, span = cache.pinned
        assert tools.calls >= 1 and cache.n_evicted > 9 * N_CTX // 2
        assert span is not None and prefix > cache.n_sink
        kept = cache.kept
        # From the cache's own token history: the pinned tokens are all there, in place.
        assert kept[:prefix] == list(range(prefix))
        assert set(range(*span)) <= set(kept)
        assert [int(t) for t in rt.llama.input_ids[: cache.n_cached]] == [
            cache.history[i] for i in kept
        ]
        pinned_text = rt.llama.detokenize([cache.history[i] for i in range(*span)]).decode()
        assert "Read report.txt" in pinned_text
    # Every step parsed under the grammar: it ended by an answer or a limit.
    assert answer.stats.stop_reason in ("final", "finish", "max_steps")
    print("answer:", json.dumps(answer.text))
