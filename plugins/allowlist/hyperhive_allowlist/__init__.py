"""hyperhive-allowlist: An enforced allow-list for each agent's Bash commands."""
