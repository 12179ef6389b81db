"""Model names: which the hive passes to Claude Code's ``--model``, checked wherever one enters.

A model name ends up in the CLI's argv, so a name like ``--dangerously-skip-permissions``
must never get that far. Every entry (the dashboard, the host socket and so the
``hyperhive model`` command, ``[claude] model``, ``[agents.NAME] model`` and an
``agent.toml`` the manager commits) calls :func:`check_model`.

Known are the aliases the pinned Claude Code CLI resolves itself and well-formed full
model ids. The operator may allow other names (a proxy's own model names, a cloud
provider's ids) with ``[claude] extra_models``; those too must have the strict shape.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from hyperhive_core.errors import HyperhiveError

# The aliases the pinned CLI (2.1.330) resolves to a model of its own choosing;
# tests/test_models.py runs each through the real CLI to see it resolved.
ALIASES = ("haiku", "sonnet", "opus", "fable", "best", "opusplan", "sonnet[1m]", "opus[1m]", "fable[1m]")

# A full Anthropic model id: claude-sonnet-4-5, claude-3-5-haiku-20241022,
# claude-opus-4-1@20250805, and a [1m] (long-context) suffix as the CLI accepts it.
FULL_ID = re.compile(r"claude(?:-[a-z0-9]+(?:\.[0-9]+)?){1,8}(?:@[0-9]{8})?(?:\[1m\])?")

# The shape every allowed name has, custom ones included: never a leading '-' (it
# would be an option), nothing a shell, a URL or a log line could read twice.
SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@\[\]-]{0,127}")

EXAMPLE_ID = "claude-sonnet-4-5"


class InvalidModel(HyperhiveError):
    """A model name the hive does not pass to Claude Code."""


def check_model(name: object, extra_models: Collection[str] = ()) -> str:
    """Return ``name`` if it is a model the hive may run, else raise :class:`InvalidModel`.

    :param extra_models: the names ``[claude] extra_models`` allows besides the known ones.
    """
    if not isinstance(name, str) or not SHAPE.fullmatch(name):
        raise InvalidModel(
            f"model name {name!r} is not valid: it must start with a letter or digit and use only letters, "
            f"digits and . _ - : / @ [ ] (at most 128 characters); {_known(extra_models)}"
        )
    if name in ALIASES or FULL_ID.fullmatch(name) or name in extra_models:
        return name
    raise InvalidModel(
        f"unknown model {name!r}; {_known(extra_models)}. To run another model, allow it in hyperhive.toml: "
        f'[claude] extra_models = ["{name}"]'
    )


def known_models(extra_models: Collection[str] = ()) -> list[str]:
    """The model names to offer by name: the CLI's aliases, then ``[claude] extra_models``.

    :func:`check_model` accepts each; it also accepts any full model id, which no list holds.
    """
    return [*ALIASES, *(name for name in extra_models if name not in ALIASES)]


def check_extra_models(names: Collection[str]) -> None:
    """Check ``[claude] extra_models``: each entry must have the shape of a model name."""
    for name in names:
        if not SHAPE.fullmatch(name):
            raise InvalidModel(
                f"[claude] extra_models: {name!r} cannot be a model name: start with a letter or digit and use "
                "only letters, digits and . _ - : / @ [ ] (at most 128 characters)"
            )


def _known(extra_models: Collection[str]) -> str:
    extra = f", or one of [claude] extra_models: {', '.join(extra_models)}" if extra_models else ""
    return f"use an alias ({', '.join(ALIASES)}), a full model id like {EXAMPLE_ID}{extra}"
