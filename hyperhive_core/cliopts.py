"""What every ``hyperhive`` command shares, core's and the plugins': the config
(``--config`` and :class:`CliState`) and ``--json``.

Its own module, importing only click, so that modules whose commands load with the
CLI (``hyperhive_core.dead_letters``) can use it without importing ``hyperhive_core.cli``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import click

from hyperhive_core.fastcli import to_json

if TYPE_CHECKING:
    from hyperhive_core.boot import Booted

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
R = TypeVar("R")


class CliState:
    """Options of the top-level group, shared with every command."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path

    def boot(self) -> Booted:
        """The validated config and the plugins it selects (they all load)."""
        from hyperhive_core.boot import boot

        return boot(self.config_path)


def config_option(*, top_level: bool = False) -> Callable[[F], F]:
    """``--config FILE`` (``-c``): the top-level group's, and every command's that reads the config.

    So ``hyperhive -c FILE up`` and ``hyperhive up -c FILE`` mean the same; given in both
    places, both must name the same file. The group passes it on as ``config_path``
    (to make the :class:`CliState`); a command's sets that state's ``config_path``.
    """
    return click.option(
        "--config",
        "-c",
        "config_path",
        metavar="FILE",
        is_eager=top_level,  # read before --help, which lists the commands of the plugins this config selects
        expose_value=top_level,
        callback=_config_given,
        help="Config file. Default: $HYPERHIVE_CONFIG, then ./hyperhive.toml.",
    )


def _config_given(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    state = ctx.find_object(CliState)
    if value is None or state is None:  # not given, or the group's own, which makes the state
        return value
    if state.config_path is not None and Path(state.config_path).resolve() != Path(value).resolve():
        raise click.UsageError(
            f"--config is given twice, as {state.config_path} before the command and {value} after it; "
            "give it once, before or after the command name"
        )
    state.config_path = value
    return value


_pass_state = click.make_pass_decorator(CliState)


def pass_state(command: Callable[Concatenate[CliState, P], R]) -> Callable[P, R]:
    """Give the command the :class:`CliState` as its first argument, and the ``--config`` option."""
    return config_option()(_pass_state(command))


def json_option(help: str = "Machine-readable output.") -> Callable[[F], F]:
    """``--json``, passed to the command as ``as_json``: print the result with :func:`echo_json` and nothing else."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def echo_json(value: Any) -> None:
    """Print a command's result as ``--json`` shows it."""
    click.echo(to_json(value))
