"""The errand loop that runs in the agent process.

Each step the executor asks the model for one JSON object under the schema
:func:`agent.protocol.step_schema` builds from the tools the host offered,
so a small model's reply always parses: either a tool call, handed to the host
through a :class:`ToolCaller`, or a final answer. Tool results come back as
untrusted data (see :mod:`agent.worker.prompt`). The loop stops at a final answer, the
``finish`` tool, the step limit, the token limit, or a cancel.

The executor knows nothing about pipes: the worker gives it a
:class:`ToolCaller` that talks to the host, tests give it one that answers in
process.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.errors import ErrandCancelledError
from agent.protocol import (
    FINISH_TOOL,
    AgentMessage,
    ErrandStats,
    FinalAnswer,
    Progress,
    Resample,
    StopReason,
    Task,
    TokenChunk,
    ToolRequest,
    ToolResult,
)
from agent.worker.conversation import INSTRUCTIONS_CHANGED, Conversation, mask_stub
from agent.worker.prompt import (
    answer_messages,
    correction_message,
    repeat_message,
    wrap_tool_result,
)
from agent.worker.scaffold import StepScaffold, is_question, named_paths
from models.errors import GenerationError, ModelError
from models.interface import (
    CancelToken,
    ChatModel,
    ContextState,
    Finished,
    Message,
    PinnableModel,
    Token,
)

log = logging.getLogger(__name__)

ANSWER_TOKENS = 160
"""Tokens allowed for a plain-text answer (a sentence or a short list; a small model rambles)."""

class ToolCaller(Protocol):
    """Carries a tool call to the host and returns its result."""

    def call(self, request: ToolRequest, cancel: CancelToken) -> ToolResult:
        """Run ``request`` on the host side.

        Raises:
            agent.errors.ErrandCancelledError: ``cancel`` fired while waiting.
        """
        ...


class Executor:
    """Runs errands with one model.

    Args:
        model: The model that chooses each step.
        tools: Carries tool calls to the host.
        emit: Receives :class:`TokenChunk` and :class:`Progress` messages for the host.
        closed_paths: Whether ``list_dir`` and ``read_file`` take only paths the
            errand has seen, and a question is answered as plain text
            (:class:`agent.worker.scaffold.StepScaffold`); None: for a local
            llama.cpp model, whose small sizes need it.
    """

    def __init__(
        self,
        model: ChatModel,
        tools: ToolCaller,
        emit: Callable[[AgentMessage], None],
        *,
        closed_paths: bool | None = None,
    ) -> None:
        self._model = model
        self._tools = tools
        self._emit = emit
        self._closed_paths = closed_paths
        self._conversation: Conversation | None = None

    @property
    def conversation(self) -> Conversation | None:
        """The session's conversation so far (None before the first errand)."""
        return self._conversation

    def adopt(self, conversation: Conversation) -> None:
        """Continue ``conversation`` (restored with its KV state) from the next task on."""
        self._conversation = conversation

    def forget(self) -> None:
        """Drop the conversation: the next task starts afresh from its history."""
        self._conversation = None

    def _open(self, task: Task) -> Conversation:
        """The conversation ``task`` continues, or a new one."""
        conv = self._conversation
        if conv is not None and conv.continues(task):
            if conv.update_system(task):
                changed = Progress(
                    step=0, max_steps=task.limits.max_steps, message=INSTRUCTIONS_CHANGED
                )
                self._emit(changed)
            return conv
        conv = Conversation.start(task)
        self._conversation = conv
        return conv

    def run(self, task: Task, cancel: CancelToken) -> FinalAnswer:
        """Run one errand to its end.

        Returns:
            The final answer; its ``stats.stop_reason`` says whether the model
            answered, or a limit or a cancel stopped it.

        Raises:
            models.errors.ModelError: The model failed.
        """
        limits = task.limits
        scaffold = self._scaffold(task)
        conv = self._open(task)
        # The errand's messages go straight into the session's conversation.
        messages = conv.messages
        messages.append(Message(role="user", content=task.task))
        task_index = len(messages) - 1
        pin = self._model.pin_messages if isinstance(self._model, PinnableModel) else None
        generated = 0
        evaluated = 0
        tool_calls = 0
        resamples = 0

        def done(text: str, reason: StopReason, steps: int) -> FinalAnswer:
            stats = ErrandStats(
                steps=steps,
                tool_calls=tool_calls,
                generated_tokens=generated,
                evaluated_tokens=evaluated,
                stop_reason=reason,
                resamples=resamples,
            )
            return FinalAnswer(text=text, stats=stats, context=self._context())

        for step in range(1, limits.max_steps + 1):
            if cancel.cancelled:
                return done("", "cancelled", step - 1)
            budget = min(limits.max_tokens_per_step, limits.max_total_tokens - generated)
            if budget <= 0:
                return done(_limit_text("token", limits.max_total_tokens), "max_tokens", step - 1)
            self._emit(Progress(step=step, max_steps=limits.max_steps, context=self._context()))
            conv.fit(self._model.info.n_ctx, self._model.count_tokens, keep_from=task_index)
            if pin is not None:
                pin(1, task_index)
            chosen = self._choose(task, messages, scaffold, budget, cancel, step)
            generated += chosen.generated
            evaluated += chosen.evaluated
            resamples += chosen.resamples
            finished, reply = chosen.finished, chosen.finished.text.strip()
            if cancel.cancelled or finished.stats.stop_reason == "cancelled":
                return done("", "cancelled", step)
            messages.append(Message(role="assistant", content=reply))
            if chosen.plain:
                return done(_plain_answer(reply), "final", step)
            try:
                action = _parse_action(reply)
            except ValueError as e:
                log.info("step %d: unusable reply: %s", step, e)
                problem = str(e)
                if finished.stats.stop_reason == "max_tokens":
                    problem = f"it was cut off at {budget} tokens; keep replies short"
                messages.append(correction_message(problem))
                continue
            if "final" in action:
                return done(str(action["final"]), "final", step)
            tool, arguments = action["tool"], action["arguments"]
            if tool == FINISH_TOOL:
                try:
                    return done(_finish_text(arguments), "finish", step)
                except ValueError as e:
                    messages.append(correction_message(f"finish needs an answer ({e})"))
                    continue
            if scaffold.is_repeat(tool, arguments):
                # Only a model that ignores the grammar gets here: the result is
                # already in the context, so say so instead of running it again.
                messages.append(repeat_message(tool))
                continue
            tool_calls += 1
            request = ToolRequest(
                call_id=f"c{step}",
                tool=tool,
                arguments=arguments,
                confidence=finished.stats.confidence,
            )
            try:
                result = self._tools.call(request, cancel)
            except ErrandCancelledError:
                return done("", "cancelled", step)
            scaffold.record(tool, arguments, ok=result.ok, content=result.content)
            conv.add_result(
                wrap_tool_result(tool, result, max_chars=limits.max_result_chars),
                mask_stub(tool, arguments, request.call_id),
            )
        return done(_limit_text("step", limits.max_steps), "max_steps", limits.max_steps)

    def _choose(
        self,
        task: Task,
        messages: Sequence[Message],
        scaffold: StepScaffold,
        budget: int,
        cancel: CancelToken,
        step: int,
    ) -> _Choice:
        """Generate one step; a repeated call is rejected and the step sampled again."""
        generated = evaluated = 0
        exclude: str | None = None
        while True:
            schema = scaffold.step_schema(exclude=exclude)
            plain = scaffold.closed_paths and scaffold.only_answer_left(schema)
            if plain:
                # A small model answers as plain text from a short context (the
                # files it read and the question) where, in the errand, it echoes.
                asked = answer_messages(task.task, scaffold.files_read())
                if isinstance(self._model, PinnableModel):
                    # The session's conversation stays in the cache for the next errand.
                    with self._model.aside():
                        self._model.pin_messages(0)
                        finished = self._generate(
                            asked, min(budget, ANSWER_TOKENS), None, cancel, step
                        )
                else:
                    finished = self._generate(asked, min(budget, ANSWER_TOKENS), None, cancel, step)
            else:
                finished = self._generate(messages, budget, schema, cancel, step)
            generated += finished.stats.n_generated
            evaluated += finished.stats.n_prompt_tokens
            budget -= finished.stats.n_generated
            if exclude is not None or plain or budget <= 0 or cancel.cancelled:
                break
            try:
                action = _parse_action(finished.text.strip())
            except ValueError:
                break
            tool = action.get("tool")
            if tool is None or not scaffold.is_repeat(tool, action["arguments"]):
                break
            # Sampled again without that tool: a grammar that excludes just the
            # exact call makes every step slower (docs/benchmarks.md).
            log.info("step %d: %s repeats a call; sampled again without it", step, tool)
            exclude = tool
        resamples = 0
        if task.resample is not None and not plain and _is_unsure(finished, task.resample.floor):
            if _valid_call(finished, scaffold):
                finished, resamples, more_generated, more_evaluated = self._resample(
                    task.resample, messages, scaffold, schema, finished, budget, cancel, step
                )
                generated += more_generated
                evaluated += more_evaluated
        return _Choice(finished, plain, generated, evaluated, resamples)

    def _resample(
        self,
        resample: Resample,
        messages: Sequence[Message],
        scaffold: StepScaffold,
        schema: dict[str, Any],
        first: Finished,
        budget: int,
        cancel: CancelToken,
        step: int,
    ) -> tuple[Finished, int, int, int]:
        """Sample an unsure tool call again at temperature; keep the surest valid call.

        Returns:
            The reply kept, and how many generations, generated and evaluated
            tokens the further tries took.
        """
        best = first
        tries = generated = evaluated = 0
        confidences = [first.stats.confidence]
        while tries + 1 < resample.tries and budget > 0 and not cancel.cancelled:
            tries += 1
            finished = self._generate(
                messages, budget, schema, cancel, step, temperature=resample.temperature
            )
            generated += finished.stats.n_generated
            evaluated += finished.stats.n_prompt_tokens
            budget -= finished.stats.n_generated
            confidences.append(finished.stats.confidence)
            if finished.stats.stop_reason == "cancelled":
                break
            surer = _confidence(finished) > _confidence(best)
            if surer and _valid_call(finished, scaffold):
                best = finished
            if not _is_unsure(best, resample.floor):
                break
        log.info(
            "step %d: unsure call resampled %d time(s); confidences %s, kept %s",
            step, tries, confidences, best.stats.confidence,
        )  # fmt: skip
        return best, tries, generated, evaluated

    def _scaffold(self, task: Task) -> StepScaffold:
        closed = task.scaffold if task.scaffold is not None else self._closed_paths
        if closed is None:
            closed = self._model.info.backend == "llama.cpp"
        # A small model writes the answer to a question into a file: with closed
        # paths, a question gets the read tools only, and the answer once they run out.
        return StepScaffold(
            task.tools,
            closed_paths=closed,
            answer_only=closed and is_question(task.task),
            named=named_paths(task.task),
        )

    def _context(self) -> ContextState | None:
        try:
            return self._model.context_state()
        except ModelError as e:  # the gauge is optional; the errand goes on
            log.info("no context state: %s", e)
            return None

    def _generate(
        self,
        messages: Sequence[Message],
        max_tokens: int,
        schema: dict[str, Any] | None,
        cancel: CancelToken,
        step: int,
        *,
        temperature: float = 0.0,
    ) -> Finished:
        for event in self._model.stream_chat(
            messages,
            max_tokens=max_tokens,
            json_schema=schema,
            temperature=temperature,
            cancel=cancel,
        ):
            if isinstance(event, Token):
                if event.text:
                    self._emit(TokenChunk(text=event.text, step=step))
            elif isinstance(event, Finished):
                return event
        raise GenerationError("the model's stream ended without a final event")


@dataclass(frozen=True)
class _Choice:
    """One step's reply, and what generating it (rejected tries too) cost."""

    finished: Finished
    plain: bool
    generated: int
    evaluated: int
    resamples: int = 0


def _confidence(finished: Finished) -> float:
    """The reply's confidence; a reply without one counts as least sure."""
    confidence = finished.stats.confidence
    return float("-inf") if confidence is None else confidence


def _is_unsure(finished: Finished, floor: float) -> bool:
    """Whether the reply has a confidence and it is below ``floor`` (unknown is not unsure)."""
    confidence = finished.stats.confidence
    return confidence is not None and confidence < floor


def _valid_call(finished: Finished, scaffold: StepScaffold) -> bool:
    """Whether the reply is a whole tool call that is no repeat."""
    if finished.stats.stop_reason not in ("eos", "stop"):
        return False
    try:
        action = _parse_action(finished.text.strip())
    except ValueError:
        return False
    tool = action.get("tool")
    return tool is not None and not scaffold.is_repeat(tool, action["arguments"])


def _parse_action(reply: str) -> dict[str, Any]:
    """Return ``{"final": str}`` or ``{"tool": str, "arguments": dict}``.

    Raises:
        ValueError: The reply is not one of those (named in the message).
    """
    try:
        obj = json.loads(reply)
    except json.JSONDecodeError as e:
        raise ValueError(f"it is not valid JSON ({e.msg} at character {e.pos})") from e
    if not isinstance(obj, dict):
        raise ValueError("it is not a JSON object")
    if "final" in obj:
        if not isinstance(obj["final"], str):
            raise ValueError('"final" must be a string')
        return {"final": obj["final"]}
    tool, arguments = obj.get("tool"), obj.get("arguments", {})
    if not isinstance(tool, str) or not tool:
        raise ValueError('it has neither "final" nor a "tool" name')
    if not isinstance(arguments, dict):
        raise ValueError('"arguments" must be a JSON object')
    return {"tool": tool, "arguments": arguments}


_FENCE_ECHO = re.compile(r"<<<\s*(?:END\s+)?[0-9a-f]{0,16}\s*>{0,3}")
"""A fence marker of :func:`agent.worker.prompt.answer_messages` as a small model echoes it."""


def _plain_answer(reply: str) -> str:
    """The answer in a plain-text reply (the model may still have written the JSON).

    A small model echoes the prompt's fence markers and the question: those
    lines are dropped.
    """
    unfenced = _FENCE_ECHO.sub("", reply)
    kept = [line for line in unfenced.splitlines() if not line.strip().startswith("Question:")]
    reply = "\n".join(kept).strip() or reply
    if len(reply) > 1 and reply[0] == reply[-1] == '"':
        reply = reply[1:-1]
    try:
        action = _parse_action(reply)
    except ValueError:
        return reply
    if "final" in action:
        return str(action["final"])
    answer = action["arguments"].get("answer") if action["tool"] == FINISH_TOOL else None
    return answer if isinstance(answer, str) else reply


def _finish_text(arguments: dict[str, Any]) -> str:
    """The user-facing text of a ``finish`` call: its ``answer`` argument.

    Raises:
        ValueError: There is no string ``answer`` (the grammar makes this rare).
    """
    answer = arguments.get("answer")
    if not isinstance(answer, str):
        raise ValueError("the answer argument must be a string")
    return answer


def _limit_text(what: str, limit: int) -> str:
    return f"Stopped: the errand reached its {what} limit ({limit}) without a final answer."
