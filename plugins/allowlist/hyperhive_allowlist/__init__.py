"""hyperhive-allowlist: an enforced allow-list for each agent's Bash commands.

The hooks live in :mod:`hyperhive_allowlist.plugin`; this package itself imports
nothing, so the checker (:mod:`hyperhive_allowlist.check`) starts fast inside the
agent's container.
"""
