"""Least privilege, tried with raw nats-py calls against a real server.

Each negative test checks two things: the server reported a permission violation for exactly
what was attempted, and the attempt had no effect (seen through the admin identity). Each has a
positive twin showing the same identity can do its own thing, so no test passes merely because
nothing works.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
import pytest
from nats.js import api

from bridge.errors import TransportError
from bridge.nats.identities import Identity
from bridge.nats.subjects import (
    BROKER_CONSUMER,
    inbox_consumer,
    inbox_stream,
    inbox_subject,
    kv_bucket,
    kv_stream,
    report_stream,
    report_subject,
    status_consumer,
    status_stream,
    status_subject,
    status_subjects_all,
    submit_stream,
    submit_subject,
)
from bridge.nats.transport import bind_pull, connect, fetch, publish_durable

if TYPE_CHECKING:
    from conftest import NatsClient, NatsEnv

A = "jobcenter-unna"
B = "suchtberatung-unna"
MSG_A = "7b0e3f43-6d2c-4a39-9d0b-1c2f3e4d5a6b"
MSG_B = "0f1e2d3c-4b5a-4968-8776-655443322110"
DENIED = 0.5  # seconds to wait for an answer that a denied request never gets


async def _denied(client: NatsClient, *what: str) -> None:
    """Assert the server reported a permission violation naming each of `what`."""
    await client.expect_violations(*what)


async def _all_fail(*calls: Awaitable[object]) -> None:
    """Run the calls concurrently; each must fail (some nats-py calls ignore the API timeout)."""
    bounded = (asyncio.wait_for(call, 2 * DENIED) for call in calls)
    results = await asyncio.gather(*bounded, return_exceptions=True)
    for result in results:
        assert isinstance(result, Exception), result


async def _agency(env: NatsEnv, agency: str) -> NatsClient:
    return await env.connect(Identity.for_agency(agency), api_timeout=DENIED)


async def _route(env: NatsEnv, agency: str, payload: bytes) -> None:
    broker = await env.connect(Identity.broker())
    await publish_durable(broker.js, inbox_subject(agency), payload, msg_id=payload.decode())


# -- submissions ------------------------------------------------------------------------------


async def test_agency_submits_as_itself_only(nats_env: NatsEnv) -> None:
    a = await _agency(nats_env, A)
    ack = await publish_durable(a.js, submit_subject(A), b"mine", msg_id="s-1")
    assert ack.stream == submit_stream(A)

    with pytest.raises(TransportError) as info:
        await publish_durable(a.js, submit_subject(B), b"forged", msg_id="s-2", timeout=DENIED)
    assert info.value.reason == "transport.ack_timeout"
    await a.nc.publish(submit_subject(B), b"forged, no reply")
    await _denied(a, f'publish to "{submit_subject(B)}"')

    admin = await nats_env.admin()
    assert (await admin.js.stream_info(submit_stream(A))).state.messages == 1
    assert (await admin.js.stream_info(submit_stream(B))).state.messages == 0


async def test_agency_cannot_read_submissions(nats_env: NatsEnv) -> None:
    b = await _agency(nats_env, B)
    await publish_durable(b.js, submit_subject(B), b"secret", msg_id="s-1")
    a = await _agency(nats_env, A)
    seen: list[bytes] = []

    async def spy(msg: nats.aio.msg.Msg) -> None:
        seen.append(msg.data)

    await a.nc.subscribe("bridge.submit.>", cb=spy)
    await a.nc.subscribe(submit_subject(B), cb=spy)
    broker_sub = await bind_pull(a.js, submit_stream(B), BROKER_CONSUMER)
    assert await fetch(broker_sub, 1, DENIED) == []
    await _all_fail(
        a.js.stream_info(submit_stream(B)),
        a.js.get_msg(submit_stream(B), 1),
        a.js.get_msg(submit_stream(B), subject=submit_subject(B), direct=True),
        a.js.consumer_info(submit_stream(B), BROKER_CONSUMER),
    )
    await publish_durable(b.js, submit_subject(B), b"more", msg_id="s-2")
    await _denied(
        a,
        'subscription to "bridge.submit.>"',
        f'subscription to "{submit_subject(B)}"',
        f"CONSUMER.MSG.NEXT.{submit_stream(B)}.{BROKER_CONSUMER}",
        f"STREAM.INFO.{submit_stream(B)}",
        f"STREAM.MSG.GET.{submit_stream(B)}",
        f"DIRECT.GET.{submit_stream(B)}",
    )
    assert seen == []
    admin = await nats_env.admin()
    info = await admin.js.consumer_info(submit_stream(B), BROKER_CONSUMER)
    assert info.num_pending == 2  # nothing was taken from the broker's consumer


# -- inboxes ----------------------------------------------------------------------------------


async def test_agency_pulls_its_own_inbox_and_no_other(nats_env: NatsEnv) -> None:
    await _route(nats_env, A, b"for-a")
    await _route(nats_env, B, b"for-b")
    a = await _agency(nats_env, A)

    own = await bind_pull(a.js, inbox_stream(A), inbox_consumer(A))
    msgs = await fetch(own, 10, 2.0)
    assert [m.data for m in msgs] == [b"for-a"]
    await msgs[0].ack()
    assert (await own.consumer_info()).num_pending == 0

    other = await bind_pull(a.js, inbox_stream(B), inbox_consumer(B))
    assert await fetch(other, 10, DENIED) == []
    await _all_fail(a.js.consumer_info(inbox_stream(B), inbox_consumer(B)))
    await _denied(
        a,
        f"CONSUMER.MSG.NEXT.{inbox_stream(B)}.{inbox_consumer(B)}",
        f"CONSUMER.INFO.{inbox_stream(B)}.{inbox_consumer(B)}",
    )

    admin = await nats_env.admin()
    info = await admin.js.consumer_info(inbox_stream(B), inbox_consumer(B))
    assert (info.num_pending, info.num_ack_pending, info.delivered.stream_seq) == (1, 0, 0)


async def test_agency_cannot_ack_or_nak_another_agencys_message(nats_env: NatsEnv) -> None:
    await _route(nats_env, B, b"for-b")
    b = await _agency(nats_env, B)
    [msg] = await fetch(await bind_pull(b.js, inbox_stream(B), inbox_consumer(B)), 1, 2.0)
    assert msg.reply.startswith(f"$JS.ACK.{inbox_stream(B)}.{inbox_consumer(B)}.")

    a = await _agency(nats_env, A)
    await a.nc.publish(msg.reply, b"+ACK")
    await a.nc.publish(msg.reply, b"+TERM")
    await _denied(a, f'publish to "{msg.reply}"')

    admin = await nats_env.admin()
    info = await admin.js.consumer_info(inbox_stream(B), inbox_consumer(B))
    assert info.num_ack_pending == 1  # still waiting for B's own acknowledgement
    await msg.ack_sync(timeout=2.0)  # and B may acknowledge it
    assert (await admin.js.stream_info(inbox_stream(B))).state.messages == 0


async def test_agency_cannot_read_delete_from_or_consume_another_agencys_inbox_stream(
    nats_env: NatsEnv,
) -> None:
    """Each recipient's inbox is a stream of its own; another agency gets nothing out of it,
    neither by its consumer nor by the stream's message API nor by a consumer of its own."""
    await _route(nats_env, B, b"for-b")
    await _route(nats_env, A, b"for-a")
    a = await _agency(nats_env, A)
    theirs = inbox_stream(B)
    ordered = a.js.subscribe(inbox_subject(B), stream=theirs, ordered_consumer=True)
    await _all_fail(
        a.js.stream_info(theirs),
        a.js.get_msg(theirs, 1),
        a.js.get_msg(theirs, subject=inbox_subject(B), direct=True),
        a.js.get_msg(theirs, seq=1, direct=True),
        a.js.delete_msg(theirs, 1),
        a.js.purge_stream(theirs),
        a.js.add_consumer(theirs, api.ConsumerConfig(filter_subject=inbox_subject(B))),
        a.js.add_consumer(theirs, api.ConsumerConfig(durable_name="tap")),
        ordered,
    )
    await _denied(
        a,
        f"STREAM.INFO.{theirs}",
        f"STREAM.MSG.GET.{theirs}",
        f"DIRECT.GET.{theirs}",
        f"STREAM.MSG.DELETE.{theirs}",
        f"STREAM.PURGE.{theirs}",
        f"CONSUMER.CREATE.{theirs}",
    )
    admin = await nats_env.admin()
    info = await admin.js.stream_info(theirs)
    assert (info.state.messages, info.state.first_seq) == (1, 1)  # untouched
    assert [c.name for c in await admin.js.consumers_info(theirs)] == [inbox_consumer(B)]
    consumer = await admin.js.consumer_info(theirs, inbox_consumer(B))
    assert (consumer.num_pending, consumer.delivered.stream_seq) == (1, 0)  # nobody took it
    # The positive twin: A takes what is in its own inbox stream.
    [msg] = await fetch(await bind_pull(a.js, inbox_stream(A), inbox_consumer(A)), 1, 2.0)
    assert msg.data == b"for-a"
    await msg.ack_sync(timeout=2.0)
    assert (await admin.js.stream_info(inbox_stream(A))).state.messages == 0


# -- status -----------------------------------------------------------------------------------


async def test_status_events_reach_their_sender_only(nats_env: NatsEnv) -> None:
    broker = await nats_env.connect(Identity.broker())
    await publish_durable(broker.js, status_subject(A, MSG_A), b"st-a", msg_id="st-a")
    await publish_durable(broker.js, status_subject(B, MSG_B), b"st-b", msg_id="st-b")
    a = await _agency(nats_env, A)

    own = await bind_pull(a.js, status_stream(A), status_consumer(A))
    msgs = await fetch(own, 10, 2.0)
    assert [m.data for m in msgs] == [b"st-a"]
    await msgs[0].ack()

    other = await bind_pull(a.js, status_stream(B), status_consumer(B))
    assert await fetch(other, 10, DENIED) == []
    await _all_fail(a.js.stream_info(status_stream(A)), a.js.stream_info(status_stream(B)))
    await _denied(a, f"CONSUMER.MSG.NEXT.{status_stream(B)}.{status_consumer(B)}")
    admin = await nats_env.admin()
    assert (await admin.js.consumer_info(status_stream(B), status_consumer(B))).num_pending == 1


# -- reply inboxes ----------------------------------------------------------------------------


async def test_no_agency_can_pre_empt_a_status_event_or_another_agencys_report(
    nats_env: NatsEnv,
) -> None:
    """Issue 6, finding 1, for the status stream: JetStream deduplicates per stream, whoever
    published, and every agency publishes reports. B publishes its own reports under the ids
    the broker's status event and A's report will carry; both are stored all the same."""
    event_id = f"{A}.{MSG_A}.withdrawn.{B}"  # the broker's id scheme (sender first)
    report_id = "report.0123456789abcdef0123456789abcdef01234567"
    b = await _agency(nats_env, B)
    for msg_id in (event_id, report_id):
        ack = await publish_durable(b.js, report_subject(B, MSG_A), b"garbage", msg_id=msg_id)
        assert (ack.stream, ack.duplicate) == (report_stream(B), False)

    broker = await nats_env.connect(Identity.broker())
    ack = await publish_durable(broker.js, status_subject(A, MSG_A), b"event", msg_id=event_id)
    assert (ack.stream, ack.duplicate) == (status_stream(A), False)
    a = await _agency(nats_env, A)
    ack = await publish_durable(a.js, report_subject(A, MSG_A), b"report", msg_id=report_id)
    assert (ack.stream, ack.duplicate) == (report_stream(A), False)
    # The positive twin: the same publisher's own id again is a duplicate (dedup still works).
    again = await publish_durable(a.js, report_subject(A, MSG_A), b"report", msg_id=report_id)
    assert again.duplicate

    # And no agency publishes into another's report stream or the broker's status stream.
    await b.nc.publish(report_subject(A, MSG_B), b"forged")
    await b.nc.publish(status_subject(A, MSG_B), b"forged")
    await _denied(
        b, f'publish to "{report_subject(A, MSG_B)}"', f'publish to "{status_subject(A, MSG_B)}"'
    )
    admin = await nats_env.admin()
    assert (await admin.js.stream_info(report_stream(A))).state.messages == 1
    assert (await admin.js.stream_info(status_stream(A))).state.messages == 1


async def test_agency_listens_only_below_its_own_reply_prefix(nats_env: NatsEnv) -> None:
    a = await _agency(nats_env, A)
    own = await a.nc.subscribe(f"_INBOX.agency.{A}.probe")
    forbidden = (
        "_INBOX.>",
        "_INBOX.*.>",
        "_INBOX.broker.>",
        "_INBOX.ops.>",
        "_INBOX.admin.>",
        f"_INBOX.agency.{B}.>",
        "$JS.ACK.>",
        ">",
    )
    seen: list[str] = []

    async def spy(msg: nats.aio.msg.Msg) -> None:
        seen.append(msg.subject)

    for subject in forbidden:
        await a.nc.subscribe(subject, cb=spy)
    await _denied(a, *(f'subscription to "{s}"' for s in forbidden))
    own_prefix = f"_INBOX.agency.{A}.".lower()
    assert not any(own_prefix in v.lower() for v in await a.permission_errors())

    # B works normally meanwhile; none of its replies or deliveries reach A.
    await _route(nats_env, B, b"for-b")
    b = await _agency(nats_env, B)
    [msg] = await fetch(await bind_pull(b.js, inbox_stream(B), inbox_consumer(B)), 1, 2.0)
    await msg.ack_sync(timeout=2.0)
    await a.nc.flush()
    assert seen == []
    await a.nc.publish(f"_INBOX.agency.{A}.probe", b"")  # agencies cannot publish there
    await own.unsubscribe()


async def test_foreign_reply_prefix_gets_no_replies(nats_env: NatsEnv) -> None:
    identity = Identity.for_agency(A)
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await connect(
        nats_env.url,
        nats_env.seed_file(identity),
        Identity.broker().inbox_prefix,  # pretends to be the broker for replies
        "impostor",
        first_connect_timeout=5.0,
        error_cb=on_error,
    )
    try:
        with pytest.raises(TransportError):
            await publish_durable(
                nc.jetstream(), submit_subject(A), b"x", msg_id="i", timeout=DENIED
            )
        await nc.flush()
        assert any('subscription to "_inbox.broker.' in str(e).lower() for e in errors), errors
    finally:
        await nc.close()


# -- stream and consumer management -----------------------------------------------------------


async def test_agency_cannot_manage_streams_or_consumers(nats_env: NatsEnv) -> None:
    a = await _agency(nats_env, A)
    steal = api.ConsumerConfig(durable_name="evil", filter_subject=inbox_subject(B))
    own = inbox_stream(A)
    await _all_fail(
        a.js.add_consumer(inbox_stream(B), steal),
        a.js.add_consumer(own, api.ConsumerConfig(filter_subject=inbox_subject(A))),
        a.js.delete_consumer(inbox_stream(B), inbox_consumer(B)),
        a.js.delete_consumer(inbox_stream(A), inbox_consumer(A)),
        a.js.add_stream(name="EVIL", subjects=["evil.>"]),
        a.js.update_stream(api.StreamConfig(name=own, subjects=["bridge.inbox.*"])),
        a.js.purge_stream(own),
        a.js.delete_stream(submit_stream(B)),
        a.js.delete_msg(own, 1),
        a.js.create_key_value(bucket="evil"),
        a.js.delete_key_value(kv_bucket(A)),
        a.js.account_info(),
    )
    await _denied(
        a,
        f"CONSUMER.DURABLE.CREATE.{inbox_stream(B)}.evil",
        f"CONSUMER.CREATE.{own}",
        f"CONSUMER.DELETE.{inbox_stream(B)}.{inbox_consumer(B)}",
        "STREAM.CREATE.EVIL",
        f"STREAM.UPDATE.{own}",
        f"STREAM.PURGE.{own}",
        f"STREAM.DELETE.{submit_stream(B)}",
        f"STREAM.MSG.DELETE.{own}",
        f"STREAM.DELETE.{kv_stream(A)}",
    )
    admin = await nats_env.admin()
    for x in nats_env.agencies:
        consumers = [c.name for c in await admin.js.consumers_info(inbox_stream(x))]
        assert consumers == [inbox_consumer(x)]
    names = {s.config.name for s in await admin.js.streams_info()}
    assert "EVIL" not in names
    assert {submit_stream(A), submit_stream(B), kv_stream(A)} <= names
    # The positive twin: its own consumer's info is readable.
    assert (await a.js.consumer_info(inbox_stream(A), inbox_consumer(A))).name == inbox_consumer(A)


# -- KV buckets -------------------------------------------------------------------------------


async def test_agency_uses_its_own_bucket_only(nats_env: NatsEnv) -> None:
    a = await _agency(nats_env, A)
    kv = await a.js.key_value(kv_bucket(A))
    rev = await kv.put("idem.k1", b"v1")
    assert (await kv.get("idem.k1")).value == b"v1"
    rev = await kv.update("idem.k1", b"v2", last=rev)
    await kv.create("idem.k2", b"short", msg_ttl=60)
    await kv.delete("idem.k2")
    assert (await kv.get("idem.k1")).revision == rev

    b = await _agency(nats_env, B)
    b_kv = await b.js.key_value(kv_bucket(B))
    await b_kv.put("k", b"b's")

    await _all_fail(
        a.js.key_value(kv_bucket(B)),
        a.js.get_msg(kv_stream(B), subject=f"$KV.{kv_bucket(B)}.k", direct=True),
        a.js.get_msg(kv_stream(B), 1),
    )
    await a.nc.publish(f"$KV.{kv_bucket(B)}.k", b"overwritten")
    await a.nc.publish(f"$KV.{kv_bucket(B)}.injected", b"x")
    await _denied(
        a,
        f"STREAM.INFO.{kv_stream(B)}",
        f"DIRECT.GET.{kv_stream(B)}",
        f"STREAM.MSG.GET.{kv_stream(B)}",
        f'publish to "$KV.{kv_bucket(B)}.k"',
    )
    assert (await b_kv.get("k")).value == b"b's"
    # Read as admin by key, not with `keys()`: its ordered consumer gives up with NoKeysError
    # when the server is slow to answer, which under load looked like an empty bucket.
    admin = await nats_env.admin()
    b_as_admin = await admin.js.key_value(kv_bucket(B))
    assert (await b_as_admin.get("k")).value == b"b's"
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await b_as_admin.get("injected")
    assert (await admin.js.stream_info(kv_stream(B))).state.messages == 1


# -- services ---------------------------------------------------------------------------------


async def test_broker_routes_but_cannot_submit_or_read_inboxes(nats_env: NatsEnv) -> None:
    a = await _agency(nats_env, A)
    await publish_durable(a.js, submit_subject(A), b"sub", msg_id="s-1")
    broker = await nats_env.connect(Identity.broker(), api_timeout=DENIED)

    sub = await bind_pull(broker.js, submit_stream(A), BROKER_CONSUMER)
    [msg] = await fetch(sub, 5, 2.0)
    await msg.ack_sync(timeout=2.0)
    await publish_durable(broker.js, inbox_subject(B), b"routed", msg_id="r-1")
    await publish_durable(broker.js, status_subject(A, MSG_A), b"delivered", msg_id="st-1")

    with pytest.raises(TransportError):
        await publish_durable(broker.js, submit_subject(A), b"x", msg_id="f", timeout=DENIED)
    inbox = await bind_pull(broker.js, inbox_stream(B), inbox_consumer(B))
    assert await fetch(inbox, 1, DENIED) == []
    await broker.nc.subscribe(f"_INBOX.agency.{A}.>")
    await _all_fail(
        broker.js.key_value(kv_bucket(A)),
        broker.js.add_consumer(submit_stream(A), api.ConsumerConfig(durable_name="second")),
        broker.js.purge_stream(submit_stream(A)),
    )
    await _denied(
        broker,
        f'publish to "{submit_subject(A)}"',
        f"CONSUMER.MSG.NEXT.{inbox_stream(B)}.{inbox_consumer(B)}",
        f'subscription to "_INBOX.agency.{A}.>"',
        f"STREAM.INFO.{kv_stream(A)}",
        f"CONSUMER.DURABLE.CREATE.{submit_stream(A)}.second",
        f"STREAM.PURGE.{submit_stream(A)}",
    )


async def test_ops_reads_status_and_nothing_else(nats_env: NatsEnv) -> None:
    broker = await nats_env.connect(Identity.broker())
    await publish_durable(broker.js, status_subject(A, MSG_A), b"delivered", msg_id="st-1")
    await publish_durable(broker.js, inbox_subject(A), b"content", msg_id="r-1")
    ops = await nats_env.connect(Identity.ops(), api_timeout=DENIED)

    info = await ops.js.stream_info(status_stream(A))
    assert info.state.messages == 1
    last = await ops.js.get_msg(status_stream(A), subject=status_subject(A, MSG_A), direct=True)
    assert last.data == b"delivered"
    first = await ops.js.get_msg(status_stream(A), seq=1, direct=True)
    assert first.data == b"delivered"
    # Following the stream: the next event at or after a sequence, by direct get.
    following = await ops.js.get_msg(
        status_stream(A), seq=1, subject=status_subjects_all(), next=True, direct=True
    )
    assert following.seq == 1
    with pytest.raises(nats.js.errors.NotFoundError):
        await ops.js.get_msg(
            status_stream(A), seq=2, subject=status_subjects_all(), next=True, direct=True
        )

    status_sub = await bind_pull(ops.js, status_stream(A), status_consumer(A))
    assert await fetch(status_sub, 1, DENIED) == []
    with pytest.raises(TransportError):
        await publish_durable(
            ops.js, status_subject(A, MSG_B), b"forged", msg_id="f", timeout=DENIED
        )
    await ops.nc.subscribe("bridge.status.>")
    await _all_fail(
        ops.js.stream_info(inbox_stream(A)),
        ops.js.get_msg(inbox_stream(A), 1),
        ops.js.add_consumer(status_stream(A), api.ConsumerConfig()),
        ops.js.purge_stream(status_stream(A)),
    )
    await _denied(
        ops,
        f"CONSUMER.MSG.NEXT.{status_stream(A)}.{status_consumer(A)}",
        f'publish to "{status_subject(A, MSG_B)}"',
        'subscription to "bridge.status.>"',
        f"STREAM.INFO.{inbox_stream(A)}",
        f"STREAM.MSG.GET.{inbox_stream(A)}",
        f"CONSUMER.CREATE.{status_stream(A)}",
        f"STREAM.PURGE.{status_stream(A)}",
    )
    admin = await nats_env.admin()
    assert (await admin.js.consumer_info(status_stream(A), status_consumer(A))).num_pending == 1
