"""Subject builders: no agency id can add a token or a wildcard to a subject or name."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bridge.errors import ProtocolError
from bridge.nats import subjects as S

ID = "3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b"
AGENCY_BUILDERS: dict[str, Callable[[str], object]] = {
    "submit": S.submit_subject,
    "submit_stream": S.submit_stream,
    "inbox_stream": S.inbox_stream,
    "inbox": S.inbox_subject,
    "status": lambda a: S.status_subject(a, ID),
    "status_filter": S.status_filter,
    "inbox_consumer": S.inbox_consumer,
    "status_consumer": S.status_consumer,
    "kv_bucket": S.kv_bucket,
    "kv_stream": S.kv_stream,
    "kv_key_prefix": S.kv_key_prefix,
    "kv_api": S.kv_bucket_api_subjects,
    "reply_prefix": S.agency_inbox_prefix,
}


@pytest.mark.parametrize("builder", sorted(AGENCY_BUILDERS))
@pytest.mark.parametrize("evil", ["a.b", "*", ">", "a b", "a\n", "", "A", "x" * 64])
def test_builders_refuse_ids_that_could_rewrite_routing(builder: str, evil: str) -> None:
    with pytest.raises(ProtocolError):
        AGENCY_BUILDERS[builder](evil)


def test_built_subjects() -> None:
    assert S.submit_subject("spdi-unna") == "bridge.submit.spdi-unna"
    assert S.submit_stream("spdi-unna") == "BRIDGE_SUBMIT_spdi-unna"
    assert S.inbox_subject("spdi-unna") == "bridge.inbox.spdi-unna"
    assert S.inbox_stream("spdi-unna") == "BRIDGE_INBOX_spdi-unna"
    assert S.status_subject("spdi-unna", ID) == f"bridge.status.spdi-unna.{ID}"
    assert S.kv_stream("spdi-unna") == "KV_adapter-spdi-unna"
    inbox = S.inbox_stream("spdi-unna")
    assert S.pull_consumer_api_subjects(inbox, S.inbox_consumer("spdi-unna")) == (
        "$JS.API.CONSUMER.MSG.NEXT.BRIDGE_INBOX_spdi-unna.inbox-spdi-unna",
        "$JS.API.CONSUMER.INFO.BRIDGE_INBOX_spdi-unna.inbox-spdi-unna",
        "$JS.ACK.BRIDGE_INBOX_spdi-unna.inbox-spdi-unna.>",
    )
    # The broker reads and deletes in the inboxes of the federation's agencies only.
    assert S.inbox_edit_subjects(["spdi-unna"]) == (
        "$JS.API.STREAM.MSG.GET.BRIDGE_INBOX_spdi-unna",
        "$JS.API.STREAM.MSG.DELETE.BRIDGE_INBOX_spdi-unna",
    )
    with pytest.raises(ProtocolError):
        S.status_subject("spdi-unna", "not-a-uuid")


@pytest.mark.parametrize("name", ["", "a.b", "a*", "a>", "a b"])
def test_api_subjects_refuse_bad_stream_or_consumer_names(name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        S.pull_consumer_api_subjects(name, "broker")
    with pytest.raises(ValueError, match="name"):
        S.pull_consumer_api_subjects(S.status_stream("spdi-unna"), name)


def test_service_reply_prefixes_are_fixed() -> None:
    assert S.role_inbox_prefix("broker") == "_INBOX.broker"
    with pytest.raises(ValueError, match="role"):
        S.role_inbox_prefix("agency.evil")
