"""OTLP export against a real OTLP/HTTP receiver on loopback, which decodes what arrives with the OTLP protobufs."""

from __future__ import annotations

import http.server
import logging
import threading
from contextlib import contextmanager

import hyperhive_tracing
import pytest
import trio
from hyperhive_tracing.capture import TRACEPARENT, TRACER, parse_traceparent
from hyperhive_tracing.store import SpanRecord, new_span_id, new_trace_id, trace_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from hyperhive_core import ConfigError
from hyperhive_core.testing import Script, needs_claude, next_event, running_hive

SCRIPT = Script()
SCRIPT.on("worker", "count the files").call("send", {"to": "operator", "body": "42 files"}).reply("done")
SCRIPT.otherwise("nothing to do")


class Receiver:
    """An OTLP/HTTP traces endpoint: ``refuse`` requests get a 400 first, then every span is kept."""

    def __init__(self, port: int = 0, refuse: int = 0) -> None:
        self.spans: list[dict] = []
        self.resources: list[dict] = []
        self.headers: list[dict] = []
        self.refuse = refuse
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.headers.append({name.lower(): value for name, value in self.headers.items()})
                if receiver.refuse:
                    receiver.refuse -= 1
                    self.send_response(400)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    attributes = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
                    self.server.receiver.resources.append(attributes)
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans += [decoded(span) for span in scope_spans.spans]
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.receiver = self
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/traces"

    @contextmanager
    def serving(self):
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join(5)


def decoded(span) -> dict:
    attributes = {}
    for kv in span.attributes:
        which = kv.value.WhichOneof("value")
        attributes[kv.key] = getattr(kv.value, which) if which != "array_value" else None
    return {
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_id": span.parent_span_id.hex() or None,
        "name": span.name,
        "start_ns": span.start_time_unix_nano,
        "end_ns": span.end_time_unix_nano,
        "error": span.status.code == 2,
        "attributes": attributes,
        "links": [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
    }


async def exported(receiver: Receiver, count: int) -> list[dict]:
    while len(receiver.spans) < count:
        await trio.sleep(0.05)
    return receiver.spans


async def work(hive) -> str:
    """The operator asks the worker; its turn ends; the trace's spans are all stored and finished. The trace id."""
    await hive.broker.send("operator", "worker", "count the files")
    await next_event(hive, "worker", "turn_end")
    while True:
        traces = await hive.store.read(lambda db: db.execute("SELECT DISTINCT trace_id FROM tracing_spans").fetchall())
        if traces:
            spans = await trace_spans(hive, traces[0][0])
            if len(spans) == 5 and not any(span.open for span in spans):
                return traces[0][0]
        await trio.sleep(0.05)


@pytest.mark.slow
@needs_claude
async def test_the_spans_arrive_with_their_ids_and_tree(make_pm, tmp_path):
    receiver = Receiver()
    pm = make_pm(tracing=hyperhive_tracing)
    tracing = {"otlp_endpoint": receiver.url, "otlp_headers": {"authorization": "Bearer s3cret"}, "service_name": "hh"}
    with receiver.serving():
        async with running_hive(tmp_path, pm, SCRIPT, agents={"worker": {}}, tracing=tracing) as hive:
            with trio.fail_after(90):
                trace_id = await work(hive)
                stored = await trace_spans(hive, trace_id)
                arrived = await exported(receiver, len(stored))
    # The same ids and parents: the exact tree, each span once.
    assert sorted((s["trace_id"], s["span_id"], s["parent_id"], s["name"]) for s in arrived) == sorted(
        (span.trace_id, span.span_id, span.parent_id, span.name) for span in stored
    )
    by_name = {span["name"]: span for span in arrived}
    assert set(by_name) == {
        "message operator→worker",
        "turn worker",
        "tool mcp__hyperhive__send",
        "send worker→operator",
        "model haiku",
    }
    assert by_name["message operator→worker"]["parent_id"] is None
    model = by_name["model haiku"]
    assert model["attributes"]["hyperhive.kind"] == "model"
    assert model["attributes"]["hyperhive.cost_usd"] == 0.0  # the rehearsal model costs nothing
    assert by_name["turn worker"]["attributes"]["hyperhive.agent"] == "worker"
    assert all(span["end_ns"] >= span["start_ns"] > 0 for span in arrived)
    assert receiver.resources[0]["service.name"] == "hh"
    assert receiver.headers[0]["authorization"] == "Bearer s3cret"
    assert receiver.headers[0]["content-type"] == "application/x-protobuf"


@pytest.mark.slow
@needs_claude
async def test_a_collector_that_fails_holds_no_turn_and_gets_the_spans_later(make_pm, tmp_path, caplog):
    # Nothing listens at the endpoint yet: the turn runs all the same, and the failure is one clear line.
    down = Receiver()
    down.server.server_close()
    port, url = down.server.server_port, down.url
    pm = make_pm(tracing=hyperhive_tracing)
    caplog.set_level(logging.WARNING, logger="hyperhive_tracing.export")
    async with running_hive(tmp_path, pm, SCRIPT, agents={"worker": {}}, tracing={"otlp_endpoint": url}) as hive:
        with trio.fail_after(120):
            trace_id = await work(hive)
            while not ours(caplog):
                await trio.sleep(0.1)
            lines = ours(caplog)
            assert all(f"span(s) to {url} failed" in line and "trying again in" in line for line in lines), lines
            # The collector comes back: it refuses one batch (400), then takes everything, each span once.
            late = Receiver(port=port, refuse=1)
            with late.serving():
                stored = await trace_spans(hive, trace_id)
                arrived = await exported(late, len(stored))
                await trio.sleep(0.5)  # nothing more comes: no span twice
                assert hive.stash[TRACER].export.exported == len(late.spans)
    assert sorted(span["span_id"] for span in late.spans) == sorted(span.span_id for span in stored)
    assert len(arrived) == len(stored)


async def test_other_hosts_spans_are_kept_here_but_exported_only_by_their_host(make_pm, tmp_path):
    receiver = Receiver()
    pm = make_pm(tracing=hyperhive_tracing)
    with receiver.serving():
        async with running_hive(tmp_path, pm, SCRIPT, tracing={"otlp_endpoint": receiver.url}) as hive:
            with trio.fail_after(30):
                theirs = SpanRecord(
                    new_span_id(), new_trace_id(), None, "turn builder", "turn", "builder", "b", 5, 9, "ok"
                )
                hive.events.merge("b", "hive", "tracing.span", theirs.to_event())
                mine = await hive.broker.send("hive", "operator", "a note for the operator")
                trace_id, _ = parse_traceparent(mine.headers[TRACEPARENT])
                await until(lambda: trace_spans(hive, theirs.trace_id))
                await until(lambda: trace_spans(hive, trace_id))
                while not receiver.spans:
                    await trio.sleep(0.05)
                await trio.sleep(0.5)  # anything more would have come by now
    [only] = receiver.spans
    assert only["trace_id"] == trace_id


async def until(predicate):
    while not (found := await predicate()):
        await trio.sleep(0.05)
    return found


def ours(caplog) -> list[str]:
    """The export's own lines (the exporter library logs its retries too)."""
    return [record.getMessage() for record in caplog.records if record.name == "hyperhive_tracing.export"]


def test_a_bad_endpoint_is_a_clear_config_error(make_pm, make_config):
    pm = make_pm(tracing=hyperhive_tracing)
    with pytest.raises(ConfigError, match=r"\[tracing\] otlp_endpoint 'collector:4318' is not an http:// or https://"):
        make_config(pm, tracing={"otlp_endpoint": "collector:4318"})
    with pytest.raises(ConfigError, match=r"retention_days must be more than 0, not 0"):
        make_config(pm, tracing={"retention_days": 0})
