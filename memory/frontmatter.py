"""YAML front matter of topic files: parse leniently, repair, render.

A topic file is ``---``-delimited YAML front matter followed by a markdown
body. Files a person edits by hand must keep working, so parsing never
rejects: a missing block gets defaults, a field with a bad value gets its
default, unknown keys are kept, and a block that is not YAML at all is kept
verbatim inside an HTML comment at the top of the body. Every repair is listed
in :attr:`ParsedTopic.repairs` so the caller can say what it fixed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Trust = Literal["user", "model", "untrusted"]
Status = Literal["active", "archived"]

# libyaml's loader and dumper when PyYAML was built with it (much faster), else pure Python.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

_BLOCK = re.compile(r"\A---[ \t]*\r?\n(.*?)(?:\r?\n)?^---[ \t]*(?:\r?\n|\Z)", re.S | re.M)
UNPARSED_MARK = "<!-- keyless: front matter that could not be read, kept as it was:"


class Provenance(BaseModel):
    """Where a memory came from."""

    model_config = ConfigDict(frozen=True, extra="allow")

    session: str | None = Field(default=None, description="Session that wrote it.")
    tool: str | None = Field(default=None, description="Tool or command that wrote it.")
    trust: Trust = Field(default="user", description="user / model / untrusted.")
    approved_at: datetime | None = Field(
        default=None, description="When the user approved an untrusted memory."
    )
    derived_from: list[str] = Field(
        default_factory=list, description="Topics distillation built this one from."
    )


class TopicMeta(BaseModel):
    """The front matter of a topic file."""

    model_config = ConfigDict(extra="allow")

    title: str
    created: datetime
    updated: datetime
    source: Provenance = Field(default_factory=Provenance)
    uses: int = Field(default=0, ge=0)
    last_used: datetime | None = None
    status: Status = "active"
    replaced_by: str | None = None


@dataclass
class ParsedTopic:
    """A topic file split into its metadata and body."""

    meta: TopicMeta
    body: str
    repairs: list[str] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if hasattr(value, "isoformat") and hasattr(value, "year"):  # a bare YAML date
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def parse_topic(text: str, *, fallback_title: str, now: datetime | None = None) -> ParsedTopic:
    """Split ``text`` into front matter and body, repairing what is broken.

    Args:
        text: The whole file.
        fallback_title: Title to use when the file has none (usually the file name).
        now: Timestamp for missing dates; defaults to the current time.

    Returns:
        The metadata, the body and the list of repairs made (empty if none).
    """
    now = now or _now()
    repairs: list[str] = []
    raw: dict[str, Any] = {}
    body = text
    match = _BLOCK.match(text)
    if match is None:
        repairs.append("no front matter; added defaults")
    else:
        body = text[match.end() :]
        try:
            loaded = yaml.load(match.group(1), Loader=_Loader)  # noqa: S506 - a safe loader
        except yaml.YAMLError:
            loaded = None
            repairs.append("front matter is not valid YAML; kept it as a comment")
            body = _keep_as_comment(match.group(1), body)
        else:
            if loaded is None:
                loaded = {}
            if not isinstance(loaded, dict):
                repairs.append("front matter is not a mapping; kept it as a comment")
                body = _keep_as_comment(match.group(1), body)
                loaded = {}
        raw = {str(k): v for k, v in (loaded or {}).items()}
    meta = _repair_meta(raw, fallback_title=fallback_title, now=now, repairs=repairs)
    return ParsedTopic(meta=meta, body=body.lstrip("\n"), repairs=repairs)


def _repair_meta(
    raw: dict[str, Any], *, fallback_title: str, now: datetime, repairs: list[str]
) -> TopicMeta:
    fixed: dict[str, Any] = dict(raw)
    title = fixed.get("title")
    if not isinstance(title, str) or not title.strip():
        if "title" in raw:
            repairs.append("title is not text; used the file name")
        fixed["title"] = fallback_title
    for key in ("created", "updated", "last_used"):
        if key not in fixed or fixed[key] is None:
            continue
        value = _as_datetime(fixed[key])
        if value is None:
            repairs.append(f"{key} is not a date; reset")
            fixed.pop(key)
        else:
            fixed[key] = value
    fixed.setdefault("created", fixed.get("updated") or now)
    fixed.setdefault("updated", fixed["created"])
    source = fixed.get("source")
    if source is not None:
        if isinstance(source, dict):
            try:
                fixed["source"] = Provenance.model_validate(source)
            except ValidationError:
                repairs.append("source is invalid; reset to trust 'user'")
                fixed["source"] = Provenance(
                    session=_str_or_none(source.get("session")),
                    tool=_str_or_none(source.get("tool")),
                )
        else:
            repairs.append("source is not a mapping; reset to trust 'user'")
            fixed["source"] = Provenance()
    for _ in range(len(fixed) + 1):
        try:
            return TopicMeta.model_validate(fixed)
        except ValidationError as e:
            keys = {str(err["loc"][0]) for err in e.errors() if err["loc"]}
            removable = sorted(keys & (fixed.keys() - {"title", "created", "updated"}))
            if not removable:
                break
            for key in removable:
                repairs.append(f"{key} is invalid; reset")
                fixed.pop(key)
    repairs.append("front matter could not be repaired field by field; rebuilt")
    return TopicMeta(title=fallback_title, created=now, updated=now)


def _keep_as_comment(block: str, body: str) -> str:
    # "-->" would end the comment early and leak the rest into the body.
    return f"{UNPARSED_MARK}\n{block.replace('-->', '-- >')}\n-->\n{body}"


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def render_topic(meta: TopicMeta, body: str) -> str:
    """Render a topic file: YAML front matter then the body (ending in a newline)."""
    data = meta.model_dump(mode="json", exclude_none=True)
    source = data.get("source", {})
    if not source.get("derived_from"):
        source.pop("derived_from", None)
    front = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    body = body.strip("\n")
    return f"---\n{front}---\n\n{body}\n" if body else f"---\n{front}---\n"
