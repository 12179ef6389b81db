"""Typed per-plugin state on the hive, keyed by objects the owning plugin holds.

A plugin keeps what it builds at startup (a scheduler, a cache, a client) in
``hive.stash`` under a :class:`StashKey` it creates once, at module level::

    NAPS = StashKey["Naps"]("nap")

    @hookimpl
    async def on_startup(hive):
        hive.stash[NAPS] = await Naps.load(hive)

Only code that holds the key can read or replace the value, so one plugin cannot
overwrite another's object by picking the same attribute name, and none can
replace core's ``broker`` or ``events``: those are read-only on ``Hive``.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast, overload

T = TypeVar("T")
D = TypeVar("D")


class StashKey(Generic[T]):
    """The key to one value in :class:`Stash`; ``owner`` names it in errors.

    Keys compare by identity: two plugins that both create ``StashKey("cache")``
    hold two different keys.
    """

    __slots__ = ("owner",)

    def __init__(self, owner: str) -> None:
        self.owner = owner

    def __repr__(self) -> str:
        return f"StashKey({self.owner!r})"


class Stash:
    """A mapping from :class:`StashKey` to values of the key's type."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[StashKey[Any], object] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        if not isinstance(key, StashKey):
            raise TypeError(f"stash keys are StashKey objects, not {type(key).__name__}")
        self._values[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        try:
            return cast(T, self._values[key])
        except KeyError:
            raise KeyError(f"nothing is stashed under {key!r}: its plugin has not started, or is not loaded") from None

    @overload
    def get(self, key: StashKey[T]) -> T | None: ...
    @overload
    def get(self, key: StashKey[T], default: D) -> T | D: ...
    def get(self, key: StashKey[T], default: object = None) -> object:
        return self._values.get(key, default)

    def setdefault(self, key: StashKey[T], default: T) -> T:
        return cast(T, self._values.setdefault(key, default))

    def __delitem__(self, key: StashKey[T]) -> None:
        del self._values[key]

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)
