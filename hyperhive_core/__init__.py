"""hyperhive: a swarm of Claude Code agents on one host, steered by an operator.

``from hyperhive_core import hookimpl`` is all a plugin needs from core. Attributes
load lazily so that ``hyperhive relay``, which every agent starts, imports nothing
heavy.
"""

from typing import Any

__all__ = ["__version__", "hookimpl"]


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
