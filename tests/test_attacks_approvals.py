"""Attacks on the manager's approval flow: a config commit whose shown diff hides what gets applied.

Only ``agent.toml`` at the approved commit is applied, so its change must be in the
diff the operator reads, whatever else the manager puts in the commit.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from hyperhive_core.testing import needs_claude, running_hive

pytestmark = needs_claude

SCENARIO = """
[[agents."*".rules]]
steps = [{ text = "ok" }]
"""
GRANT = 'allowed_recipients = ["manager", "ranger"]'


def commit(repo: Path, files: dict[str, str], message: str) -> None:
    """Commit ``files`` as the manager would, in its proposed config repo."""
    for name, text in files.items():
        (repo / name).write_text(text)
    env = {"PATH": os.environ["PATH"], "HOME": str(repo), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    for args in (["add", "--", *files], ["commit", "--quiet", "--no-verify", "-m", message]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env, timeout=60)


async def test_padding_in_other_files_does_not_push_agent_toml_out_of_the_diff(make_pm, tmp_path):
    async with running_hive(tmp_path, make_pm(), SCENARIO) as hive:
        await hive.spawn("scout")
        # README.md sorts before agent.toml; 300 000 characters of it would fill the whole cut diff.
        padding = "".join(f"line {number} of the notes\n" for number in range(12_000))
        commit(hive.repos.proposed("scout"), {"README.md": padding, "agent.toml": GRANT + "\n"}, "notes")
        approval = await hive.approvals.request_apply_commit("manager", "scout", "main", "more notes")
        assert f"+{GRANT}" in approval.diff
        assert approval.diff.index(f"+{GRANT}") < approval.diff.index("line 0 of the notes")
        assert "[diff cut at" in approval.diff
        assert len(approval.diff) < 2 * len(padding)
