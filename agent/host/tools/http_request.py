"""``http_request``: an HTTPS call through the vault broker.

The agent never holds a secret: it may name a capability handle (``cap_…``)
and the broker injects the secret it stands for, if the handle's grant covers
this method, host and path, and redacts it from the response. The response is
marked untrusted (web content steers the model).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from agent.errors import ToolDeniedError, ToolError
from agent.host.tools.base import ArgsModel, ToolContext, ToolOutput, ToolSpec, truncate_text
from vault.broker import HttpCall
from vault.errors import BrokerRequestError, GrantRefused, RedactionError, VaultError

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]


class Args(ArgsModel):
    """Arguments of ``http_request``."""

    method: Method = Field(default="GET", description="The HTTP method.")
    url: str = Field(description="The full https:// URL to call.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra request headers (never secrets)."
    )
    body: str | None = Field(default=None, description="Request body text, or null for none.")
    capability: str | None = Field(
        default=None,
        description="A capability handle (cap_...) whose secret the broker should inject, or null.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("url must start with https://")
        if len(value) > 8000:
            raise ValueError("url is longer than 8000 characters")
        return value


def _http_call(args: Args) -> HttpCall:
    return HttpCall(method=args.method, url=args.url, headers=dict(args.headers), body=args.body)


def run(args: Args, ctx: ToolContext) -> ToolOutput:
    """Send the request through the broker and return status, headers and body.

    Raises:
        ToolError: No broker (no vault open); the request failed (connection,
            TLS, timeout); the vault could not serve it (locked, secret
            deleted); or the response could not be redacted, in which case
            nothing of it is returned.
        ToolDeniedError: The broker refused the handle (reason included).
    """
    if ctx.broker is None:
        raise ToolError("http_request is unavailable: no vault broker in this session")
    try:
        response = ctx.broker.call(
            args.capability, _http_call(args), session_id=ctx.session_id, now=ctx.now()
        )
    except GrantRefused as e:
        raise ToolDeniedError(f"the broker refused the request: {e.reason}") from e
    except RedactionError as e:
        # Fail closed: not a byte of the response, nor the broker's detail.
        raise ToolError(
            "http_request failed: the response could not be checked for secrets, "
            "so nothing of it is returned"
        ) from e
    except BrokerRequestError as e:
        # The broker redacts transport text before it builds this message.
        raise ToolError(f"http_request failed: {e}") from e
    except VaultError as e:
        raise ToolError(f"http_request failed: the vault could not serve the request: {e}") from e
    lines = [f"HTTP {response.status}"]
    for name in ("content-type", "content-length", "location"):
        for key, value in response.headers.items():
            if key.lower() == name:
                lines.append(f"{key}: {value}")
    text = "\n".join(lines) + "\n\n" + response.body
    content, cut = truncate_text(text, ctx.output_bytes, what="response")
    if response.truncated and not cut:
        content += "\n[truncated response: the broker cut the body at its limit]"
    return ToolOutput(
        content=content,
        truncated=cut or response.truncated,
        untrusted=True,
        redacted=list(response.redacted),
    )


TOOL = ToolSpec(
    name="http_request",
    description=(
        "Call a web API over HTTPS. To authenticate, pass a capability handle; "
        "you never see the secret."
    ),
    args_model=Args,
    effect="network",
    run=run,
    main_argument="url",
    pattern="domain",
    capability_argument="capability",
)
