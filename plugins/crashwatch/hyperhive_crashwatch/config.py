"""The ``[crashwatch]`` config section."""

from __future__ import annotations

from dataclasses import dataclass

from hyperhive_core import option


@dataclass
class CrashwatchSection:
    """Reports agents' container crashes to the manager, one event per burst of crashes."""

    burst_seconds: float = option(
        60.0,
        help="Crashes of one agent less than this many seconds apart are one burst: the manager hears of\n"
        "the first at once, and of the total in one follow-up once no crash came for this long.\n"
        "Keep it above the daemon's longest restart delay (30s), so a restart loop stays one burst.",
    )
    log_lines: int = option(20, help="The container's last log lines a container_crash event carries.")
    history_per_agent: int = option(100, help="Crash bursts kept per agent for the dashboard; the oldest go first.")

    def __post_init__(self) -> None:
        # Core's config loader names the file and [crashwatch] before it (docs/plugins.md).
        if self.burst_seconds <= 0:
            raise ValueError(f"burst_seconds must be positive, not {self.burst_seconds}")
        if self.log_lines < 0:
            raise ValueError(f"log_lines must be 0 or more, not {self.log_lines}")
        if self.history_per_agent < 1:
            raise ValueError(f"history_per_agent must be at least 1, not {self.history_per_agent}")
