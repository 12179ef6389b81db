"""Errors a user can cause. Each message says what went wrong and what to do."""


class HyperhiveError(Exception):
    """Base for every error that is shown to a user as a plain message."""


class ConfigError(HyperhiveError):
    """The config file is missing, malformed, or has an unknown key, a wrong type or a value out of range.

    A config section's ``__post_init__`` raises it (or a ``ValueError``) for a value
    out of range; ``key`` names the offending key when the message does not start
    with it, and core adds the file and the section (docs/plugins.md#config).
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class PluginError(HyperhiveError):
    """A plugin is missing, or two plugins claim the same name."""


class StoreError(HyperhiveError):
    """The database cannot be opened or migrated."""


class DiskFull(StoreError):
    """The database's filesystem is full: a write was refused and nothing of it was stored."""
