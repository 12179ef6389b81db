"""``[tracing]``: where traces go besides the hive's own table, and how long they stay."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from hyperhive_core import option


@dataclass
class TracingSection:
    """Traces of the swarm's work: kept in the hive, and exported over OTLP when an endpoint is set."""

    otlp_endpoint: str = option(
        "",
        help="An OTLP/HTTP traces URL (http://collector:4318/v1/traces) to export finished spans to; "
        "empty exports nothing.",
    )
    otlp_headers: dict[str, str] = option({}, help="HTTP headers sent with every export, e.g. for auth.")
    service_name: str = option("hyperhive", help="The service.name resource attribute of exported spans.")
    retention_days: float = option(7.0, help="Days a trace is kept after anything in it last started or ended.")
    export_queue: int = option(
        10000, help="Finished spans waiting for export, at most; beyond it the oldest are not exported."
    )

    def __post_init__(self) -> None:
        if self.otlp_endpoint:
            url = urlsplit(self.otlp_endpoint)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ValueError(
                    f"otlp_endpoint {self.otlp_endpoint!r} is not an http:// or https:// URL; "
                    "give the collector's traces URL, e.g. http://localhost:4318/v1/traces"
                )
        if not self.service_name:
            raise ValueError("service_name must not be empty")
        if self.retention_days <= 0:
            raise ValueError(f"retention_days must be more than 0, not {self.retention_days}")
        if self.export_queue < 1:
            raise ValueError(f"export_queue must be at least 1, not {self.export_queue}")
