"""Choosing the reply to each model request from the scenario.

Nearly everything is read from the request itself: the turn's prompt picks the
rule and the number of replies since the prompt picks the step, so a retried or
resumed request gets the same answer. The director remembers only what a request
cannot tell: faults already served, ``once`` rules already used, and the prompt of
a turn the CLI compacted midway.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hyperhive_core.rehearsal.conversation import Turn, compaction_prompt, digest, read_turn, shorten
from hyperhive_core.rehearsal.scenario import Rule, Scenario
from hyperhive_core.rehearsal.templates import Context, TemplateError, as_text, render_value
from hyperhive_core.rehearsal.wire import Cut, Fault, Message

log = logging.getLogger(__name__)

COMPACTION = "compaction"
ANALYSIS = "The rehearsal model stands in for a real model here; it lists the conversation's user messages."
QUOTE = 200


@dataclass(frozen=True)
class Decision:
    """The reply to one request, and which rule and step chose it."""

    reply: Message | Fault
    rule: str | None = None
    step: int | None = None
    delay: float = 0.0
    stream_seconds: float = 0.0
    """How long streaming the reply takes, its events spread evenly over it."""
    cut: Cut | None = None
    """The connection breaks instead of carrying the whole reply."""

    def describe(self) -> str:
        """One line for the log: what matched and what is sent back."""
        if self.rule is None:
            source = "no rule"
        elif self.step is None:
            source = self.rule
        else:
            source = f"rule {self.rule!r} step {self.step}"
        if isinstance(self.reply, Fault):
            return f"{source} → HTTP {self.reply.status} {self.reply.message!r}"
        if self.cut is not None:
            return f"{source} → {self.cut.how}"
        parts = [
            f"{block['name']} {json.dumps(block['input'])}" if block["type"] == "tool_use" else _quote(block["text"])
            for block in self.reply.content
        ]
        return f"{source} → {' + '.join(parts)}"


class Director:
    """Decides each reply from a scenario; one per server, shared by every agent."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self._spent: set[tuple[str | None, str]] = set()
        self._faults: Counter[tuple[str | None, str, int]] = Counter()
        self._compacted_prompts: dict[tuple[str | None, str | None], str] = {}

    def decide(self, agent: str | None, body: Mapping[str, Any], session: str | None = None) -> Decision:
        """The reply to a ``/v1/messages`` request from ``agent`` (None: no agent in the URL)."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(message, Mapping) for message in messages):
            return Decision(Fault(400, "rehearsal model: the request body needs a messages list of objects"))
        merged_prompt = compaction_prompt(messages)
        if merged_prompt is not None:
            if merged_prompt:
                self._compacted_prompts[agent, session] = merged_prompt
            return self._summarise(agent, messages)
        turn = read_turn(messages)
        prompt = turn.prompt
        if turn.continued and not prompt:
            prompt = self._compacted_prompts.get((agent, session), "")
        for rule in self.scenario.rules_for(agent):
            found = rule.pattern.search(prompt)
            if found and (agent, rule.where) not in self._spent:
                return self._play(agent, rule, found, prompt, turn)
        log.warning("rehearsal: no rule matched %s for %s", agent or "(no agent)", _quote(prompt))
        return Decision(Message.reply(self._no_rule(agent, prompt)))

    def _play(self, agent: str | None, rule: Rule, found: re.Match[str], prompt: str, turn: Turn) -> Decision:
        if turn.step >= len(rule.steps):
            reply = Message.reply(
                f"[rehearsal] rule {rule.name!r} has no step {turn.step} (it has {len(rule.steps)}); "
                "end it with a step that has text and no tool"
            )
            return self._ending(agent, rule, Decision(reply, rule.name, turn.step))
        step = rule.steps[turn.step]
        served = (agent, rule.where, turn.step)
        fault = step.faults[self._faults[served]] if self._faults[served] < len(step.faults) else None
        if fault is not None:
            self._faults[served] += 1
        if isinstance(fault, Fault):
            return Decision(fault, rule.name, turn.step, step.delay)
        context = Context(agent=agent or "", prompt=prompt, results=turn.results, match=found)
        try:
            text = as_text(step.text.render(context)) if step.text is not None else None
            reply = Message.reply(text, step.tool, render_value(step.input, context))
        except TemplateError as exc:
            log.warning("rehearsal: rule %r step %d: %s", rule.name, turn.step, exc)
            reply = Message.reply(f"[rehearsal] rule {rule.name!r} step {turn.step}: {exc}")
        decision = Decision(reply, rule.name, turn.step, step.delay, step.stream_seconds, fault)
        # A cut reply never reached the client whole: the turn is not over.
        return decision if fault is not None else self._ending(agent, rule, decision)

    def _ending(self, agent: str | None, rule: Rule, decision: Decision) -> Decision:
        """Use up a ``once`` rule when it ends a turn (not before: a retried request must still find it)."""
        if rule.once and isinstance(decision.reply, Message) and decision.reply.stop_reason == "end_turn":
            self._spent.add((agent, rule.where))
        return decision

    def _summarise(self, agent: str | None, messages: list[Any]) -> Decision:
        context = Context(agent=agent or "", prompt=read_turn(messages).prompt, digest=digest(messages))
        summary = as_text(self.scenario.summary_for(agent).render(context))
        return Decision(Message.reply(f"<analysis>{ANALYSIS}</analysis>\n<summary>\n{summary}\n</summary>"), COMPACTION)

    def _no_rule(self, agent: str | None, prompt: str) -> str:
        if agent:
            who, section = f"agent {agent!r}", f"[[agents.{agent}.rules]]"
        else:
            who, section = "a request without an agent (no /agents/NAME in the base URL)", '[[agents."*".rules]]'
        return (
            f"[rehearsal] no scenario rule matched {who} for {_quote(prompt)}; "
            f"add a rule under {section} in {self.scenario.source}"
        )


def _quote(text: str) -> str:
    return repr(shorten(text, QUOTE))
