"""Tracing on a hive of two hosts (a real three-node JetStream cluster, the real CLI): one trace across both
is whole on each host, each span tagged with its agent's host, and each host exports only its own spans."""

from __future__ import annotations

import http.server
import threading
from contextlib import AsyncExitStack

import hyperhive_tracing
import pytest
import trio
from hyperhive_tracing.store import recent_traces, trace_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from test_cluster_hosts import conversation, host, placement_ready

from hyperhive_core.testing import host_request, needs_claude, operator_reply


class Collector:
    """An OTLP/HTTP traces endpoint on loopback that keeps the span id of every span it is sent."""

    def __init__(self) -> None:
        self.span_ids: list[str] = []
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        collector.span_ids += [span.span_id.hex() for span in scope.spans]
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


async def whole_trace(hive, count: int):
    """The one trace this host holds, once ``count`` spans of it are stored and none is open."""
    while True:
        traces = await recent_traces(hive)
        if len(traces) == 1:
            spans = await trace_spans(hive, traces[0].trace_id)
            if len(spans) >= count and not any(span.open for span in spans):
                return spans
        await trio.sleep(0.1)


@pytest.mark.slow
@needs_claude
async def test_on_two_hosts_one_trace_is_whole_on_each_and_each_exports_its_own(make_pm, tmp_path, nats_cluster):
    placement_ready(nats_cluster.urls)
    receivers = {name: Collector() for name in ("a", "b")}
    try:
        on_a, on_b = conversation()
        async with AsyncExitStack() as stack:
            a, b = [
                await stack.enter_async_context(
                    host(
                        tmp_path,
                        make_pm(tracing=hyperhive_tracing),
                        name,
                        nats_cluster.urls,
                        script,
                        agents,
                        tracing={"otlp_endpoint": receivers[name].url},
                    )
                )
                for name, script, agents in (
                    ("a", on_a, {"alice": {"allowed_recipients": ["bob"]}}),
                    ("b", on_b, {"bob": {"allowed_recipients": ["alice"]}}),
                )
            ]
            with trio.fail_after(120):
                await host_request(b, "send", to="alice", body="ping")
                assert (await operator_reply(a, "alice")).startswith("bob answered")
                # The operator's message; alice's turn, send to bob, bob's turn, send back, alice's
                # second turn and send to the operator, with a tool and a model span per turn: 13.
                on_a_spans, on_b_spans = await whole_trace(a, 13), await whole_trace(b, 13)
                while sum(len(receiver.span_ids) for receiver in receivers.values()) < len(on_a_spans):
                    await trio.sleep(0.1)
                await trio.sleep(1)  # anything exported twice would have come by now
    finally:
        for receiver in receivers.values():
            receiver.close()
    assert {span.span_id: span for span in on_a_spans} == {span.span_id: span for span in on_b_spans}
    hosts = {(span.agent, span.kind): span.host for span in on_a_spans if span.kind != "message"}
    assert hosts == {
        ("alice", "turn"): "a",
        ("alice", "tool"): "a",
        ("alice", "send"): "a",
        ("alice", "model"): "a",
        ("bob", "turn"): "b",
        ("bob", "tool"): "b",
        ("bob", "send"): "b",
        ("bob", "model"): "b",
    }
    exported = {name: set(receiver.span_ids) for name, receiver in receivers.items()}
    assert all(len(receiver.span_ids) == len(exported[name]) for name, receiver in receivers.items())  # each once
    assert exported["a"].isdisjoint(exported["b"])
    assert exported["a"] | exported["b"] == {span.span_id for span in on_a_spans}
    assert exported["b"] == {span.span_id for span in on_a_spans if span.host == "b"}
