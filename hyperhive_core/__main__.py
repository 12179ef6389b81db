"""The ``hyperhive`` command: ``relay`` fast, everything else through the click CLI.

Claude Code starts ``hyperhive relay`` for every agent session, so it is dispatched
here before click, pluggy or any plugin is imported (they cost hundreds of ms).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["relay"]:
        from hyperhive_core import relay

        relay.run(argv[1:])  # exits; never returns

    from hyperhive_core import cli

    cli.main(argv)


if __name__ == "__main__":
    main()
