"""hyperhive-telemetry: Per-agent turn statistics, charts and Prometheus /metrics."""
