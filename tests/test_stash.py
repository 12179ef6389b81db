"""Plugins keep their objects in hive.stash under keys they hold; the hive's own parts stay put."""

from __future__ import annotations

import pytest

from hyperhive_core import Stash, StashKey
from hyperhive_core.testing import Script, running_hive

QUIET = Script()
QUIET.otherwise("ok")


def test_each_key_is_its_owners_even_under_the_same_name():
    stash = Stash()
    mine, theirs = StashKey[list[str]]("cache"), StashKey[int]("cache")
    stash[mine] = ["kept"]
    stash[theirs] = 3
    assert stash[mine] == ["kept"]
    assert stash[theirs] == 3
    assert mine in stash
    assert len(stash) == 2
    assert stash.get(StashKey[int]("other"), 0) == 0


def test_a_missing_key_and_a_string_key_say_what_is_wrong():
    stash = Stash()
    with pytest.raises(KeyError, match="nothing is stashed under StashKey\\('nap'\\): its plugin has not started"):
        stash[StashKey[int]("nap")]
    with pytest.raises(TypeError, match="stash keys are StashKey objects, not str"):
        stash["nap"] = 1  # type: ignore[index]  # the mistake under test


async def test_a_running_hive_refuses_new_or_replaced_attributes(tmp_path, make_pm):
    async with running_hive(tmp_path, make_pm(), QUIET) as hive:
        broker = hive.broker
        for name in ("broker", "events", "naps"):
            with pytest.raises(AttributeError, match=f"hive.{name} cannot be set: .* hive.stash under a StashKey"):
                setattr(hive, name, object())
        assert hive.broker is broker
        key = StashKey[str]("test")
        hive.stash[key] = "mine"
        assert hive.stash[key] == "mine"
