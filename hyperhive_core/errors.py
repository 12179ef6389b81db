"""Errors a user can cause. Each message says what went wrong and what to do."""


class HyperhiveError(Exception):
    """Base for every error that is shown to a user as a plain message."""


class ConfigError(HyperhiveError):
    """The config file is missing, malformed, or has an unknown key or wrong type."""


class PluginError(HyperhiveError):
    """A plugin is missing, or two plugins claim the same name."""


class StoreError(HyperhiveError):
    """The database cannot be opened or migrated."""
