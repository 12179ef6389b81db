"""The ``hyperhive`` command: the quick commands first, everything else through the click CLI.

Claude Code starts ``hyperhive relay`` for every agent session, and the operator
and scripts run ``send``, ``status`` and ``agents`` all the time; so these are
dispatched here before click, pluggy or any plugin is imported (they cost hundreds
of ms). ``relay`` imports only the interpreter's built-in modules;
``hyperhive_core.fastcli`` takes the plain forms of the other three and leaves
anything else (``--help``, other options) to click.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["relay"]:
        from hyperhive_core import relay

        relay.run(argv[1:])  # exits; never returns

    from hyperhive_core import fastcli

    # Not for relay above: its stdout is Claude Code's JSON-RPC. attach writes its shell's bytes to the descriptor.
    fastcli.show_only_text()
    status = fastcli.main(argv)
    if status is not None:
        sys.exit(status)

    from hyperhive_core import cli

    cli.main(argv)


if __name__ == "__main__":
    main()
