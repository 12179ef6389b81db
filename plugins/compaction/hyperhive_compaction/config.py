"""The ``[compaction]`` config section."""

from __future__ import annotations

from dataclasses import dataclass

from hyperhive_core import HyperhiveError, check_model, option


@dataclass
class CompactionSection:
    """Keeps each agent's /state/notes.md small with a short secondary Claude Code session."""

    threshold_bytes: int = option(
        32768, help="Compact an agent's notes.md once it grows past this many bytes (checked after each turn)."
    )
    model: str | None = option(None, help="Model for the compaction session. Default: the agent's own model.")
    timeout_seconds: float = option(
        300.0, help="Give up on a compaction session after this long; the notes are restored."
    )
    keep_backups: int = option(5, help="Backups of notes.md kept per agent (the newest ones).")
    retry_failed_after_seconds: float = option(
        3600.0,
        help="After a compaction that was undone, wait this long before the threshold triggers another.\n"
        "/compact-notes and `hyperhive compact-notes` run one regardless.",
    )

    def __post_init__(self) -> None:
        for key in ("threshold_bytes", "keep_backups"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, not {getattr(self, key)}")
        if self.timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be positive, not {self.timeout_seconds}")
        if self.retry_failed_after_seconds < 0:
            raise ValueError(f"retry_failed_after_seconds must be 0 or more, not {self.retry_failed_after_seconds}")
        if self.model is not None:
            # The name lands in the session's argv, so its shape is checked here (the name
            # itself counts as known); on_startup checks it against [claude] extra_models.
            try:
                check_model(self.model, extra_models=(self.model,))
            except HyperhiveError:
                raise ValueError(
                    f"model {self.model!r} is not a model name, like 'haiku'; fix it or leave it out"
                ) from None
