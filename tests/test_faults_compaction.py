"""The daemon killed in the middle of a notes compaction: the next start puts the notes back.

A ``kill -9`` during the compaction's session leaves on disk exactly this: the run
recorded ``running``, its backup of the original, and notes.md as far as the
session got rewriting it. The test leaves that state, then starts a real hive on it.
"""

from __future__ import annotations

import hyperhive_compaction
import pytest
from hyperhive_compaction import COMPACTOR, records

from hyperhive_core.testing import Script, running_hive

pytestmark = pytest.mark.needs_claude

ORIGINAL = b"# notes\n\n" + b"- the build breaks on Tuesdays; ask before touching CI\n" * 40
HALF_REWRITTEN = b"# notes\n\n- the build bre"


def quiet() -> Script:
    script = Script()
    script.otherwise("noted")
    return script


async def test_notes_half_rewritten_by_a_killed_compaction_are_restored_at_the_next_start(make_pm, tmp_path):
    pm = make_pm(compaction=hyperhive_compaction)
    async with running_hive(tmp_path, pm, quiet(), agents={"worker": {}}) as hive:
        compactor = hive.stash[COMPACTOR]
        notes = compactor.notes_path("worker")
        run_id = await hive.store.write(lambda db: records.start_run(db, "worker", "forced", "haiku", len(ORIGINAL)))
        backup = compactor.backups("worker").save(ORIGINAL, run_id)
        notes.write_bytes(HALF_REWRITTEN)  # where the session was when the daemon died
        # a second run that died before its backup: nothing of the notes was touched
        early = await hive.store.write(lambda db: records.start_run(db, "worker", "forced", "haiku", len(ORIGINAL)))

    async with running_hive(tmp_path, pm, quiet(), agents={"worker": {}}) as hive:
        assert notes.read_bytes() == ORIGINAL
        runs = {run["id"]: run for run in await hive.stash[COMPACTOR].last("worker", limit=5)}
    assert runs[run_id]["outcome"] == "interrupted"
    assert runs[run_id]["reason"] == "the daemon stopped during the compaction; notes.md was restored from its backup"
    assert runs[run_id]["backup"] == str(backup)
    assert runs[early]["outcome"] == "interrupted"
    assert runs[early]["reason"] == "the daemon stopped as the compaction began; notes.md was not touched"
    assert backup.read_bytes() == ORIGINAL  # still kept
