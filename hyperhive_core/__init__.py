"""hyperhive: a swarm of Claude Code agents on one host, steered by an operator.

``from hyperhive_core import hookimpl`` is all a plugin needs from core; ``iso_utc``
is how the hive writes a moment. Attributes load lazily so that ``hyperhive relay``,
which every agent starts, imports nothing heavy.
"""

from typing import Any

__all__ = ["__version__", "hookimpl", "iso_utc"]


def iso_utc(timestamp: float) -> str:
    """A wall-clock time as ISO 8601 in UTC, to the second: ``2026-11-22T12:30:05Z``.

    How events, state details and pages show a moment; JavaScript's ``Date.parse`` reads it as is.
    """
    import datetime

    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def __getattr__(name: str) -> Any:
    if name == "hookimpl":
        from hyperhive_core.hookspecs import hookimpl

        return hookimpl
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("hyperhive")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module 'hyperhive_core' has no attribute {name!r}")
