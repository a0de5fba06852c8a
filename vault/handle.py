"""Capability handles: the only trace of a grant that the agent ever sees.

The agent process imports this module (and ``vault.errors``) and nothing else
from ``vault``, so it stays tiny: a handle is an opaque random string, and a
:class:`CapabilityInfo` tells the model in one line what the handle allows.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["HANDLE_PREFIX", "CapabilityInfo", "is_handle", "new_handle"]

HANDLE_PREFIX = "cap_"
"""Every handle starts with this prefix, followed by 32 lowercase hex digits."""

_HANDLE_RE = re.compile(r"cap_[0-9a-f]{32}")


def new_handle() -> str:
    """Return a fresh handle: ``cap_`` and 128 bits from the OS CSPRNG."""
    return HANDLE_PREFIX + secrets.token_hex(16)


def is_handle(value: object) -> bool:
    """Tell whether ``value`` has the shape of a handle (not whether it is valid).

    Args:
        value: Anything, typically a string the model produced.

    Returns:
        True when ``value`` is ``cap_`` followed by exactly 32 lowercase hex digits.
    """
    return isinstance(value, str) and _HANDLE_RE.fullmatch(value) is not None


class CapabilityInfo(BaseModel):
    """What the agent learns about one grant: a handle and what it allows.

    Attributes:
        handle: The opaque handle to pass back to the ``http_request`` tool.
        description: One human-readable line, e.g. ``GET https://api.x.com/v1/*
            with secret GITHUB_TOKEN as Authorization header``.
        expires_at: When the grant stops working (timezone-aware), or None
            when it lasts until the session ends.
        uses_left: Remaining redemptions, or None when unlimited.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    handle: str
    description: str = Field(max_length=500)
    expires_at: datetime | None = None
    uses_left: int | None = Field(default=None, ge=0)

    @field_validator("handle")
    @classmethod
    def _handle_shape(cls, value: str) -> str:
        if not is_handle(value):
            raise ValueError("a handle is 'cap_' followed by 32 lowercase hex digits")
        return value

    @field_validator("description")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if "\n" in value or "\r" in value:
            raise ValueError("a capability description is a single line")
        return value

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        return value
