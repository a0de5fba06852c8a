"""The messages exchanged between the host and the agent process.

The agent process (``python -m agent.worker``) talks to the host only through
newline-delimited JSON on its stdin (host → agent) and stdout (agent → host).
Every line is one message: a JSON object with the protocol version ``v`` and a
``type`` naming the message, validated by the pydantic model of that type.

The agent process is untrusted, so the host treats every line it reads as
hostile input: a line longer than :data:`MAX_LINE`, not JSON, of another
protocol version, of an unknown type, or sent in the wrong direction raises
:class:`agent.errors.ProtocolError` with a message that names the problem.

The host offers the tools: each :class:`Task` carries one :class:`ToolOffer`
per tool (name, description, generated argument schema), and both sides derive
the grammar of a model step from them with :func:`step_schema`, so the agent
process imports no tool code.

Remote models are relayed: the agent process has no network and
never sees an API key, so it sends a :class:`ModelRequest` and the host answers
with :class:`ModelChunk` events and one :class:`ModelDone` or
:class:`ModelFailed`.

Why one module of this length: it is the whole wire format of a trust
boundary, versioned as one (``v``); every message type, its limits and the
parser that enforces them stay side by side so a reviewer reads the protocol
in one place and a change to it is one diff.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Annotated, Any, BinaryIO, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from agent.errors import ProtocolError
from models.factory import ModelSpec
from models.interface import ContextState, GenerationStats, Message, ModelInfo
from vault.handle import CapabilityInfo

PROTOCOL_VERSION = 2
"""Bumped whenever a message changes incompatibly (2: tasks carry :class:`ToolOffer` s)."""

FINISH_TOOL = "finish"
"""The tool that ends an errand with its ``answer`` argument; the host always offers it."""

MAX_LINE = 4 * 1024 * 1024
"""The longest line (bytes, newline included) either side accepts."""


class _Msg(BaseModel):
    """Fields every message carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: int = Field(default=PROTOCOL_VERSION, description="Protocol version of the sender.")


# --------------------------------------------------------------------------- host → agent


class ErrandLimits(BaseModel):
    """How far one errand may go before the executor stops it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_steps: int = Field(
        default=12, ge=1, le=200, description="Model turns (tool calls and the final answer)."
    )
    max_tokens_per_step: int = Field(
        default=512, ge=16, le=32_768, description="Generated tokens allowed for one turn."
    )
    max_total_tokens: int = Field(
        default=8192, ge=16, le=1_000_000, description="Generated tokens allowed for the errand."
    )
    max_result_chars: int = Field(
        default=12_000, ge=256, description="Longest tool result put into the prompt."
    )


class Resample(BaseModel):
    """How a tool call the model was unsure of is sampled again.

    A step whose tool call has a confidence (:mod:`models.confidence`) below
    ``floor`` is generated again at ``temperature`` (greedy decoding would
    give the same reply), up to ``tries`` generations in all, and the most
    confident valid call is kept.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    floor: float = Field(description="A tool call whose confidence is below this is resampled.")
    tries: int = Field(
        default=3, ge=2, le=16, description="Generations of the step at most, the first included."
    )
    temperature: float = Field(
        default=0.7, gt=0.0, le=2.0, description="Sampling temperature of the further tries."
    )


class ToolOffer(BaseModel):
    """One tool the model may call in an errand, as the host describes it.

    The agent process learns the tools only from these: it shows the name,
    description and arguments in the prompt, and decodes each step under
    :func:`step_schema` of the offers.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="The name the model calls.")
    description: str = Field(description="What the tool is for, shown to the model.")
    parameters: dict[str, Any] = Field(
        description="The JSON schema of its arguments, generated from the tool's pydantic model."
    )
    read_only: bool = Field(
        default=False,
        description="A call changes nothing a later call would see (so repeating one is useless).",
    )


class Hello(_Msg):
    """First message of the host: which model the agent process should run.

    Exactly one of ``model_spec`` (the agent opens the model itself, e.g. the
    local llama.cpp runtime) and ``relayed_model`` (the host serves generations
    through :class:`ModelRequest`) is set, or neither when the worker was
    started with ``--scripted-model``.
    """

    type: Literal["hello"] = "hello"
    model_spec: ModelSpec | None = Field(default=None, description="The model to open.")
    relayed_model: ModelInfo | None = Field(
        default=None, description="Set when the host relays a remote model."
    )


class Task(_Msg):
    """One errand to run."""

    type: Literal["task"] = "task"
    task: str = Field(description="What the user asked for.")
    memory_context: str = Field(default="", description="Loaded memory, already budgeted.")
    capabilities: list[CapabilityInfo] = Field(
        default_factory=list, description="Capability handles granted to this session."
    )
    history: list[Message] = Field(
        default_factory=list, description="Earlier turns of this session (user/assistant)."
    )
    tools: list[ToolOffer] = Field(description="The tools the model may call.")
    limits: ErrandLimits = Field(default_factory=ErrandLimits)
    resample: Resample | None = Field(
        default=None, description="Resample low-confidence tool calls; None: never."
    )
    conversation: str = Field(
        default="",
        max_length=64,
        description="The session's conversation id: a task with the id of the previous "
        "one continues its conversation (and the model's cache); empty or another id "
        "starts afresh from ``history``.",
    )
    scaffold: bool | None = Field(
        default=None,
        description="Use the small-model step scaffold (closed paths, a plain-text answer "
        "step); None: the agent decides (on for a local llama.cpp model).",
    )


class ToolResult(_Msg):
    """The host's answer to a :class:`ToolRequest`."""

    type: Literal["tool_result"] = "tool_result"
    call_id: str
    ok: bool = Field(description="False when the call was refused, denied or failed.")
    content: str = Field(description="The (redacted, truncated) output or the error message.")
    truncated: bool = False
    redacted: list[str] = Field(
        default_factory=list, description="Names of the secrets redacted from the content."
    )
    untrusted: bool = Field(default=True, description="Content came from outside the user.")


class Cancel(_Msg):
    """Stop the running errand as soon as possible."""

    type: Literal["cancel"] = "cancel"


class Shutdown(_Msg):
    """Stop the agent process."""

    type: Literal["shutdown"] = "shutdown"


class SaveState(_Msg):
    """Between errands: save the model's KV state and the conversation to ``path``.

    The agent answers :class:`StateReply`. ``history`` and ``model_sha256``
    bind the file (see :mod:`models.kvstate`); a restore must present the same.
    """

    type: Literal["save_state"] = "save_state"
    path: str = Field(max_length=4096, description="The state file, writable by the agent.")
    history: str = Field(default="", max_length=128, description="The host's history digest.")
    model_sha256: str = Field(default="", max_length=64, description="The model file's sha256.")


class RestoreState(_Msg):
    """Between errands: load the state saved at ``path`` instead of re-prefilling.

    The agent answers :class:`StateReply`; on success its conversation is the
    saved one, and the reply names its id for the host's next :class:`Task`.
    """

    type: Literal["restore_state"] = "restore_state"
    path: str = Field(max_length=4096)
    history: str = Field(default="", max_length=128)
    model_sha256: str = Field(default="", max_length=64)


class ModelChunk(_Msg):
    """A piece of text of a relayed generation."""

    type: Literal["model_chunk"] = "model_chunk"
    request_id: str
    text: str


class ModelDone(_Msg):
    """A relayed generation finished."""

    type: Literal["model_done"] = "model_done"
    request_id: str
    text: str = Field(description="The whole generated text.")
    stats: GenerationStats


class ModelFailed(_Msg):
    """A relayed generation failed on the host side."""

    type: Literal["model_failed"] = "model_failed"
    request_id: str
    message: str


# --------------------------------------------------------------------------- agent → host


class Ready(_Msg):
    """The agent process is up and its model is loaded."""

    type: Literal["ready"] = "ready"
    pid: int
    model: ModelInfo | None = None


class TokenChunk(_Msg):
    """Generated text, streamed for display."""

    type: Literal["token"] = "token"
    text: str
    step: int = 0


class Progress(_Msg):
    """The executor moved to another step."""

    type: Literal["progress"] = "progress"
    step: int
    max_steps: int
    message: str = ""
    context: ContextState | None = Field(
        default=None, description="The model's KV cache before this step (context gauge)."
    )


class ToolRequest(_Msg):
    """The model wants a tool run; the host decides and runs it."""

    type: Literal["tool_request"] = "tool_request"
    call_id: str
    tool: str
    arguments: dict[str, Any]
    confidence: float | None = Field(
        default=None,
        description="How sure the model was of the call (models.confidence); None if unknown.",
    )


StopReason = Literal["final", "finish", "cancelled", "max_steps", "max_tokens"]


class ErrandStats(BaseModel):
    """What an errand cost and why it ended."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int
    tool_calls: int
    generated_tokens: int
    stop_reason: StopReason
    evaluated_tokens: int = Field(
        default=0,
        ge=0,
        description="Prompt tokens the model evaluated (not reused from its cache).",
    )
    resamples: int = Field(
        default=0,
        ge=0,
        description="Extra generations of low-confidence tool calls (their tokens are counted).",
    )


class FinalAnswer(_Msg):
    """The errand ended (with an answer, or stopped by a limit or a cancel)."""

    type: Literal["final"] = "final"
    text: str
    stats: ErrandStats
    context: ContextState | None = Field(
        default=None, description="The model's KV cache at the end of the errand."
    )


class StateReply(_Msg):
    """The answer to :class:`SaveState` or :class:`RestoreState`."""

    type: Literal["state"] = "state"
    action: Literal["save", "restore"]
    ok: bool
    message: str = Field(default="", max_length=2000, description="Why it failed.")
    conversation: str = Field(default="", max_length=64, description="The conversation's id.")
    n_tokens: int = Field(default=0, ge=0)
    size: int = Field(default=0, ge=0, description="The state file's bytes.")


class AgentErrorMsg(_Msg):
    """The agent process could not go on with the errand (or refused a message)."""

    type: Literal["error"] = "error"
    message: str
    kind: Literal["protocol", "model", "internal"] = "internal"


class ModelRequest(_Msg):
    """Ask the host for a generation from the relayed model."""

    type: Literal["model_request"] = "model_request"
    request_id: str
    messages: list[Message]
    max_tokens: int = Field(ge=1)
    json_schema: dict[str, Any] | None = None
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)


class ModelCancel(_Msg):
    """The agent no longer wants the relayed generation ``request_id``."""

    type: Literal["model_cancel"] = "model_cancel"
    request_id: str


def step_schema(offers: Iterable[ToolOffer]) -> dict[str, Any]:
    """The JSON schema of one model step: a call of one of ``offers``, or a final answer.

    ``anyOf`` over ``{"tool": <const name>, "arguments": <the offer's schema>}``
    for each offer, and ``{"final": <string>}``. The executor passes it as
    ``json_schema`` so the grammar makes every step parse. Each offer's
    ``$defs`` move to one shared table under ``<tool>__<name>``.

    Args:
        offers: The tools offered (order kept, later duplicates of a name dropped).

    Returns:
        The schema (a fresh dict; callers may modify it).
    """
    options: list[dict[str, Any]] = []
    defs: dict[str, Any] = {}
    seen: set[str] = set()
    for offer in offers:
        if offer.name in seen:
            continue
        seen.add(offer.name)
        arguments = _inline_defs(copy.deepcopy(offer.parameters), offer.name, defs)
        options.append(
            {
                "type": "object",
                "properties": {"tool": {"const": offer.name}, "arguments": arguments},
                "required": ["tool", "arguments"],
                "additionalProperties": False,
            }
        )
    options.append(
        {
            "type": "object",
            "properties": {"final": {"type": "string"}},
            "required": ["final"],
            "additionalProperties": False,
        }
    )
    schema: dict[str, Any] = {"anyOf": options}
    if defs:
        schema["$defs"] = defs
    return schema


def _inline_defs(schema: dict[str, Any], prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """Move ``$defs`` of one tool's schema to the shared table, renaming their refs."""
    local = schema.pop("$defs", {})
    renames = {name: f"{prefix}__{name}" for name in local}

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                    out[key] = "#/$defs/" + renames[value.removeprefix("#/$defs/")]
                else:
                    out[key] = fix(value)
            return out
        if isinstance(node, list):
            return [fix(item) for item in node]
        return node

    for name, definition in local.items():
        defs[renames[name]] = fix(definition)
    fixed: dict[str, Any] = fix(schema)
    return fixed


HostMessage = (
    Hello
    | Task
    | ToolResult
    | Cancel
    | Shutdown
    | ModelChunk
    | ModelDone
    | ModelFailed
    | SaveState
    | RestoreState
)
"""Messages the host sends to the agent process."""

AgentMessage = (
    Ready
    | TokenChunk
    | Progress
    | ToolRequest
    | FinalAnswer
    | AgentErrorMsg
    | ModelRequest
    | ModelCancel
    | StateReply
)
"""Messages the agent process sends to the host."""

AnyMessage = HostMessage | AgentMessage

_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "host": TypeAdapter(Annotated[HostMessage, Field(discriminator="type")]),
    "agent": TypeAdapter(Annotated[AgentMessage, Field(discriminator="type")]),
}
_TYPES: dict[str, frozenset[str]] = {
    "host": frozenset(cls.model_fields["type"].default for cls in get_args(HostMessage)),
    "agent": frozenset(cls.model_fields["type"].default for cls in get_args(AgentMessage)),
}


def encode(msg: AnyMessage) -> bytes:
    """Serialise ``msg`` as one JSON line (with the trailing newline).

    Raises:
        ProtocolError: The encoded message is longer than :data:`MAX_LINE`.
    """
    line = msg.model_dump_json().encode("utf-8") + b"\n"
    if len(line) > MAX_LINE:
        raise ProtocolError(
            f"{msg.type} message is {len(line)} bytes, over the {MAX_LINE}-byte line limit"
        )
    return line


def decode(line: bytes, *, sender: Literal["host", "agent"]) -> AnyMessage:
    """Parse and validate one line sent by ``sender``.

    Args:
        line: The raw bytes of one line (the trailing newline is optional).
        sender: Who wrote the line; a message type the sender may not send is refused.

    Returns:
        The validated message.

    Raises:
        ProtocolError: The line is oversized, not UTF-8 JSON, not an object, of
            another protocol version, of an unknown or wrong-direction type, or
            fails validation. The message names which.
    """
    if len(line) > MAX_LINE:
        raise ProtocolError(f"line of {len(line)} bytes is over the {MAX_LINE}-byte limit")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"line is not UTF-8: {e.reason} at byte {e.start}") from e
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"line is not JSON: {e} (starts {_preview(line)})") from e
    if not isinstance(obj, dict):
        raise ProtocolError(f"message is not a JSON object (starts {_preview(line)})")
    version = obj.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version!r} is not the supported version {PROTOCOL_VERSION}"
        )
    kind = obj.get("type")
    if kind not in _TYPES[sender]:
        if kind in _TYPES["agent" if sender == "host" else "host"]:
            raise ProtocolError(f"the {sender} may not send a {kind!r} message")
        raise ProtocolError(f"unknown message type {str(kind)[:40]!r}")
    try:
        msg: AnyMessage = _ADAPTERS[sender].validate_python(obj)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or '(message)'}: {err['msg']}"
            for err in e.errors()[:5]
        )
        raise ProtocolError(f"invalid {kind!r} message: {problems}") from e
    return msg


def read_line(stream: BinaryIO) -> bytes | None:
    """Read one protocol line of at most :data:`MAX_LINE` bytes.

    Returns:
        The line, or None at end of input.

    Raises:
        ProtocolError: The line is longer than the limit (the rest of it is
            consumed, so the next read starts at the next line).
    """
    line = stream.readline(MAX_LINE + 1)
    if not line:
        return None
    if len(line) > MAX_LINE or not line.endswith(b"\n"):
        if len(line) <= MAX_LINE:
            return line  # the last line, without its newline
        size = len(line)
        while not line.endswith(b"\n"):
            line = stream.readline(MAX_LINE)
            size += len(line)
            if not line:
                break
        raise ProtocolError(f"line of at least {size} bytes is over the {MAX_LINE}-byte limit")
    return line


def _preview(line: bytes) -> str:
    return repr(line[:40])
