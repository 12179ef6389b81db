"""What every ``hyperhive`` command shares, core's and the plugins': ``--json``.

Its own module, importing only click, so that modules whose commands load with the
CLI (``hyperhive_core.dead_letters``) can use it without importing ``hyperhive_core.cli``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from hyperhive_core.fastcli import to_json

F = TypeVar("F", bound=Callable[..., Any])


def json_option(help: str = "Machine-readable output.") -> Callable[[F], F]:
    """``--json``, passed to the command as ``as_json``: print the result with :func:`echo_json` and nothing else."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def echo_json(value: Any) -> None:
    """Print a command's result as ``--json`` shows it."""
    click.echo(to_json(value))
