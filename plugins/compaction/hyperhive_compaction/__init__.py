"""hyperhive-compaction: Keeps each agent's /state/notes.md small with a secondary Claude Code session."""
