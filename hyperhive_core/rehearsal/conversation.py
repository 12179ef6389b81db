"""Reading a Messages API request the way Claude Code builds it.

A turn starts with a user message that carries the prompt; each model reply
since then is one assistant message, and each tool call's result comes back in a
user message of ``tool_result`` blocks. ``messages[]`` also holds ``role: "system"``
entries and text the CLI adds itself (reminders, slash-command echoes, compaction
summaries); none of that is what the user wrote, so it never counts as the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SUMMARY_REQUEST = "Your task is to create a detailed summary of the conversation so far"
CONTINUATION = "This session is being continued from a previous conversation"
# Blocks the CLI writes into user messages; the prompt is what follows the last one.
SCAFFOLDING = (
    "<system-reminder>",
    "<local-command-",
    "<command-name>",
    "<command-message>",
    "[Request interrupted by user",
    "[earlier conversation truncated",
    CONTINUATION,
)
DIGEST_LINE = 300


@dataclass(frozen=True)
class Turn:
    """Where a request stands in its turn."""

    prompt: str
    step: int
    results: tuple[str, ...]
    continued: bool


def read_turn(messages: Sequence[Mapping[str, Any]]) -> Turn:
    """The current turn: its prompt, how many replies it has had, and its tool results.

    After the CLI compacted in the middle of a turn, the prompt is gone from the
    history (it is inside the summary) and ``continued`` is true with an empty prompt.
    """
    start = next((index for index in reversed(range(len(messages))) if _starts_turn(messages[index])), None)
    if start is None:
        return Turn(prompt="", step=0, results=(), continued=False)
    after = messages[start + 1 :]
    return Turn(
        prompt=prompt_text(messages[start].get("content")),
        step=sum(message.get("role") == "assistant" for message in after),
        results=tuple(_tool_results(after)),
        continued=_is_continuation(messages[start]),
    )


def compaction_prompt(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """For a request asking for a conversation summary, the user text sent along with it; else None.

    When the context overflows mid-turn the CLI merges the turn's prompt into the
    summary request, and it is nowhere else once the conversation is compacted.
    """
    last_user = next((message for message in reversed(messages) if message.get("role") == "user"), None)
    if last_user is None or not any(SUMMARY_REQUEST in text for text in text_blocks(last_user.get("content"))):
        return None
    return prompt_text(last_user.get("content"))


def digest(messages: Sequence[Mapping[str, Any]]) -> str:
    """Every prompt of the conversation as a bullet list, for a compaction summary."""
    prompts = [prompt_text(message.get("content")) for message in messages if _is_prompt_message(message)]
    return "\n".join(f"- {shorten(prompt, DIGEST_LINE)}" for prompt in prompts if prompt) or "- (none)"


def prompt_text(content: Any) -> str:
    """What the user wrote: the text blocks after the CLI's last own block, before any summary request."""
    texts = text_blocks(content)
    texts = texts[: next((i for i, text in enumerate(texts) if SUMMARY_REQUEST in text), len(texts))]
    last_scaffolding = max((i for i, text in enumerate(texts) if text.startswith(SCAFFOLDING)), default=-1)
    return "\n".join(text.strip() for text in texts[last_scaffolding + 1 :]).strip()


def text_blocks(content: Any) -> list[str]:
    """The text of a message's content, which is a string or a list of blocks."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [block["text"] for block in content if _is_block(block, "text") and isinstance(block.get("text"), str)]


def _starts_turn(message: Mapping[str, Any]) -> bool:
    return _is_prompt_message(message) and (bool(prompt_text(message.get("content"))) or _is_continuation(message))


def _is_continuation(message: Mapping[str, Any]) -> bool:
    return any(text.startswith(CONTINUATION) for text in text_blocks(message.get("content")))


def _is_prompt_message(message: Mapping[str, Any]) -> bool:
    content = message.get("content")
    has_results = isinstance(content, list) and any(_is_block(block, "tool_result") for block in content)
    return message.get("role") == "user" and not has_results


def _tool_results(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    # A result's content is a string or a list of text blocks.
    return [
        "\n".join(text_blocks(block.get("content")))
        for message in messages
        if message.get("role") == "user" and isinstance(message.get("content"), list)
        for block in message["content"]
        if _is_block(block, "tool_result")
    ]


def _is_block(block: Any, kind: str) -> bool:
    return isinstance(block, Mapping) and block.get("type") == kind


def shorten(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
