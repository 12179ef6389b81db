"""The ``[telemetry]`` config section."""

from __future__ import annotations

from dataclasses import dataclass

from hyperhive_core import option


@dataclass
class TelemetrySection:
    """Per-agent turn statistics, charts and Prometheus /metrics."""

    sample_interval_seconds: float = option(
        30.0, help="How often the sampler records inbox depth, time since last turn, notes size, approvals."
    )
    window_seconds: float = option(
        3600.0,
        help="The window for rates, percentiles and maxima in /metrics and the summaries,\n"
        "and what /api/stats returns when no `since` is given.",
    )
    retention_days: float = option(7.0, help="Samples older than this are deleted.")
    retention_interval_seconds: float = option(3600.0, help="How often old samples are deleted.")

    def __post_init__(self) -> None:
        for key in ("sample_interval_seconds", "window_seconds", "retention_days", "retention_interval_seconds"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be positive, not {getattr(self, key)}")
