"""Distillation: the model proposes operations, the host validates, applies and bounds.

The model sees a level's active topics (and, when distilling a session, the
long-term topics they could join) and answers with a :class:`DistillPlan`
under its JSON schema (``ADD`` / ``UPDATE`` / ``MERGE`` / ``ARCHIVE`` /
``NONE``, each with a target topic). Nothing the model says is trusted:

* each operation is validated against the files (targets exist or not,
  sources exist, content present and not too long, no vault secret in it,
  one operation per target); invalid ones are skipped and reported;
* a topic that is rewritten first gets an archived copy (``name~N``), and
  merged or archived topics stay on disk with ``status: archived`` — nothing
  is deleted, everything stays searchable and restorable;
* after the model's plan, while the level is over capacity the host archives
  the active topic with the lowest score (recency and use) until it fits.

Distilling the session level promotes its topics to the project level:
topics the model did not mention are promoted as they are, and every
session topic is then archived with ``replaced_by`` pointing at where it went.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from memory.editor import TopicEditor, now_utc
from memory.errors import InvalidMemoryError
from memory.frontmatter import Provenance, Trust
from memory.store import Level, Topic, topic_slug
from models.errors import ModelError
from models.interface import ChatModel, Message, complete_chat

OpKind = Literal["ADD", "UPDATE", "MERGE", "ARCHIVE", "NONE"]
MAX_OPS = 24


class DistillOp(BaseModel):
    """One operation the model proposes."""

    model_config = ConfigDict(extra="ignore")

    op: OpKind = Field(description="What to do with the target topic.")
    target: str = Field(max_length=64, description="The topic name the operation is about.")
    content: str = Field(
        default="", max_length=4000, description="New markdown body (ADD, UPDATE, MERGE)."
    )
    sources: list[str] = Field(
        default_factory=list, max_length=8, description="Topics merged into the target (MERGE)."
    )


class DistillPlan(BaseModel):
    """The model's whole answer."""

    model_config = ConfigDict(extra="ignore")

    operations: list[DistillOp] = Field(max_length=MAX_OPS, description="Operations, in order.")


def plan_schema() -> dict[str, Any]:
    """The JSON schema the model's answer is constrained to.

    Length limits are left out: llama.cpp turns ``maxLength`` into one grammar
    rule per character and refuses grammars that large. The limits are still
    enforced here, when each operation is validated, and ``max_tokens`` bounds
    the answer.
    """
    schema: dict[str, Any] = _without_limits(DistillPlan.model_json_schema())
    return schema


def _without_limits(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _without_limits(v)
            for k, v in node.items()
            if k not in ("maxLength", "maxItems", "minLength", "minItems")
        }
    if isinstance(node, list):
        return [_without_limits(v) for v in node]
    return node


class AppliedOp(BaseModel):
    """An operation that was carried out."""

    model_config = ConfigDict(frozen=True)

    op: str
    target: str
    level: Level
    note: str = ""


class RejectedOp(BaseModel):
    """An operation that was skipped, and why."""

    model_config = ConfigDict(frozen=True)

    proposal: dict[str, Any]
    reason: str


class LevelDistill(BaseModel):
    """What distilling one level did."""

    level: Level
    into: Level = Field(description="Where new and merged topics were written.")
    capacity: int
    tokens_before: int
    tokens_after: int
    applied: list[AppliedOp] = Field(default_factory=list)
    rejected: list[RejectedOp] = Field(default_factory=list)
    archived_for_capacity: list[str] = Field(default_factory=list)
    model_error: str | None = None
    change_id: int | None = None


class DistillReport(BaseModel):
    """What a distillation run did, level by level."""

    levels: list[LevelDistill] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def change_ids(self) -> list[int]:
        """History ids of the changes made (undo them to revert)."""
        return [lv.change_id for lv in self.levels if lv.change_id is not None]


_TRUST_ORDER: dict[Trust, int] = {"untrusted": 0, "model": 1, "user": 2}


def topic_tokens(topic: Topic, count_tokens: Callable[[str], int]) -> int:
    """What a topic costs against its level's capacity."""
    return count_tokens(f"{topic.meta.title}\n{topic.body}")


def score(topic: Topic, now: datetime) -> float:
    """How much a topic deserves to stay: use count plus recency (higher stays)."""
    seen = topic.meta.last_used or topic.meta.updated
    age_days = max(0.0, (now - seen).total_seconds() / 86400)
    return math.log1p(topic.meta.uses) + math.exp(-age_days / 30)


def build_messages(
    *,
    level: Level,
    into: Level,
    entries: list[Topic],
    others: list[Topic],
    capacity: int,
    used: int,
    entry_chars: int,
) -> list[Message]:
    """The prompt that asks the model for a plan."""
    system = (
        "You keep a small long-term memory of markdown topics tidy. "
        f"The {into} level may hold {capacity} tokens; its topics now use {used}. "
        'Answer with JSON: {"operations": [{"op": ..., "target": ..., "content": ..., '
        '"sources": [...]}]}. Operations: ADD a new topic (target = new name, content = '
        "markdown); UPDATE an existing topic's content; MERGE near-duplicate topics (sources) "
        "into the target with combined content; ARCHIVE a stale or unneeded topic; NONE when "
        "nothing needs doing. Topic names use lowercase letters, digits and '-'. Keep facts, "
        "drop repetition, never invent facts. Keep each content under 40 words. Example: "
        '{"operations": [{"op": "MERGE", "target": "ports", "content": "API on 8000; dev '
        'server on 5173.", "sources": ["port", "ports"]}, {"op": "ARCHIVE", "target": '
        '"old-ci", "content": "", "sources": []}]}'
    )
    lines = []
    if level != into:
        lines.append(
            f"These {level} notes end now. Turn what is worth keeping into {into} topics "
            "(ADD, or MERGE them into existing ones):"
        )
    else:
        lines.append(f"The {level} topics:")
    lines.extend(_describe(t, entry_chars) for t in entries)
    if others:
        lines.append(f"\nExisting {into} topics:")
        lines.extend(_describe(t, entry_chars) for t in others)
    return [Message(role="system", content=system), Message(role="user", content="\n".join(lines))]


def _describe(topic: Topic, entry_chars: int) -> str:
    body = topic.body.strip()
    if len(body) > entry_chars:
        body = body[: entry_chars - 1] + "…"
    last = (topic.meta.last_used or topic.meta.updated).date().isoformat()
    return f"\n## {topic.name} — {topic.meta.title} (uses {topic.meta.uses}, last {last})\n{body}"


def parse_plan(text: str) -> tuple[list[DistillOp], list[RejectedOp], str | None]:
    """Read the model's answer leniently: keep each valid operation.

    Returns:
        The valid operations, the rejected ones, and an error when the
        answer as a whole was unusable.
    """
    try:
        return DistillPlan.model_validate_json(text).operations, [], None
    except ValidationError:
        pass
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        salvaged = _complete_operations(text)
        if salvaged is None:
            return [], [], f"the model's answer is not JSON ({e.msg} at {e.pos})"
        if not salvaged:
            return [], [], "the model's answer was cut off before its first complete operation"
        # cut off by max_tokens: keep the operations that were written out in full
        data = {"operations": salvaged}
    raw_ops = data.get("operations") if isinstance(data, dict) else None
    if not isinstance(raw_ops, list):
        return [], [], "the model's answer has no list of operations"
    ops: list[DistillOp] = []
    rejected: list[RejectedOp] = []
    for raw in raw_ops[:MAX_OPS]:
        try:
            ops.append(DistillOp.model_validate(raw))
        except ValidationError as e:
            proposal = raw if isinstance(raw, dict) else {"value": raw}
            rejected.append(RejectedOp(proposal=proposal, reason=f"invalid operation: {e}"))
    return ops, rejected, None


def _complete_operations(text: str) -> list[Any] | None:
    """The complete objects at the start of a truncated ``{"operations": [...`` answer."""
    start = re.match(r'\s*\{\s*"operations"\s*:\s*\[\s*', text)
    if start is None:
        return None
    decoder = json.JSONDecoder()
    items: list[Any] = []
    pos = start.end()
    while pos < len(text):
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break
        items.append(item)
        sep = re.match(r"\s*,\s*", text[pos:])
        if sep is None:
            break
        pos += sep.end()
    return items


class LevelDistiller:
    """Distils one level through a :class:`TopicEditor`."""

    def __init__(
        self,
        *,
        editor: TopicEditor,
        level: Level,
        into: Level,
        capacity: int,
        count_tokens: Callable[[str], int],
        scan_secrets: Callable[[str], list[str]],
        session_id: str,
        max_content_chars: int,
        entry_chars: int,
        max_tokens: int,
    ) -> None:
        self.editor = editor
        self.level = level
        self.into = into
        self.capacity = capacity
        self.count_tokens = count_tokens
        self.scan_secrets = scan_secrets
        self.session_id = session_id
        self.max_content_chars = max_content_chars
        self.entry_chars = entry_chars
        self.max_tokens = max_tokens
        self._targets_done: set[str] = set()

    def usage(self, level: Level) -> int:
        """Tokens of the active topics of ``level``."""
        return sum(
            topic_tokens(t, self.count_tokens) for t in self.editor.topics(level, active_only=True)
        )

    def run(self, model: ChatModel | None) -> LevelDistill:
        """Ask the model (if any), apply what validates, then enforce capacity."""
        entries = self.editor.topics(self.level, active_only=True)
        others = self.editor.topics(self.into, active_only=True) if self.into != self.level else []
        report = LevelDistill(
            level=self.level,
            into=self.into,
            capacity=self.capacity,
            tokens_before=self.usage(self.into),
            tokens_after=0,
        )
        ops: list[DistillOp] = []
        if model is not None and entries:
            messages = build_messages(
                level=self.level,
                into=self.into,
                entries=entries,
                others=others,
                capacity=self.capacity,
                used=report.tokens_before,
                entry_chars=self.entry_chars,
            )
            try:
                finished = complete_chat(
                    model, messages, max_tokens=self.max_tokens, json_schema=plan_schema()
                )
            except ModelError as e:
                report.model_error = f"the model failed: {e}"
            else:
                ops, rejected, error = parse_plan(finished.text)
                report.rejected.extend(rejected)
                report.model_error = error
        for op in ops:
            try:
                applied = self._apply(op, entries=entries)
            except InvalidMemoryError as e:
                report.rejected.append(RejectedOp(proposal=op.model_dump(), reason=str(e)))
            else:
                if applied is not None:
                    report.applied.append(applied)
        if self.level != self.into:
            promoted, refused = self._promote_rest()
            report.applied.extend(promoted)
            report.rejected.extend(refused)
        report.archived_for_capacity = self._enforce_capacity(self.into)
        report.tokens_after = self.usage(self.into)
        return report

    # -- validation and application ------------------------------------------------

    def _name(self, raw: str) -> str:
        return topic_slug(raw)

    def _active(self, level: Level, name: str) -> Topic | None:
        if not self.editor.exists(level, name):
            return None
        topic = self.editor.read(level, name)
        return topic if topic.active else None

    def _find_source(self, name: str) -> Topic | None:
        return self._active(self.level, name) or (
            self._active(self.into, name) if self.into != self.level else None
        )

    def _check_content(self, op: DistillOp) -> str:
        content = op.content.strip()
        if not content:
            raise InvalidMemoryError(f"{op.op} {op.target!r} has no content")
        if len(content) > self.max_content_chars:
            raise InvalidMemoryError(
                f"{op.op} {op.target!r}: content is longer than {self.max_content_chars} characters"
            )
        found = self.scan_secrets(f"{op.target}\n{content}")
        if found:
            raise InvalidMemoryError(
                f"{op.op} {op.target!r} refused: it contains the vault secret(s) "
                + ", ".join(sorted(set(found)))
            )
        return content

    def _provenance(self, sources: list[Topic]) -> Provenance:
        trust: Trust = "model"
        for source in sources:
            if _TRUST_ORDER[source.meta.source.trust] < _TRUST_ORDER[trust]:
                trust = source.meta.source.trust
        return Provenance(
            session=self.session_id,
            tool="distill",
            trust=trust,
            derived_from=[f"{s.level}/{s.name}" for s in sources],
        )

    def _claim(self, name: str) -> None:
        if name in self._targets_done:
            raise InvalidMemoryError(f"{name!r} was already changed by an earlier operation")
        self._targets_done.add(name)

    def _apply(self, op: DistillOp, *, entries: list[Topic]) -> AppliedOp | None:
        if op.op == "NONE":
            return None
        name = self._name(op.target)
        if op.op == "ARCHIVE":
            topic = self._find_source(name)
            if topic is None:
                raise InvalidMemoryError(f"ARCHIVE {name!r}: no active topic of that name")
            self._claim(f"{topic.level}/{name}")
            self.editor.set_status(topic.level, name, archived=True, reason="distillation")
            return AppliedOp(op="ARCHIVE", target=name, level=topic.level)
        content = self._check_content(op)
        existing = self._active(self.into, name)
        if op.op == "UPDATE" and existing is None:
            raise InvalidMemoryError(f"UPDATE {name!r}: no active {self.into} topic of that name")
        sources: list[Topic] = []
        if op.op == "MERGE":
            if not op.sources:
                raise InvalidMemoryError(f"MERGE {name!r} names no sources")
            for raw in op.sources:
                source = self._find_source(self._name(raw))
                if source is None:
                    raise InvalidMemoryError(f"MERGE {name!r}: no active topic {raw!r}")
                if not (source.level == self.into and source.name == name):
                    sources.append(source)
            for source in sources:
                self._claim(f"{source.level}/{source.name}")
        elif self.level != self.into:
            # a session ADD/UPDATE named after a session topic promotes that topic
            own = self._active(self.level, name)
            if own is not None:
                sources.append(own)
                self._claim(f"{own.level}/{own.name}")
        self._claim(f"{self.into}/{name}")
        note = ""
        if self.editor.exists(self.into, name):  # active or archived: keep its text
            kept = self.editor.snapshot(self.into, name)
            note = f"previous text kept as {kept}"
            if op.op == "ADD" and existing is not None:
                note = "topic existed; updated instead. " + note
        self.editor.put(
            self.into,
            name,
            body=content,
            source=self._provenance([*(t for t in [existing] if t), *sources]),
        )
        for source in sources:
            self.editor.set_status(
                source.level,
                source.name,
                archived=True,
                replaced_by=name if source.level == self.into else f"{self.into}/{name}",
            )
        return AppliedOp(op=op.op, target=name, level=self.into, note=note)

    def _promote_rest(self) -> tuple[list[AppliedOp], list[RejectedOp]]:
        """Session topics the model left alone move to the long-term level as they are."""
        applied: list[AppliedOp] = []
        rejected: list[RejectedOp] = []
        for topic in self.editor.topics(self.level, active_only=True):
            name = topic.name.split("~")[0]
            where = f"{self.into}/{name}"
            found = self.scan_secrets(f"{topic.meta.title}\n{topic.body}")
            if found:
                # hand-written notes were never scanned; they stay in the session, archived
                self.editor.set_status(self.level, topic.name, archived=True, reason="secret")
                rejected.append(
                    RejectedOp(
                        proposal={"op": "PROMOTE", "target": topic.name},
                        reason="not promoted: it contains the vault secret(s) "
                        + ", ".join(sorted(set(found))),
                    )
                )
                continue
            target = self._active(self.into, name)
            if target is not None:
                self.editor.snapshot(self.into, name)
                self.editor.put(
                    self.into,
                    name,
                    body=f"{target.body.rstrip()}\n\n{topic.body.strip()}",
                    source=self._provenance([target, topic]),
                )
                note = "appended to the existing topic"
            else:
                if self.editor.exists(self.into, name):  # an archived namesake keeps its text
                    self.editor.snapshot(self.into, name)
                self.editor.put(
                    self.into,
                    name,
                    body=topic.body,
                    title=topic.meta.title,
                    source=self._provenance([topic]).model_copy(
                        update={"trust": topic.meta.source.trust}
                    ),
                )
                note = "promoted as it was"
            self.editor.set_status(self.level, topic.name, archived=True, replaced_by=where)
            applied.append(AppliedOp(op="ADD", target=name, level=self.into, note=note))
        return applied, rejected

    def _enforce_capacity(self, level: Level) -> list[str]:
        """Archive the lowest-scoring active topics until the level fits."""
        now = now_utc()
        active = self.editor.topics(level, active_only=True)
        sizes = {t.name: topic_tokens(t, self.count_tokens) for t in active}
        used = sum(sizes.values())
        archived: list[str] = []
        for topic in sorted(active, key=lambda t: (score(t, now), t.meta.updated, t.name)):
            if used <= self.capacity:
                break
            self.editor.set_status(level, topic.name, archived=True, reason="over capacity")
            used -= sizes[topic.name]
            archived.append(topic.name)
        return archived
