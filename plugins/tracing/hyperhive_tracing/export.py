"""OTLP export: this host's finished spans, with the ids they have in the hive, over OTLP/HTTP (protobuf).

Spans wait in a bounded queue (``[tracing] export_queue``; past it the oldest are
not exported, with a warning) and go in batches from one task, the HTTP request in
a worker thread, so a slow or down collector never holds a turn. A failed batch is
logged with the endpoint and why, and tried again after a growing pause (up to a
minute); spans stay in the hive's table whatever happens to the export.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import trio
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from hyperhive_tracing.config import TracingSection
from hyperhive_tracing.store import SpanRecord

log = logging.getLogger(__name__)

BATCH = 512
RETRY_MAX = 60.0
REQUEST_SECONDS = 10.0
SCOPE = InstrumentationScope("hyperhive_tracing")
KINDS = {"send": SpanKind.PRODUCER, "turn": SpanKind.CONSUMER, "model": SpanKind.CLIENT}
AttributeValue = str | bool | int | float | tuple[str, ...] | tuple[int, ...] | tuple[float, ...] | tuple[bool, ...]


def _context(trace_id: str, span_id: str) -> SpanContext:
    return SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))


def _value(value: Any) -> AttributeValue:
    """An attribute as OTLP carries it: a scalar, a list of one scalar type, or else JSON text."""
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple) and value:
        kinds = {type(item) for item in value}
        if len(kinds) == 1 and kinds <= {str, bool, int, float}:
            return tuple(value)
    return json.dumps(value, sort_keys=True)


def readable(span: SpanRecord, resource: Resource) -> ReadableSpan:
    """``span`` as the SDK's finished span, with the same trace id, span id and parent."""
    assert span.end_ns is not None, "only finished spans are exported"
    attributes: dict[str, AttributeValue] = {
        "hyperhive.kind": span.kind,
        "hyperhive.agent": span.agent,
        "hyperhive.waits_on_person": span.waits_on_person,
    }
    if span.host:
        attributes["hyperhive.host"] = span.host
    if span.cost_usd is not None:
        attributes["hyperhive.cost_usd"] = span.cost_usd
    if span.input_tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = span.input_tokens
    if span.output_tokens is not None:
        attributes["gen_ai.usage.output_tokens"] = span.output_tokens
    attributes |= {f"hyperhive.{key}": _value(value) for key, value in span.attributes.items() if value is not None}
    return ReadableSpan(
        name=span.name,
        context=_context(span.trace_id, span.span_id),
        parent=_context(span.trace_id, span.parent_id) if span.parent_id else None,
        resource=resource,
        attributes=attributes,
        links=[Link(_context(link["trace_id"], link["span_id"])) for link in span.links],
        kind=KINDS.get(span.kind, SpanKind.INTERNAL),
        instrumentation_scope=SCOPE,
        status=Status(StatusCode.ERROR if span.status == "error" else StatusCode.OK),
        start_time=span.start_ns,
        end_time=span.end_ns,
    )


class Export:
    """The spans waiting for the collector, and the task that sends them (``run``)."""

    def __init__(self, settings: TracingSection) -> None:
        self.settings = settings
        self.resource = Resource.create({"service.name": settings.service_name})
        self._waiting: deque[SpanRecord] = deque(maxlen=settings.export_queue)
        self._arrived = trio.Event()
        self._dropped = 0
        self.exported = 0
        """Spans the collector took, since start."""

    def offer(self, spans: Iterable[SpanRecord]) -> None:
        """Queue finished spans for export; never waits."""
        for span in spans:
            if len(self._waiting) == self._waiting.maxlen:
                self._dropped += 1
            self._waiting.append(span)
        if self._waiting:
            self._arrived.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        exporter = OTLPSpanExporter(
            endpoint=self.settings.otlp_endpoint, headers=dict(self.settings.otlp_headers), timeout=REQUEST_SECONDS
        )
        task_status.started()
        pause = 1.0
        try:
            while True:
                await self._arrived.wait()
                self._arrived = trio.Event()
                while self._waiting:
                    batch = [self._waiting.popleft() for _ in range(min(BATCH, len(self._waiting)))]
                    if self._dropped:
                        log.warning(
                            "tracing: %d span(s) were not exported: over [tracing] export_queue (%d) waiting",
                            self._dropped,
                            self.settings.export_queue,
                        )
                        self._dropped = 0
                    error = await self._send(exporter, batch)
                    if error is None:
                        self.exported += len(batch)
                        pause = 1.0
                        continue
                    # Back in front, unless newer spans pushed them out meanwhile.
                    room = self.settings.export_queue - len(self._waiting)
                    self._waiting.extendleft(reversed(batch[:room]))
                    log.warning(
                        "tracing: exporting %d span(s) to %s failed (%s); trying again in %.0fs",
                        len(batch),
                        self.settings.otlp_endpoint,
                        error,
                        pause,
                    )
                    await trio.sleep(pause)
                    pause = min(pause * 2, RETRY_MAX)
        finally:
            exporter.shutdown()

    async def _send(self, exporter: OTLPSpanExporter, batch: Sequence[SpanRecord]) -> str | None:
        """Export ``batch``; ``None`` once the collector took it, else why not."""
        spans = [readable(span, self.resource) for span in batch]
        try:
            result = await trio.to_thread.run_sync(exporter.export, spans, abandon_on_cancel=True)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if result is SpanExportResult.SUCCESS else "the collector did not accept them"
