"""Message headers: stamped by ``message_headers`` hooks, kept by both broker backends, bounded, never the sender."""

from __future__ import annotations

import pytest
import test_broker_conformance as conformance
import trio

from hyperhive_core import hookimpl
from hyperhive_core.broker import InvalidHeaders, check_headers
from hyperhive_core.daemon import run_hive
from hyperhive_core.errors import PluginError

# The conformance suite's fixtures: each test below runs on sqlite and on a real JetStream cluster.
backend, target, open_broker = conformance.backend, conformance.target, conformance.open_broker
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_headers_survive_every_state_on_both_backends(open_broker):
    broker = await open_broker("bob", max_attempts=1)
    sent = await broker.send("operator", "bob", "hello", headers={"traceparent": TRACE, "x.try": "1"})
    assert sent.headers == {"traceparent": TRACE, "x.try": "1"}
    plain = await broker.send("operator", "bob", "no headers")
    assert plain.headers == {}
    batch = await broker.lease("bob")
    assert [message.headers for message in batch.messages] == [{"traceparent": TRACE, "x.try": "1"}, {}]
    # Given back on its last attempt, it is dead; requeued, then delivered and acked: the headers go along.
    assert sorted(await broker.release(batch, error="failed")) == sorted(batch.ids)
    dead = await broker.dead_letter(sent.id)
    assert dead.headers == {"traceparent": TRACE, "x.try": "1"}
    [requeued, _] = await broker.requeue_dead([sent.id, plain.id])
    assert requeued.headers == dead.headers
    again = await broker.lease("bob")
    assert [message.headers for message in again.messages] == [{"traceparent": TRACE, "x.try": "1"}, {}]
    await broker.ack(again)
    newest = {message.id: message.headers for message in await broker.recent_for("bob")}
    assert newest == {sent.id: {"traceparent": TRACE, "x.try": "1"}, plain.id: {}}


async def test_a_repeat_by_idempotency_key_keeps_the_first_headers(open_broker):
    broker = await open_broker("bob")
    first = await broker.send("operator", "bob", "once", idempotency_key="k-1", headers={"attempt": "1"})
    again = await broker.send("operator", "bob", "once", idempotency_key="k-1", headers={"attempt": "2"})
    assert again.id == first.id
    [stored] = (await broker.lease("bob")).messages
    assert stored.headers == {"attempt": "1"}


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"Traceparent": "x"}, "message header name 'Traceparent' must be 1-64 lowercase letters"),
        ({"-x": "x"}, "starting with a letter or digit"),
        ({"a" * 65: "x"}, "must be 1-64 lowercase"),
        ({"x": ""}, "message header 'x' must be printable ASCII text, not empty"),
        ({"x": " padded"}, "no space at either end"),
        ({"x": "two\nlines"}, "must be printable ASCII text"),
        ({"x": "café"}, "must be printable ASCII text"),
        ({"x": 1}, "must be printable ASCII text"),
        ({f"h{n}": "v" for n in range(17)}, "17 header(s) in 58 bytes, over the limit of 16 in 2048 bytes"),
        ({"big": "v" * 2046}, "1 header(s) in 2049 bytes, over the limit of 16 in 2048 bytes"),
        (["traceparent"], "message headers must be a mapping of names to text, not list"),
    ],
)
def test_bad_headers_are_refused_saying_why(headers, says):
    with pytest.raises(InvalidHeaders) as refused:
        check_headers(headers)
    assert says in str(refused.value)


async def test_a_send_with_bad_headers_stores_nothing(open_broker):
    broker = await open_broker("bob")
    with pytest.raises(InvalidHeaders, match="no space at either end"):
        await broker.send("operator", "bob", "hello", headers={"x": "y "})
    assert await broker.lease("bob") is None


class Stamper:
    """Stamps where each message came from; records what on_message and the recipient see."""

    def __init__(self, stamp=None):
        self.calls = []
        self.seen = []
        self.stamp = stamp

    @hookimpl
    def on_startup(self, hive):
        hive.broker.policy.add("bob")

    @hookimpl
    def message_headers(self, hive, sender, recipient, kind, body):
        self.calls.append((sender, recipient, kind, body))
        return self.stamp(sender) if self.stamp else {"origin": sender, "shared": "stamper"}

    @hookimpl
    def on_message(self, hive, message):
        self.seen.append(dict(message.headers))


class Second:
    @hookimpl
    def message_headers(self, sender):
        return {"shared": "second", "second": "yes"} if sender == "operator" else None


async def test_hook_message_headers(make_pm, make_config):
    stamper = Stamper()
    pm = make_pm(stamper=stamper, second=Second())  # second registers last: pluggy calls it first
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(run_hive, make_config(pm), pm)
        sent = await hive.broker.send("operator", "bob", "hello bob")
        assert stamper.calls == [("operator", "bob", "text", "hello bob")]
        assert sent.headers == {"origin": "operator", "shared": "second", "second": "yes"}
        assert stamper.seen == [sent.headers]
        # A hive event is stamped too; headers the caller passes win over the hooks'.
        await hive.notify("bob", "approval_resolved", id=7)
        explicit = await hive.broker.send("hive", "bob", "over", kind="event", headers={"origin": "caller"})
        assert stamper.calls[1] == ("hive", "bob", "event", '{"event": "approval_resolved", "id": 7}')
        assert explicit.headers == {"origin": "caller", "shared": "stamper"}
        batch = await hive.broker.lease("bob")
        assert [message.headers for message in batch.messages] == [
            sent.headers,
            {"origin": "hive", "shared": "stamper"},
            {"origin": "caller", "shared": "stamper"},
        ]
        # A header never changes who sent it: the sender stays what core knows.
        assert [message.sender for message in batch.messages] == ["operator", "hive", "hive"]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("stamp", "error", "says"),
    [
        (lambda sender: ["origin"], PluginError, "a message_headers hook returned list; it must return a mapping"),
        (lambda sender: {"Bad Name": "x"}, InvalidHeaders, "message header name 'Bad Name'"),
    ],
)
async def test_a_hook_that_stamps_wrongly_fails_the_send_saying_why(make_pm, make_config, stamp, error, says):
    pm = make_pm(stamper=Stamper(stamp))
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(run_hive, make_config(pm), pm)
        with pytest.raises(error, match=says):
            await hive.broker.send("operator", "bob", "hello")
        assert await hive.broker.recent_for("bob") == []
        nursery.cancel_scope.cancel()


async def test_an_async_hook_is_refused(make_pm, make_config):
    class Async:
        @hookimpl
        async def message_headers(self):
            return {"late": "yes"}

    pm = make_pm(stamper=Stamper(), late=Async())
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(run_hive, make_config(pm), pm)
        with pytest.raises(PluginError, match="returned coroutine; .* at once \\(not async\\)"):
            await hive.broker.send("operator", "bob", "hello")
        nursery.cancel_scope.cancel()


async def test_headers_outlive_a_restart_of_the_sqlite_broker(make_pm, make_config):
    pm = make_pm(stamper=Stamper())
    config = make_config(pm)
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(run_hive, config, pm)
        sent = await hive.broker.send("operator", "bob", "kept")
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        hive = await nursery.start(run_hive, config, pm)
        [message] = (await hive.broker.lease("bob")).messages
        assert (message.id, message.headers) == (sent.id, {"origin": "operator", "shared": "stamper"})
        nursery.cancel_scope.cancel()
