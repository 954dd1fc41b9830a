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
from nats.js import api

from bridge.config import load_broker_config
from bridge.errors import ConfigError
from bridge.ids import new_message_id
from bridge.nats.identities import Identity
from bridge.nats.retention import check_retention
from bridge.nats.subjects import INBOX_STREAM, STATUS_STREAM, inbox_subject, status_subject
from bridge.nats.transport import publish_durable

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


def _broker_config(tmp_path: Path, retention: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(
        '[nats]\nurl = "nats://127.0.0.1:4222"\nseed_file = "x.nk"\n'
        '[directory]\nfile = "d"\nanchor = "a"\nserial_state = "s"\n'
        '[audit]\nkey_file = "k"\n'
        '[[routes]]\nfrom_role = "jobcenter"\nto_roles = ["counselling"]\ntypes = ["referral"]\n'
        + retention
    )
    return path


def _retention(**referral: int) -> str:
    limits = {"referral": {"inbox_ttl_seconds": 14 * DAY, "max_lifetime_seconds": 30 * DAY}}
    limits["referral"].update(referral)
    for kind in ("handover", "feedback", "receipt"):
        limits[kind] = {"inbox_ttl_seconds": 7 * DAY, "max_lifetime_seconds": 14 * DAY}
    return "".join(
        f"[retention.{kind}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
        for kind, values in limits.items()
    )


@pytest.mark.parametrize(
    ("retention", "fragment"),
    [
        (_retention(inbox_ttl_seconds=0), "inbox_ttl_seconds"),  # zero
        (_retention(max_lifetime_seconds=31 * DAY), "envelope maximum"),  # beyond the maximum
        (_retention(inbox_ttl_seconds=31 * DAY), "inbox_ttl_seconds"),  # waits past its life
        (_retention().split("[retention.receipt]")[0], "no limits for 'receipt'"),  # missing
    ],
)
def test_bad_retention_settings_are_refused_at_start_up(
    tmp_path: Path, retention: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_broker_config(_broker_config(tmp_path, retention))
    assert fragment in str(info.value)
    assert load_broker_config(_broker_config(tmp_path, _retention())).retention["referral"]
