"""`bridge retention check` against a real server, and retention settings refused at start-up.

Overdue messages are found by looking at the store as it will be later (the check's clock is
injectable), never by waiting: the store's own expiry is what makes the healthy case healthy.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from envelope_helpers import federation
from nats.js import api
from policy_helpers import POLICY, signed_policy

from bridge.crypto import DEFAULT_LIMITS
from bridge.errors import PolicyFileError, SignedPolicyError
from bridge.ids import new_message_id
from bridge.nats.identities import Identity
from bridge.nats.retention import check_retention
from bridge.nats.subjects import INBOX_STREAM, STATUS_STREAM, inbox_subject, status_subject
from bridge.nats.transport import publish_durable
from bridge.policy import PolicyHolder, PolicySerialState, parse_policy

if TYPE_CHECKING:
    from conftest import NatsEnv

DAY = 86400


async def test_a_healthy_store_lists_nothing(nats_env: NatsEnv) -> None:
    broker = await nats_env.connect(Identity.broker())
    mid = new_message_id()
    await publish_durable(broker.js, inbox_subject("spdi-unna"), b"x", msg_id=mid, ttl=3600)
    await publish_durable(
        broker.js, status_subject("jobcenter-unna", mid), b"{}", msg_id=f"s-{mid}"
    )
    admin = await nats_env.admin()
    kv = await admin.js.key_value("adapter-spdi-unna")
    await kv.put("probe", b"1")
    report = await check_retention(admin.js, now=time.time)
    assert report.healthy, report.lines()
    assert report.streams[INBOX_STREAM] == 1
    assert report.streams["KV_adapter-spdi-unna"] == 1
    seed = str(nats_env.seed_file(Identity.admin()))
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "bridge",
            "retention",
            "check",
            "--nats-url",
            nats_env.url,
            "--seed",
            seed,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "nothing older than its limit" in out


async def test_whatever_outlives_its_limit_is_named(nats_env: NatsEnv) -> None:
    broker = await nats_env.connect(Identity.broker())
    mid = new_message_id()
    await publish_durable(broker.js, inbox_subject("spdi-unna"), b"x", msg_id=mid, ttl=3600)
    await publish_durable(
        broker.js, status_subject("jobcenter-unna", mid), b"{}", msg_id=f"s-{mid}"
    )
    admin = await nats_env.admin()

    # Two hours on, the inbox copy (TTL one hour) would be overdue if the store had not removed
    # it; 31 days on, so would the status event (stream max_age 30 days).
    later = await check_retention(admin.js, now=lambda: time.time() + 2 * 3600)
    assert [(o.stream, o.kind, o.limit) for o in later.overdue] == [(INBOX_STREAM, "ttl", 3600)]
    assert later.overdue[0].subject == inbox_subject("spdi-unna")
    much_later = await check_retention(admin.js, now=lambda: time.time() + 31 * DAY)
    assert (STATUS_STREAM, "max_age") in {(o.stream, o.kind) for o in much_later.overdue}
    assert not much_later.healthy

    # A stream with no limit at all is reported too.
    await admin.js.add_stream(api.StreamConfig(name="FOREVER", subjects=["forever"]))
    report = await check_retention(admin.js, now=time.time)
    assert report.no_limit == ["FOREVER"]
    assert not report.healthy


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ('inbox_ttl = "7d"', "inbox_ttl = 0", "at least one second"),  # zero
        ('inbox_ttl = "7d"', 'inbox_ttl = "15d"', "longer than max_lifetime"),  # past its life
        ("[types.feedback]", "[types.feedback-gone]", "unknown message type"),  # missing
    ],
)
def test_bad_retention_settings_are_refused(old: str, new: str, fragment: str) -> None:
    """Retention limits live in the routing policy, which refuses them with the line."""
    assert old in POLICY
    with pytest.raises(PolicyFileError) as info:
        parse_policy(POLICY.replace(old, new, 1))
    assert fragment in str(info.value)
    assert parse_policy(POLICY).limits["referral"].inbox_ttl == 14 * DAY


def test_a_lifetime_beyond_the_envelope_maximum_is_refused_at_start_up(tmp_path: Path) -> None:
    fed = federation()
    path = tmp_path / "policy.bin"
    path.write_bytes(signed_policy(fed, POLICY.replace('"30d"', '"31d"'))[0])
    with pytest.raises(SignedPolicyError) as info:
        PolicyHolder(
            path,
            fed.anchor.public_record(),
            PolicySerialState(tmp_path / "serial"),
            federation=lambda: fed.directory.body.federation,
            max_lifetime=DEFAULT_LIMITS.max_lifetime,
        )
    assert info.value.reason == "policy.limits"
    assert "envelope maximum" in str(info.value)
