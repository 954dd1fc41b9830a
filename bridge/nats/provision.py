"""Create or update bridge's streams, consumers and KV buckets, idempotently, as the admin.

Run it after every change to the federation: what exists with the wanted settings is left
alone (its messages too), what is missing is created, and what differs is updated in place.
Nothing is ever deleted here: an agency that left the federation keeps its consumer and bucket
until an operator removes them, so no message disappears by accident. (The one exception: a
stream all agencies shared in earlier versions, removed once nothing in it would be lost, see
`_LEGACY`; or the consent registry, once its documents are copied, see
`_migrate_legacy_consent`.)

Limits are part of the topology, so the store enforces them: every stream is bounded in bytes
and message size; work-queue streams refuse new messages when full rather than drop
undelivered ones; the inboxes allow per-message TTLs and have an age backstop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import functools
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.api import RawStreamMsg
from nats.js.client import JetStreamContext

from ..errors import ConfigError, ProtocolError, TransportError
from ..ids import check_agency_id, check_consent_ref
from .identities import Identity, check_federation, check_leaf_agencies
from .subjects import (
    AUDIT_STREAM,
    BROKER_CONSUMER,
    CONSENT_KINDS,
    LEGACY_CONSENT_PARKED,
    PENDING_STREAM,
    REGISTRATION_CONSUMER,
    WITHDRAWAL_CONSUMER,
    attach_stream,
    attach_subjects,
    audit_subject,
    consent_stream,
    consent_subjects,
    inbox_consumer,
    inbox_stream,
    inbox_subject,
    js_api_prefix,
    kv_bucket,
    kv_stream,
    leaf_deliver_prefix,
    leaf_domain,
    outbox_stream,
    pending_subjects_all,
    report_filter,
    report_stream,
    status_consumer,
    status_filter,
    status_stream,
    submit_stream,
    submit_subject,
)
from .transport import connect, publish_durable, subject_taken

__all__ = [
    "ENVELOPE_MAX_BYTES",
    "PENDING_CLOSED_TTL",
    "PENDING_GRACE",
    "PENDING_NOTE_BYTES",
    "Action",
    "Change",
    "ProvisionReport",
    "ProvisionSettings",
    "provision",
    "provision_at",
    "provision_leaf",
    "provision_leaf_at",
]

ENVELOPE_MAX_BYTES = 1024 * 1024
"""The largest envelope bridge sends; streams allow this plus room for headers."""

PENDING_GRACE = 86400
"""How much longer than the longest inbox wait the broker's pending notes may be kept."""
PENDING_CLOSED_TTL = 600
"""How long the marker of a closed pending note stays (the copy was answered or reported)."""
PENDING_NOTE_BYTES = 1024
"""Room per pending note in `BRIDGE_PENDING` (subject, headers and a note of a few hundred
bytes), from which the stream is sized to hold a note for every copy all inboxes may hold."""

_T = TypeVar("_T")
_HEADER_ROOM = 16 * 1024
_NO_SUITABLE_PEERS = 10005  # JetStream's "no suitable peers for placement"
_DAY = 24 * 3600.0
_MiB = 1024 * 1024
_GiB = 1024 * _MiB


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvisionSettings:
    """Limits of the topology. Durations are in seconds, sizes in bytes.

    The age limits (`*_max_age`) are retention: a deployment takes them from its signed
    routing policy (`bridge.policy.provision_settings`); the defaults here are the demo
    policy's, for tests and benchmarks. None may be zero, which JetStream reads as "for ever".
    """

    duplicate_window: float = 1 * _DAY
    max_msg_size: int = ENVELOPE_MAX_BYTES + _HEADER_ROOM
    replicas: int = 1
    # Quotas: each sender's submit stream holds at most this many messages and bytes (its
    # adapter answers 429 beyond), each recipient's inbox stream at most this many messages and
    # bytes from all senders together (the broker holds what is over, in the sender's stream).
    # See docs/nats.md.
    submit_max_msgs: int = 100_000
    inbox_max_msgs_per_recipient: int = 250_000
    submit_max_bytes: int = 1 * _GiB
    submit_max_age: float = 30 * _DAY
    inbox_max_bytes_per_recipient: int = 1 * _GiB
    inbox_max_age: float = 30 * _DAY
    status_max_bytes: int = 256 * _MiB
    status_max_age: float = 30 * _DAY
    status_max_msg_size: int = 64 * 1024
    # Quota: each agency's reports for operations, in a stream of its own that drops its oldest
    # when full (reports are telemetry, kept for status_max_age like the status events).
    report_max_msgs_per_agency: int = 1_000_000
    report_max_bytes_per_agency: int = 256 * _MiB
    # The audit trail outlives what it records: long enough to answer a client's request for
    # information (GDPR Art. 15) about every message whose records still exist.
    audit_max_bytes: int = 1 * _GiB
    audit_max_age: float = 730 * _DAY
    # Consent records hold no personal data and must outlive every consent's validity and the
    # messages sent under it; bridge.consent caps a consent's validity well below this.
    # Quota: each issuer's record stream holds at most this many records and bytes (its adapter
    # answers 429 beyond); its withdrawal stream twice that, so that every record stored in
    # the last two age limits can be withdrawn (a withdrawal is smaller than its record).
    consent_max_msgs_per_issuer: int = 500_000
    consent_max_bytes_per_issuer: int = 256 * _MiB
    consent_max_age: float = 6 * 365 * _DAY
    consent_max_msg_size: int = 32 * 1024
    ack_wait: float = 30.0
    # Unlimited: a message waiting for an unreachable local system or a failing publish is
    # retried (with growing delays) until its retention limit removes it, never abandoned.
    # Poison messages do not loop: adapters terminate them and the broker rejects them.
    max_deliver: int = -1
    max_ack_pending: int = 256
    max_waiting: int = 64
    kv_max_bytes: int = 64 * _MiB
    kv_max_value_size: int = 256 * 1024
    kv_history: int = 1
    # Attachment chunks: each sender's stream; every chunk also carries its message's lifetime
    # as its TTL, and the sender purges what is receipted, refused or abandoned.
    attach_max_bytes: int = 8 * _GiB
    attach_max_age: float = 30 * _DAY
    # Agencies behind leaf nodes of their own: the hub's submit stream of each sources the
    # leaf's outbox (docs/nats.md, "Agencies behind leaf nodes").
    leaf_agencies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        def bad(message: str) -> ConfigError:
            return ConfigError(message, reason="provision.settings")

        if self.replicas not in (1, 3, 5):
            raise bad("replicas must be 1, 3 or 5")
        for name in _AGES:
            if not getattr(self, name) >= 1.0:
                raise ConfigError(
                    f"{name} must be at least one second (zero keeps for ever)",
                    reason="retention.unlimited",
                )
        ages = (self.submit_max_age, self.inbox_max_age, self.status_max_age, self.audit_max_age)
        if not 1.0 <= self.duplicate_window <= min(ages):
            raise bad("duplicate_window must be at least 1s and at most every stream's max age")
        if not 1.0 <= self.ack_wait <= 3600.0:
            raise bad("ack_wait must be between 1s and 1h")
        if self.max_deliver != -1 and not 1 <= self.max_deliver <= 100_000:
            raise bad("max_deliver must be -1 (unlimited) or between 1 and 100000")
        for name in ("max_ack_pending", "max_waiting"):
            if not 1 <= getattr(self, name) <= 100_000:
                raise bad(f"{name} must be between 1 and 100000")
        quotas = (
            "submit_max_msgs",
            "inbox_max_msgs_per_recipient",
            "consent_max_msgs_per_issuer",
            "report_max_msgs_per_agency",
        )
        for name in quotas:
            if not 1 <= getattr(self, name) <= 100_000_000:
                raise bad(f"{name} must be between 1 and 100000000")
        if not 1 <= self.kv_history <= 64:
            raise bad("kv_history must be between 1 and 64")
        if self.max_msg_size < ENVELOPE_MAX_BYTES:
            raise bad(f"max_msg_size must be at least {ENVELOPE_MAX_BYTES} (one envelope)")
        sizes = {
            "submit_max_bytes": (self.submit_max_bytes, self.max_msg_size),
            "inbox_max_bytes_per_recipient": (
                self.inbox_max_bytes_per_recipient,
                self.max_msg_size,
            ),
            "status_max_bytes": (self.status_max_bytes, self.status_max_msg_size),
            "report_max_bytes_per_agency": (
                self.report_max_bytes_per_agency,
                self.status_max_msg_size,
            ),
            "audit_max_bytes": (self.audit_max_bytes, self.status_max_msg_size),
            "consent_max_bytes_per_issuer": (
                self.consent_max_bytes_per_issuer,
                self.consent_max_msg_size,
            ),
            "kv_max_bytes": (self.kv_max_bytes, self.kv_max_value_size),
        }
        for name, (total, one) in sizes.items():
            if one < 1024 or total < one:
                raise bad(f"{name} must hold at least one message of at least 1 KiB")
        check_federation(self.leaf_agencies)


_AGES = (
    "submit_max_age",
    "attach_max_age",
    "inbox_max_age",
    "status_max_age",
    "audit_max_age",
    "consent_max_age",
)


class Action(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    REMOVED = "removed"  # only streams of earlier versions, once nothing in them is lost


_LEGACY_SUBMIT_STREAM = "BRIDGE_SUBMIT"
"""The one submit stream all agencies shared before each got its own; its subjects overlap."""
_LEGACY_INBOX_STREAM = "BRIDGE_INBOX"
"""The one inbox stream all recipients shared before each got its own; its subjects overlap."""
_LEGACY_CONSENT_STREAM = "BRIDGE_CONSENT"
"""The one consent registry all issuers shared before each got its own streams."""
_LEGACY_STATUS_STREAM = "BRIDGE_STATUS"
"""The one status stream all agencies shared before each got its own; its subjects overlap."""


@dataclass(frozen=True, slots=True)
class Change:
    """What provisioning did to one stream, consumer or bucket."""

    kind: str  # "stream", "consumer" or "kv"
    name: str
    action: Action
    fields: tuple[str, ...] = ()  # for UPDATED: the settings that differed

    def __str__(self) -> str:
        detail = f" ({', '.join(self.fields)})" if self.fields else ""
        return f"{self.action.value:<9} {self.kind:<8} {self.name}{detail}"


@dataclass(frozen=True, slots=True)
class ProvisionReport:
    changes: tuple[Change, ...]

    def by_action(self, action: Action) -> tuple[Change, ...]:
        return tuple(change for change in self.changes if change.action is action)

    @property
    def changed(self) -> bool:
        return any(change.action is not Action.UNCHANGED for change in self.changes)

    def __str__(self) -> str:
        return "\n".join(str(change) for change in self.changes)


# -- wanted configurations --------------------------------------------------------------------


def _submit_stream(s: ProvisionSettings, agency: str) -> api.StreamConfig:
    # One per agency: JetStream deduplicates by Nats-Msg-Id per stream, whoever published, so
    # in a stream shared by agencies one could make the stream drop another's publish by
    # choosing its id first. Here only the sender itself can publish under its ids (directly,
    # or from its leaf's outbox: the broker's consumer takes only `bridge.submit.<agency>`,
    # whatever else a leaf might deliver).
    sources = None
    if agency in s.leaf_agencies:
        sources = [
            api.StreamSource(
                name=outbox_stream(agency),
                filter_subject=submit_subject(agency),
                external=api.ExternalStream(
                    api=js_api_prefix(leaf_domain(agency)), deliver=leaf_deliver_prefix(agency)
                ),
            )
        ]
    return _outbox_like(s, agency, submit_stream(agency), sources)


def _outbox_like(
    s: ProvisionSettings, agency: str, name: str, sources: list[api.StreamSource] | None
) -> api.StreamConfig:
    """A sender's submissions, under its quota: at the hub, or in its leaf's outbox."""
    where = "in its leaf's outbox" if name == outbox_stream(agency) else "consumed by the broker"
    return api.StreamConfig(
        name=name,
        description=f"bridge: submissions of {agency}, {where}",
        subjects=[submit_subject(agency)],
        sources=sources,
        retention=api.RetentionPolicy.WORK_QUEUE,
        discard=api.DiscardPolicy.NEW,
        max_msgs=s.submit_max_msgs,
        max_bytes=s.submit_max_bytes,
        max_age=s.submit_max_age,
        max_msg_size=s.max_msg_size,
        duplicate_window=s.duplicate_window,
        storage=api.StorageType.FILE,
        num_replicas=s.replicas,
    )


def _attach_stream(s: ProvisionSettings, agency: str) -> api.StreamConfig:
    # One per sender, like submissions: only the sender writes and purges it, and a recipient's
    # direct gets name the sender's stream and its own token in the subject.
    return api.StreamConfig(
        name=attach_stream(agency),
        description=f"bridge: encrypted attachment chunks of {agency}, one copy per recipient",
        subjects=[attach_subjects(agency)],
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.NEW,
        max_msgs_per_subject=1,
        max_bytes=s.attach_max_bytes,
        max_age=s.attach_max_age,
        max_msg_size=s.max_msg_size,
        duplicate_window=min(s.duplicate_window, s.attach_max_age),
        allow_msg_ttl=True,
        allow_direct=True,
        storage=api.StorageType.FILE,
        num_replicas=s.replicas,
    )


def _inbox_stream(s: ProvisionSettings, agency: str) -> api.StreamConfig:
    # One per recipient: NATS bounds messages per subject but bytes only per stream, so each
    # recipient's quota is its own stream's limits. Whatever all senders together route to it
    # stops there; the broker holds the rest in the senders' streams.
    return api.StreamConfig(
        name=inbox_stream(agency),
        description=f"bridge: envelopes routed to {agency}, under its inbox quota",
        subjects=[inbox_subject(agency)],
        retention=api.RetentionPolicy.WORK_QUEUE,
        discard=api.DiscardPolicy.NEW,
        max_msgs=s.inbox_max_msgs_per_recipient,
        max_bytes=s.inbox_max_bytes_per_recipient,
        max_age=s.inbox_max_age,
        max_msg_size=s.max_msg_size,
        duplicate_window=s.duplicate_window,
        allow_msg_ttl=True,
        storage=api.StorageType.FILE,
        num_replicas=s.replicas,
    )


def _history_stream(
    s: ProvisionSettings, name: str, description: str, subject: str, max_bytes: int, max_msgs: int
) -> api.StreamConfig:
    # A per-agency history, kept for [retention] status: when full, its oldest go (discard old),
    # so whatever one agency's traffic puts there pushes out only that agency's own.
    return api.StreamConfig(
        name=name,
        description=description,
        subjects=[subject],
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        max_msgs=max_msgs,
        max_bytes=max_bytes,
        max_age=s.status_max_age,
        max_msg_size=s.status_max_msg_size,
        duplicate_window=s.duplicate_window,
        allow_direct=True,
        storage=api.StorageType.FILE,
        num_replicas=s.replicas,
    )


def _status_stream(s: ProvisionSettings, agency: str) -> api.StreamConfig:
    # Only the broker's events to the agency: a routed event per copy, a rejected one per
    # refused submission, never another agency's before it has read them.
    return _history_stream(
        s,
        status_stream(agency),
        f"bridge: the broker's status events to {agency}",
        status_filter(agency),
        max_bytes=s.status_max_bytes,
        max_msgs=-1,
    )


def _streams(s: ProvisionSettings, agencies: Sequence[str]) -> list[api.StreamConfig]:
    return [
        *(_submit_stream(s, agency) for agency in agencies),
        *(_attach_stream(s, agency) for agency in agencies),
        *(_inbox_stream(s, agency) for agency in agencies),
        *(_status_stream(s, agency) for agency in agencies),
        *(_report_stream(s, agency) for agency in agencies),
        api.StreamConfig(
            name=PENDING_STREAM,
            description="bridge: the broker's notes of undelivered inbox copies (expiry)",
            subjects=[pending_subjects_all()],
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.NEW,
            max_msgs_per_subject=1,  # a note's newer state replaces the older
            # Full, it refuses new notes and the broker holds every submission, so it has room
            # for a note for every copy all inboxes together may hold (their quotas); a closed
            # note leaves only a marker for `PENDING_CLOSED_TTL`.
            max_bytes=max(
                s.status_max_bytes,
                len(agencies) * s.inbox_max_msgs_per_recipient * PENDING_NOTE_BYTES,
            ),
            max_age=s.inbox_max_age + PENDING_GRACE,  # each note's own TTL ends it sooner
            max_msg_size=2 * PENDING_NOTE_BYTES,  # a note is a few hundred bytes
            duplicate_window=s.duplicate_window,
            allow_msg_ttl=True,
            allow_direct=True,
            storage=api.StorageType.FILE,
            num_replicas=s.replicas,
        ),
        api.StreamConfig(
            name=AUDIT_STREAM,
            description="bridge: hash-chained audit trail, written by the broker only",
            subjects=[audit_subject()],
            retention=api.RetentionPolicy.LIMITS,
            # Full: refuse new records (the broker then holds submissions) rather than drop
            # old ones before their age limit.
            discard=api.DiscardPolicy.NEW,
            max_bytes=s.audit_max_bytes,
            max_age=s.audit_max_age,
            max_msg_size=s.status_max_msg_size,
            duplicate_window=s.duplicate_window,
            allow_direct=True,
            deny_delete=True,
            deny_purge=True,
            storage=api.StorageType.FILE,
            num_replicas=s.replicas,
        ),
        *(_consent_stream(s, agency, kind) for agency in agencies for kind in CONSENT_KINDS),
    ]


def _report_stream(s: ProvisionSettings, agency: str) -> api.StreamConfig:
    # Its reports fill only its own quota: an agency reporting without end loses only its own
    # telemetry, and a report is never refused (reports are best effort; the steps they tell
    # of do not wait for them).
    return _history_stream(
        s,
        report_stream(agency),
        f"bridge: reports of {agency}'s adapter for operations",
        report_filter(agency),
        max_bytes=s.report_max_bytes_per_agency,
        max_msgs=s.report_max_msgs_per_agency,
    )


def _consent_stream(s: ProvisionSettings, issuer: str, kind: str) -> api.StreamConfig:
    # One pair per issuer: the registry's limits are each issuer's quota, so one agency
    # registering without end fills only its own, never another's nor its own withdrawals.
    room = 1 if kind == "record" else 2
    return api.StreamConfig(
        name=consent_stream(issuer, kind),
        description=f"bridge: consent {kind}s of {issuer}, one write-once subject each",
        subjects=[consent_subjects(issuer, kind)],
        retention=api.RetentionPolicy.LIMITS,
        # Write once, never replaced or removed: the server refuses a second message on a
        # subject (a replayed or altered record, a withdrawn withdrawal) and every delete.
        discard=api.DiscardPolicy.NEW,
        max_msgs_per_subject=1,
        discard_new_per_subject=True,
        deny_delete=True,
        deny_purge=True,
        max_msgs=room * s.consent_max_msgs_per_issuer,
        max_bytes=room * s.consent_max_bytes_per_issuer,
        max_age=s.consent_max_age,
        max_msg_size=s.consent_max_msg_size,
        duplicate_window=s.duplicate_window,
        allow_direct=True,
        storage=api.StorageType.FILE,
        num_replicas=s.replicas,
    )


_STREAM_FIELDS = (
    "subjects",
    "sources",
    "max_msgs",
    "retention",
    "storage",
    "discard",
    "max_bytes",
    "max_age",
    "max_msg_size",
    "duplicate_window",
    "num_replicas",
    "allow_msg_ttl",
    "allow_direct",
    "max_msgs_per_subject",
    "discard_new_per_subject",
    "deny_delete",
    "deny_purge",
    "max_msgs_per_subject",
    "description",
)


def _consumer(s: ProvisionSettings, name: str, filter_subject: str) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        name=name,
        durable_name=name,
        filter_subject=filter_subject,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=s.ack_wait,
        max_deliver=s.max_deliver,
        max_ack_pending=s.max_ack_pending,
        max_waiting=s.max_waiting,
    )


_CONSENT_CONSUMERS = {"record": REGISTRATION_CONSUMER, "withdrawal": WITHDRAWAL_CONSUMER}


def _consumers(
    s: ProvisionSettings, agencies: Sequence[str]
) -> list[tuple[str, api.ConsumerConfig]]:
    wanted = []
    for agency in agencies:
        for kind, name in _CONSENT_CONSUMERS.items():
            wanted.append(
                (consent_stream(agency, kind), _consumer(s, name, consent_subjects(agency, kind)))
            )
        wanted.append(
            (submit_stream(agency), _consumer(s, BROKER_CONSUMER, submit_subject(agency)))
        )
        wanted.append(
            (inbox_stream(agency), _consumer(s, inbox_consumer(agency), inbox_subject(agency)))
        )
        wanted.append(
            (status_stream(agency), _consumer(s, status_consumer(agency), status_filter(agency)))
        )
    return wanted


_CONSUMER_FIELDS = (
    "filter_subject",
    "deliver_policy",
    "ack_policy",
    "ack_wait",
    "max_deliver",
    "max_ack_pending",
    "max_waiting",
)


def _kv_config(s: ProvisionSettings, agency: str) -> api.KeyValueConfig:
    return api.KeyValueConfig(
        bucket=kv_bucket(agency),
        description=f"bridge: records of the adapter of {agency}",
        history=s.kv_history,
        max_bytes=s.kv_max_bytes,
        max_value_size=s.kv_max_value_size,
        storage=api.StorageType.FILE,
        replicas=s.replicas,
        direct=True,
    )


def _kv_stream_fields(s: ProvisionSettings) -> dict[str, object]:
    """The settings of a KV bucket's stream that provisioning keeps in line."""
    return {
        "max_bytes": s.kv_max_bytes,
        "max_msg_size": s.kv_max_value_size,
        "max_msgs_per_subject": s.kv_history,
        "num_replicas": s.replicas,
        "allow_direct": True,
        "allow_msg_ttl": True,  # nats-py creates every bucket with per-message TTLs allowed
    }


# -- applying them ----------------------------------------------------------------------------


def _differences(wanted: object, actual: object, fields: Sequence[str]) -> tuple[str, ...]:
    return tuple(
        field
        for field in fields
        if not _same(getattr(wanted, field, None), getattr(actual, field, None))
    )


def _same(wanted: object, actual: object) -> bool:
    if wanted is None:
        return True  # not something we set
    if isinstance(wanted, list) and wanted and isinstance(wanted[0], api.StreamSource):
        return _source_keys(wanted) == _source_keys(actual)
    if isinstance(wanted, float) and isinstance(actual, int | float):
        return abs(wanted - actual) < 1e-6
    if isinstance(wanted, bool) or actual is None:
        return bool(wanted) == bool(actual)
    return wanted == actual


def _source_keys(sources: object) -> list[tuple[object, ...]]:
    """What provisioning sets on a stream source; the server adds details of its own."""
    if not isinstance(sources, list):
        return []
    return [
        (
            src.name,
            src.filter_subject,
            src.external.api if src.external else None,
            src.external.deliver if src.external else None,
        )
        for src in sources
    ]


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
        raise TransportError(
            f"{what}: JetStream is not available (yet)", reason="provision.unavailable"
        ) from exc
    except nats.js.errors.APIError as exc:
        if exc.err_code == _NO_SUITABLE_PEERS:
            # A cluster that has just started may not know all its peers yet; if one is
            # really gone, the step keeps failing and the error says so after the wait.
            raise TransportError(
                f"{what}: not enough cluster nodes for the replicas (yet)",
                reason="provision.unavailable",
            ) from exc
        raise ConfigError(
            f"{what}: JetStream refused: {exc.description} (code {exc.err_code})",
            reason="provision.refused",
        ) from exc
    except (TimeoutError, nats.errors.TimeoutError) as exc:
        # Also what a cluster answers while it elects its meta leader: nothing at all.
        raise TransportError(
            f"{what}: JetStream did not answer in time", reason="provision.unavailable"
        ) from exc
    except (nats.errors.Error, OSError) as exc:
        raise TransportError(
            f"{what}: {type(exc).__name__} {exc}".rstrip(), reason="provision.transport"
        ) from exc


async def _ensure_stream(js: JetStreamContext, wanted: api.StreamConfig) -> Change:
    assert wanted.name is not None
    with _translated(f"stream {wanted.name}"):
        try:
            info = await js.stream_info(wanted.name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(wanted)
            return Change("stream", wanted.name, Action.CREATED)
        fields = _differences(wanted, info.config, _STREAM_FIELDS)
        if not fields:
            return Change("stream", wanted.name, Action.UNCHANGED)
        await js.update_stream(wanted)
        return Change("stream", wanted.name, Action.UPDATED, fields)


async def _ensure_consumer(js: JetStreamContext, stream: str, wanted: api.ConsumerConfig) -> Change:
    assert wanted.name is not None
    name = f"{stream}/{wanted.name}"
    with _translated(f"consumer {name}"):
        try:
            info = await js.consumer_info(stream, wanted.name)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(stream, wanted)
            return Change("consumer", name, Action.CREATED)
        fields = _differences(wanted, info.config, _CONSUMER_FIELDS)
        if info.config.deliver_policy == api.DeliverPolicy.BY_START_SEQUENCE:
            # Started after the copies of a migrated registry (`_migrate_legacy_consent`);
            # where a consumer starts cannot be changed, and need not be.
            fields = tuple(field for field in fields if field != "deliver_policy")
            wanted = wanted.evolve(
                deliver_policy=info.config.deliver_policy, opt_start_seq=info.config.opt_start_seq
            )
        if not fields:
            return Change("consumer", name, Action.UNCHANGED)
        await js.add_consumer(stream, wanted)  # create-or-update by name
        return Change("consumer", name, Action.UPDATED, fields)


async def _ensure_kv(js: JetStreamContext, s: ProvisionSettings, agency: str) -> Change:
    bucket = kv_bucket(agency)
    with _translated(f"KV bucket {bucket}"):
        try:
            info = await js.stream_info(kv_stream(agency))
        except nats.js.errors.NotFoundError:
            await js.create_key_value(_kv_config(s, agency))
            return Change("kv", bucket, Action.CREATED)
        wanted = _kv_stream_fields(s)
        fields = tuple(k for k, v in wanted.items() if not _same(v, getattr(info.config, k, None)))
        if not fields:
            return Change("kv", bucket, Action.UNCHANGED)
        await js.update_stream(info.config.evolve(**wanted))
        return Change("kv", bucket, Action.UPDATED, fields)


async def _stored(noun: str, js: JetStreamContext, name: str, info: api.StreamInfo) -> str | None:
    """What a work-queue stream still holds: every message in it is work not yet done."""
    return f"{info.state.messages} {noun}" if info.state.messages else None


async def _untaken(js: JetStreamContext, name: str, info: api.StreamInfo) -> str | None:
    """What a limits stream's consumers have not taken yet: such a stream is never empty."""
    unread = sorted(
        str(consumer.name)
        for consumer in await js.consumers_info(name)
        if (consumer.num_pending or 0) + (consumer.num_ack_pending or 0) > 0
    )
    return f"status events not yet taken by {', '.join(unread)}" if unread else None


_Left = Callable[[JetStreamContext, str, api.StreamInfo], Awaitable[str | None]]


async def _retire_legacy(
    js: JetStreamContext, name: str, left: _Left, advice: str, reason: str
) -> Change | None:
    """Remove a stream all agencies shared in earlier versions once nothing in it would be
    lost (`left` says what is); refuse while something is.

    Its subjects overlap the per-agency streams that replace it, so those cannot be created
    beside it. What it still holds must be taken by the earlier version first, never dropped.
    """
    with _translated(f"stream {name}"):
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return None
        if (what := await left(js, name, info)) is not None:
            raise ConfigError(
                f"stream {name} (shared by all agencies in earlier versions) still holds "
                f"{what}; {advice} first",
                reason=reason,
            )
        await js.delete_stream(name)
        return Change("stream", name, Action.REMOVED)


_LEGACY: tuple[tuple[str, _Left, str, str], ...] = (
    (
        _LEGACY_SUBMIT_STREAM,
        functools.partial(_stored, "submissions"),
        "let the earlier broker route them",
        "provision.legacy_submit",
    ),
    (
        _LEGACY_INBOX_STREAM,
        functools.partial(_stored, "routed messages"),
        "stop the brokers and let the agencies' adapters of the earlier version take them",
        "provision.legacy_inbox",
    ),
    # The broker's events to every agency (and, before that, the reports): the history ops
    # read from it goes with it; ops starts afresh from the new streams.
    (
        _LEGACY_STATUS_STREAM,
        _untaken,
        "run those adapters of the earlier version until they have taken them",
        "provision.legacy_status",
    ),
)


async def _migrate_legacy_consent(js: JetStreamContext, s: ProvisionSettings) -> list[Change]:
    """Copy the consent registry of earlier versions (one stream for every issuer) into each
    issuer's streams, then remove it; refuse while its broker has not processed all of it.

    Its records and withdrawals are evidence and never dropped: each is copied byte for byte
    (its signature still holds), once (each subject takes one message; a copy already there
    must be the very same bytes). The old stream's subjects overlap the new streams', so it is
    first moved out of the way, onto a subject nobody publishes to; a run cut short resumes
    from there. The earlier broker has audited and applied every document already, so the new
    consumers start after the copies (from the beginning if something else was stored among
    them meanwhile: then the audit trail records the copies again rather than miss a new one).
    """
    name = _LEGACY_CONSENT_STREAM
    with _translated(f"stream {name}"):
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return []
        if info.config.subjects != [LEGACY_CONSENT_PARKED]:
            await _check_legacy_consent_processed(js, name)
            await js.update_stream(info.config.evolve(subjects=[LEGACY_CONSENT_PARKED]))
        changes: list[Change] = []
        copies: collections.Counter[tuple[str, str]] = collections.Counter()
        for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1):
            try:
                msg = await js.get_msg(name, seq=seq)
            except nats.js.errors.NotFoundError:
                continue  # aged out
            owner = _legacy_consent_owner(msg.subject or "")
            if owner not in copies:
                changes.append(await _ensure_stream(js, _consent_stream(s, *owner)))
            await _copy_consent_document(js, consent_stream(*owner), msg.subject or "", msg, seq)
            copies[owner] += 1
        for (issuer, kind), count in sorted(copies.items()):
            change = await _start_after_copies(js, s, issuer, kind, count)
            if change is not None:
                changes.append(change)
        await js.delete_stream(name)
        changes.append(Change("stream", name, Action.REMOVED))
        return changes


def _legacy_refusal(detail: str) -> ConfigError:
    return ConfigError(
        f"stream {_LEGACY_CONSENT_STREAM} (the consent registry of earlier versions): {detail}",
        reason="provision.legacy_consent",
    )


async def _check_legacy_consent_processed(js: JetStreamContext, name: str) -> None:
    for consumer in (REGISTRATION_CONSUMER, WITHDRAWAL_CONSUMER):
        try:
            info = await js.consumer_info(name, consumer)
        except nats.js.errors.NotFoundError:
            raise _legacy_refusal(
                f"its consumer {consumer} is missing, so nothing tells whether the earlier "
                "broker applied every document; recreate it and let that broker run"
            ) from None
        waiting = info.num_pending + info.num_ack_pending
        if waiting:
            raise _legacy_refusal(
                f"{waiting} documents the earlier broker has not processed yet ({consumer}); "
                "let it run until they are, then provision again"
            )


def _legacy_consent_owner(subject: str) -> tuple[str, str]:
    """(issuer, kind) of a document in the old registry, from its subject."""
    tokens = subject.split(".")
    if len(tokens) == 5 and tokens[:2] == ["bridge", "consent"] and tokens[4] in CONSENT_KINDS:
        with contextlib.suppress(ValueError, ProtocolError):
            check_consent_ref(tokens[3])
            return check_agency_id(tokens[2]), tokens[4]
    raise _legacy_refusal("it holds a message that is no consent document; remove it by hand")


async def _copy_consent_document(
    js: JetStreamContext, stream: str, subject: str, msg: RawStreamMsg, seq: int
) -> None:
    data = bytes(msg.data or b"")
    try:
        await publish_durable(
            js, subject, data, msg_id=f"migrated.{seq}", expected_stream=stream, timeout=10.0
        )
    except TransportError as exc:
        if subject_taken(exc):
            stored = await js.get_msg(stream, subject=subject)
            if bytes(stored.data or b"") == data:
                return  # copied by an earlier run
            raise _legacy_refusal(
                f"its message {seq} differs from what {stream} holds on the same subject"
            ) from exc
        if exc.reason == "transport.stream_full":
            raise _legacy_refusal(
                f"{stream} is too small for its documents; raise consent_max_msgs_per_issuer "
                "and consent_max_bytes_per_issuer"
            ) from exc
        raise


async def _start_after_copies(
    js: JetStreamContext, s: ProvisionSettings, issuer: str, kind: str, copies: int
) -> Change | None:
    stream = consent_stream(issuer, kind)
    wanted = _consumer(s, _CONSENT_CONSUMERS[kind], consent_subjects(issuer, kind))
    assert wanted.name is not None
    try:
        await js.consumer_info(stream, wanted.name)
        return None  # created by an earlier run
    except nats.js.errors.NotFoundError:
        pass
    info = await js.stream_info(stream)
    if info.state.messages == copies:
        wanted = wanted.evolve(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=info.state.last_seq + 1,
        )
    await js.add_consumer(stream, wanted)
    return Change("consumer", f"{stream}/{wanted.name}", Action.CREATED)


async def provision(
    js: JetStreamContext,
    agencies: Sequence[str],
    settings: ProvisionSettings | None = None,
    *,
    unavailable_wait: float = 10.0,
) -> ProvisionReport:
    """Bring streams, consumers and buckets in line with `settings` for these agencies.

    Needs the admin identity. Agency ids are checked before the server is asked anything.
    While JetStream answers "unavailable" or not at all (just after a start or a config
    reload, or while a cluster elects its leaders), each step is retried for up to
    `unavailable_wait` seconds; every step looks before it creates, so a retry is safe.
    """
    federation = check_federation(agencies)
    s = settings or ProvisionSettings()
    check_leaf_agencies(s.leaf_agencies, federation)
    retired = [
        change
        for legacy in _LEGACY
        if (
            change := await _patiently(
                functools.partial(_retire_legacy, js, *legacy), unavailable_wait
            )
        )
        is not None
    ]
    migrated = await _patiently(functools.partial(_migrate_legacy_consent, js, s), unavailable_wait)
    steps: list[Callable[[], Awaitable[Change]]] = [
        functools.partial(_ensure_stream, js, stream) for stream in _streams(s, federation)
    ]
    steps += [
        functools.partial(_ensure_consumer, js, stream, consumer)
        for stream, consumer in _consumers(s, federation)
    ]
    steps += [functools.partial(_ensure_kv, js, s, agency) for agency in federation]
    changes = [await _patiently(step, unavailable_wait) for step in steps]
    return ProvisionReport(tuple(retired + migrated + changes))


async def provision_leaf(
    js: JetStreamContext,
    agency: str,
    settings: ProvisionSettings | None = None,
    *,
    unavailable_wait: float = 10.0,
) -> ProvisionReport:
    """What an agency's leaf node holds: its outbox and the adapter's bucket (as the leaf's
    admin, on the leaf). The outbox has the sender's quota, like its submit stream at the hub:
    a full outbox refuses (the adapter answers 429) rather than drop anything."""
    s = settings or ProvisionSettings()
    steps: list[Callable[[], Awaitable[Change]]] = [
        functools.partial(_ensure_stream, js, _outbox_like(s, agency, outbox_stream(agency), None)),
        functools.partial(_ensure_kv, js, s, agency),
    ]
    return ProvisionReport(tuple([await _patiently(step, unavailable_wait) for step in steps]))


async def provision_leaf_at(
    url: str,
    admin_seed: Path,
    agency: str,
    settings: ProvisionSettings | None = None,
    *,
    api_timeout: float = 10.0,
) -> ProvisionReport:
    """Connect to an agency's leaf node as its admin, provision it, and disconnect."""
    admin = Identity.admin()
    nc = await connect(url, admin_seed, admin.inbox_prefix, "bridge-provision-leaf")
    try:
        return await provision_leaf(nc.jetstream(timeout=api_timeout), agency, settings)
    finally:
        await nc.close()


async def _patiently(step: Callable[[], Awaitable[_T]], wait: float) -> _T:
    deadline = time.monotonic() + wait
    pause = 0.05
    while True:
        try:
            return await step()
        except TransportError as exc:
            if exc.reason != "provision.unavailable" or time.monotonic() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(1.0, pause * 2)


async def provision_at(
    url: str | Sequence[str],
    admin_seed: Path,
    agencies: Sequence[str],
    settings: ProvisionSettings | None = None,
    *,
    api_timeout: float = 10.0,
    tls: ssl.SSLContext | None = None,
) -> ProvisionReport:
    """Connect as the admin identity, provision, and disconnect (`tls` for `tls://` URLs)."""
    federation = check_federation(agencies)
    admin = Identity.admin()
    nc = await connect(url, admin_seed, admin.inbox_prefix, "bridge-provision", tls=tls)
    try:
        return await provision(nc.jetstream(timeout=api_timeout), federation, settings)
    finally:
        await nc.close()
