"""The Anthropic Messages API wire format, as much of it as Claude Code reads."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
MODELS = ("claude-haiku-5-5", "claude-sonnet-5-5", "claude-opus-5-5")
# Deltas are split so the CLI's streaming parser sees more than one of each.
CHUNK = 40
CUTS = ("hang", "stall", "drop")
# What a ``stall`` or ``drop`` sends first: message_start, ping, the first block's start and a delta.
STREAM_HEAD = 4


@dataclass(frozen=True)
class Message:
    """A model reply: its content blocks and why it stopped."""

    content: tuple[dict[str, Any], ...]
    stop_reason: str

    @classmethod
    def reply(cls, text: str | None, tool: str | None = None, tool_input: Any = None) -> Message:
        """Text, a tool call, or text then a tool call; a tool call stops with ``tool_use``."""
        content: list[dict[str, Any]] = []
        if text is not None:
            content.append({"type": "text", "text": text})
        if tool is not None:
            content.append({"type": "tool_use", "id": new_id("toolu"), "name": tool, "input": tool_input or {}})
        return cls(tuple(content), "tool_use" if tool is not None else "end_turn")


@dataclass(frozen=True)
class Fault:
    """An HTTP error reply, with the Anthropic error body."""

    status: int
    message: str

    def body(self) -> dict[str, Any]:
        error_type = ERROR_TYPES.get(self.status, "api_error" if self.status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": error_type, "message": self.message}}


@dataclass(frozen=True)
class Cut:
    """A broken connection instead of a whole reply.

    ``hang`` reads the request and sends nothing; ``stall`` starts the streamed
    reply, then sends nothing; ``drop`` starts it, then closes the connection.
    ``hang`` and ``stall`` hold the connection until the client gives up on it.
    """

    how: str


def new_id(prefix: str) -> str:
    return f"{prefix}_rehearsal_{uuid.uuid4().hex[:20]}"


def estimate_tokens(value: Any) -> int:
    """About four characters a token, so the CLI shows a small but real cost."""
    return max(1, len(json.dumps(value)) // 4)


def usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def message_json(message: Message, model: str, input_tokens: int) -> dict[str, Any]:
    """The whole reply at once, for ``stream: false``."""
    return {
        "id": new_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": list(message.content),
        "stop_reason": message.stop_reason,
        "stop_sequence": None,
        "usage": usage(input_tokens, estimate_tokens(message.content)),
    }


def sse_events(message: Message, model: str, input_tokens: int) -> Iterator[bytes]:
    """The reply as the server-sent events of a streamed response, one encoded event each."""
    start = message_json(message, model, input_tokens) | {"content": [], "stop_reason": None}
    start["usage"] = usage(input_tokens, 1)
    yield _event("message_start", {"message": start})
    yield _event("ping", {})
    for index, block in enumerate(message.content):
        if block["type"] == "tool_use":
            opening = {**block, "input": {}}
            delta_type, field, payload = "input_json_delta", "partial_json", json.dumps(block["input"])
        else:
            opening = {**block, "text": ""}
            delta_type, field, payload = "text_delta", "text", block["text"]
        yield _event("content_block_start", {"index": index, "content_block": opening})
        for offset in range(0, len(payload), CHUNK):
            delta = {"type": delta_type, field: payload[offset : offset + CHUNK]}
            yield _event("content_block_delta", {"index": index, "delta": delta})
        yield _event("content_block_stop", {"index": index})
    yield _event(
        "message_delta",
        {
            "delta": {"stop_reason": message.stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": estimate_tokens(message.content)},
        },
    )
    yield _event("message_stop", {})


def models_json() -> dict[str, Any]:
    """``GET /v1/models``."""
    return {
        "data": [model_json(model) for model in MODELS],
        "has_more": False,
        "first_id": MODELS[0],
        "last_id": MODELS[-1],
    }


def model_json(model: str) -> dict[str, Any]:
    """``GET /v1/models/{id}``: every model id exists on the rehearsal model."""
    return {"type": "model", "id": model, "display_name": model, "created_at": "2025-01-01T00:00:00Z"}


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()
