"""What the rehearsal model answers in the questions tests that run the real Claude Code CLI."""

from __future__ import annotations

import pytest

from hyperhive_core.testing import Script


@pytest.fixture
def asking_manager() -> Script:
    """On "ask me", the manager asks which colour; told the answer, it sends the operator
    ``you chose ANSWER for ID``. That rule matches only the event as the manager should
    read it: id, question, answer and status, in that order."""
    script = Script()
    script.on("manager", "ask me", name="ask").call(
        "ask_operator", {"question": "Which colour?", "options": ["amber", "mauve"]}
    ).reply("{{result}}")
    script.on(
        "manager",
        regex=r"(?s)hive event: operator_answered\nid: (?P<id>\d+)\nquestion: Which colour\?\n"
        r"answer: (?P<answer>[^\n]*)\nstatus: answered",
        name="answered",
    ).call("send", {"to": "operator", "body": "you chose {{match.answer}} for {{match.id}}"}).reply("done")
    script.otherwise("ok")
    return script
