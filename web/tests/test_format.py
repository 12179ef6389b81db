"""The page's formatters (static/format.js), run in node: the last-turn chip, countdowns, "ago"."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

FORMAT_JS = Path(__file__).resolve().parents[1] / "hyperhive_web" / "static" / "format.js"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (apt-get install nodejs)")


def run(calls: list[tuple[str, list]]) -> list:
    script = (
        f"const f = require({json.dumps(str(FORMAT_JS))});"
        f"const calls = {json.dumps(calls)};"
        "console.log(JSON.stringify(calls.map(([name, args]) => f[name](...args))));"
    )
    return json.loads(subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True).stdout)


@pytest.mark.parametrize(
    ("ms", "shown"),
    [
        (0, "0ms"),
        (850, "850ms"),
        (999.4, "999ms"),
        (999.6, "1.0s"),
        (1000, "1.0s"),
        (12_300, "12.3s"),
        (59_940, "59.9s"),
        (59_960, "1m 00s"),
        (125_000, "2m 05s"),
        (3_599_000, "59m 59s"),
        (3_725_000, "1h 02m"),
        (None, ""),
        (-5, ""),
    ],
)
def test_format_duration_for_the_last_turn_chip(ms, shown):
    assert run([("formatDuration", [ms])]) == [shown]


def test_clock_counts_down_in_minutes_and_seconds():
    calls = [("clock", [seconds]) for seconds in (95, 94.2, 0.4, 0, -3, 3600, 3725)]
    assert run(calls) == ["01:35", "01:35", "00:01", "00:00", "00:00", "1:00:00", "1:02:05"]


def test_ago_and_escape():
    calls = [
        ("ago", [1000, 1003]),
        ("ago", [1000, 1042]),
        ("ago", [1000, 1000 + 180]),
        ("ago", [1000, 1000 + 7200]),
        ("ago", [1000, 1000 + 4 * 86400]),
        ("escape", ['<b a="1">&\'</b>']),
    ]
    assert run(calls) == [
        "just now",
        "42s ago",
        "3m ago",
        "2h ago",
        "4d ago",
        "&#60;b a=&#34;1&#34;&#62;&#38;&#39;&#60;/b&#62;",
    ]
