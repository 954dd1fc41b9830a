"""Every NATS subject, stream, consumer, bucket and header name bridge uses, built in one place.

Agency ids are validated before they are put into any name, so an id with `.`, `*`, `>` or
whitespace can never rewrite routing. No other module formats a subject by hand.

Topology (one JetStream account, created by `bridge.nats.provision`):

- one stream `BRIDGE_SUBMIT_<sender>` per agency, subject `bridge.submit.<sender>`: what that
  agency's adapter submits; work queue, consumed by the broker's durable consumer `broker` on
  each (several brokers share them). JetStream deduplicates by `Nats-Msg-Id` per stream,
  whoever published, so a stream shared by several agencies would let one of them pre-empt
  another's id; with one stream per sender, only the sender itself can.
- one stream `BRIDGE_INBOX_<recipient>` per agency, subject `bridge.inbox.<recipient>`: the
  envelopes routed to that agency; work queue with per-message TTL (the retention limit of the
  message type); one durable consumer `inbox-<recipient>`. Only the broker publishes there. One
  stream per recipient because NATS bounds bytes per stream, not per subject: each stream's
  `max_msgs` and `max_bytes` are that recipient's quota, so nobody can fill its inbox beyond
  them. (Earlier versions kept every inbox in one stream `BRIDGE_INBOX`; provisioning retires
  it once it is empty.)
- one stream `BRIDGE_STATUS_<agency>` per agency, subjects `bridge.status.<agency>.<message-id>`:
  the status events the broker reports to that agency (about its messages, or as a recipient:
  `expiring`, `withdrawn`); its durable consumer `status-<agency>`. Only the broker publishes
  there. One stream per agency, each with its own size limit (oldest dropped first), so that
  what one agency's traffic makes the broker report never pushes out another agency's events
  before it has read them. (Earlier versions kept every agency's events in one stream
  `BRIDGE_STATUS`; provisioning retires it once every agency has taken its events.)
- one stream `BRIDGE_REPORT_<agency>` per agency, subjects `bridge.report.<agency>.<message-id>`:
  what that agency's adapter reports about a message for operations (accepted, delivered,
  receipted, redelivered); the reporting agency is the subject's token, which NATS permissions
  make unforgeable. Ops reads them; no agency consumer sees reports. One stream per agency, each
  its quota, dropping its oldest when full: an agency reporting without end evicts only its own
  reports, never another agency's nor a status event a sender has not yet taken. (Earlier
  versions kept reports in `BRIDGE_STATUS`.)
- core subjects `bridge.heartbeat.<component>.<name>`: liveness beats of adapters and brokers,
  not stored; ops listens.
- KV bucket `adapter-<agency>`: the adapter's own records (idempotency keys, message timelines).
- stream `BRIDGE_PENDING`, subjects `bridge.pending.<sender>.<message-id>.<recipient>`: the
  broker's note of each routed, not yet delivered inbox copy (one per subject), from which it
  warns before expiry and reports `expired`; only the broker reads and writes it.
- stream `BRIDGE_AUDIT`, subject `bridge.audit`: the hash-chained audit trail; only the broker
  (the single audit writer) may publish, nobody may delete or purge (docs/audit.md).
- one stream `BRIDGE_ATTACH_<sender>` per agency, subjects
  `bridge.attach.<sender>.<recipient>.<message-id>.<attachment>.<chunk>`: the encrypted chunks of
  `sender`'s attachments, one copy per recipient, one chunk per subject, each with the
  message's lifetime as its TTL. Only the sender writes (and purges) its stream; a recipient
  reads single chunks by subject through the direct-get API, only below its own
  `<recipient>` token; nobody consumes it, and the broker never touches it.
- behind a NATS leaf node (docs/nats.md, "Agencies behind leaf nodes"): the leaf's own
  JetStream (domain `leaf-<agency>`) keeps the adapter's submissions in `BRIDGE_OUTBOX_<agency>`
  (subject `bridge.submit.<agency>`), and the hub's `BRIDGE_SUBMIT_<agency>` sources it,
  delivered below `bridge.leaf.<agency>.`.
- the consent registry, two streams per issuing agency: `BRIDGE_CONSENT_<issuer>`, subjects
  `bridge.consent.<issuer>.<consent-id>.record`, and `BRIDGE_WITHDRAWAL_<issuer>`, subjects
  `....withdrawal`. Each subject holds at most one message, which can be neither replaced nor
  deleted; an agency may write only below its own `<issuer>` token. Each issuer's streams are
  its quota: one agency registering without end fills only its own, and its withdrawals have
  room of their own, so a full record stream never stops a withdrawal. The broker reads them
  and consumes each with its durable consumers `broker-registrations` and `broker-withdrawals`.
  (Earlier versions kept the whole registry in one stream `BRIDGE_CONSENT`; provisioning copies
  it into these and then removes it.)

Each NATS identity uses its own reply-inbox prefix (`_INBOX.<role>...`), so that it may subscribe
only to its own replies and never see another identity's pulled messages or acks.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..ids import check_agency_id, check_consent_ref, check_message_id

__all__ = [
    "ATTACH_STREAM_PREFIX",
    "AUDIT_STREAM",
    "BROKER_CONSUMER",
    "CONSENT_KINDS",
    "CONSENT_STREAM_PREFIX",
    "HDR_CONSENT",
    "HDR_DISPOSITION",
    "HDR_EXPECTED_LAST_SEQ",
    "HDR_MSG_ID",
    "HDR_NOTICE",
    "HDR_SENDER",
    "HDR_TTL",
    "HUB_DOMAIN",
    "INBOX_STREAM_PREFIX",
    "LEGACY_CONSENT_PARKED",
    "OUTBOX_STREAM_PREFIX",
    "PENDING_STREAM",
    "REGISTRATION_CONSUMER",
    "REPORT_STREAM_PREFIX",
    "STATUS_STREAM_PREFIX",
    "SUBMIT_STREAM_PREFIX",
    "WITHDRAWAL_CONSUMER",
    "WITHDRAWAL_STREAM_PREFIX",
    "agency_consent_publish_subjects",
    "agency_inbox_prefix",
    "attach_filter",
    "attach_filter_all",
    "attach_open_filter",
    "attach_open_subject",
    "attach_read_subjects",
    "attach_stream",
    "attach_subject",
    "attach_subjects",
    "attach_write_subjects",
    "audit_read_subjects",
    "audit_stream_admin_subjects",
    "audit_subject",
    "audit_write_subjects",
    "consent_read_subjects",
    "consent_stream",
    "consent_streams",
    "consent_subject",
    "consent_subjects",
    "disclosure_subject",
    "disclosure_subjects_all",
    "heartbeat_filter",
    "heartbeat_subject",
    "heartbeat_subjects_all",
    "in_domain",
    "inbox_consumer",
    "inbox_edit_subjects",
    "inbox_stream",
    "inbox_subject",
    "inbox_subjects_all",
    "js_api_prefix",
    "kv_bucket",
    "kv_bucket_api_subjects",
    "kv_key_prefix",
    "kv_stream",
    "leaf_deliver_prefix",
    "leaf_domain",
    "leaf_source_subjects",
    "ops_read_api_subjects",
    "outbox_stream",
    "pending_subject",
    "pending_subjects_all",
    "pending_write_subjects",
    "pull_consumer_api_subjects",
    "report_filter",
    "report_stream",
    "report_subject",
    "report_subjects_all",
    "role_inbox_prefix",
    "status_consumer",
    "status_filter",
    "status_stream",
    "status_stream_read_subjects",
    "status_subject",
    "status_subjects_all",
    "stream_settings_subjects",
    "submit_stream",
    "submit_subject",
]

SUBMIT_STREAM_PREFIX = "BRIDGE_SUBMIT_"
ATTACH_STREAM_PREFIX = "BRIDGE_ATTACH_"
INBOX_STREAM_PREFIX = "BRIDGE_INBOX_"
OUTBOX_STREAM_PREFIX = "BRIDGE_OUTBOX_"
REPORT_STREAM_PREFIX = "BRIDGE_REPORT_"
HUB_DOMAIN = "hub"
"""The JetStream domain of the hub (the embedded server with leaf nodes, or the cluster): its
API answers on `$JS.hub.API` too, which is how clients behind a leaf node reach it."""
STATUS_STREAM_PREFIX = "BRIDGE_STATUS_"
AUDIT_STREAM = "BRIDGE_AUDIT"
PENDING_STREAM = "BRIDGE_PENDING"
BROKER_CONSUMER = "broker"
CONSENT_STREAM_PREFIX = "BRIDGE_CONSENT_"
WITHDRAWAL_STREAM_PREFIX = "BRIDGE_WITHDRAWAL_"
LEGACY_CONSENT_PARKED = "bridge.legacy.consent"
"""Where provisioning moves the registry of earlier versions while it copies it (no publisher)."""
WITHDRAWAL_CONSUMER = "broker-withdrawals"
REGISTRATION_CONSUMER = "broker-registrations"  # consent records, for the audit trail
CONSENT_KINDS = ("record", "withdrawal")

HDR_MSG_ID = "Nats-Msg-Id"
HDR_TTL = "Nats-TTL"
HDR_EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"
HDR_NOTICE = "Bridge-Notice"
"""On a submission that is a signed notice for the audit trail, not an envelope (its kind)."""
HDR_DISPOSITION = "Bridge-Disposition"
"""On a receipt's submission: `delivered`, or `rejected <reason code>` (for the audit trail)."""
# On the broker's inbox copies, so a withdrawal can find them without opening envelopes.
# Both are metadata the signed header already carries: a random consent id, an agency id.
HDR_CONSENT = "Bridge-Consent"
HDR_SENDER = "Bridge-Sender"

_PREFIX = "bridge"


def submit_subject(sender: str) -> str:
    return f"{_PREFIX}.submit.{check_agency_id(sender)}"


def submit_stream(sender: str) -> str:
    """The stream of `sender`'s submissions; no other agency can publish into it."""
    return f"{SUBMIT_STREAM_PREFIX}{check_agency_id(sender)}"


def attach_stream(sender: str) -> str:
    """The stream of `sender`'s attachment chunks; only `sender` writes to it."""
    return f"{ATTACH_STREAM_PREFIX}{check_agency_id(sender)}"


def attach_subjects(sender: str) -> str:
    return f"{_PREFIX}.attach.{check_agency_id(sender)}.>"


def attach_subject(sender: str, recipient: str, message_id: str, index: int, chunk: int) -> str:
    """Chunk `chunk` of attachment `index` of `message_id`, in `recipient`'s copy."""
    if not (0 <= index < 2**32 and 0 <= chunk < 2**32):
        raise ValueError("attachment or chunk index out of range")
    return (
        f"{_PREFIX}.attach.{check_agency_id(sender)}.{check_agency_id(recipient)}"
        f".{check_message_id(message_id)}.{index}.{chunk}"
    )


def attach_open_subject(sender: str, message_id: str) -> str:
    """The marker of an upload in progress (`_open` is no agency id, so no recipient's copy)."""
    return f"{_PREFIX}.attach.{check_agency_id(sender)}._open.{check_message_id(message_id)}"


def attach_open_filter(sender: str) -> str:
    return f"{_PREFIX}.attach.{check_agency_id(sender)}._open.*"


def attach_filter(sender: str, message_id: str, recipient: str | None = None) -> str:
    """Every chunk of one message: of one recipient's copy, or (None) of every copy."""
    who = "*" if recipient is None else check_agency_id(recipient)
    return f"{_PREFIX}.attach.{check_agency_id(sender)}.{who}.{check_message_id(message_id)}.>"


def outbox_stream(sender: str) -> str:
    """The stream on an agency's own leaf node that holds its submissions until the hub has them."""
    return f"{OUTBOX_STREAM_PREFIX}{check_agency_id(sender)}"


def leaf_domain(agency: str) -> str:
    """The JetStream domain of an agency's leaf node."""
    return f"leaf-{check_agency_id(agency)}"


def leaf_deliver_prefix(agency: str) -> str:
    """Where a leaf delivers its outbox to the hub's submit stream (the deliver prefix)."""
    return f"{_PREFIX}.leaf.{check_agency_id(agency)}"


def inbox_subject(recipient: str) -> str:
    return f"{_PREFIX}.inbox.{check_agency_id(recipient)}"


def inbox_stream(recipient: str) -> str:
    """The stream of what is routed to `recipient`: its inbox, under its own quota."""
    return f"{INBOX_STREAM_PREFIX}{check_agency_id(recipient)}"


def inbox_subjects_all() -> str:
    return f"{_PREFIX}.inbox.*"


def status_subject(sender: str, message_id: str) -> str:
    return f"{_PREFIX}.status.{check_agency_id(sender)}.{check_message_id(message_id)}"


def status_filter(sender: str) -> str:
    return f"{_PREFIX}.status.{check_agency_id(sender)}.*"


def status_subjects_all() -> str:
    return f"{_PREFIX}.status.*.*"


def pending_subject(sender: str, message_id: str, recipient: str) -> str:
    return (
        f"{_PREFIX}.pending.{check_agency_id(sender)}.{check_message_id(message_id)}"
        f".{check_agency_id(recipient)}"
    )


def pending_subjects_all() -> str:
    return f"{_PREFIX}.pending.*.*.*"


def disclosure_subject(agency: str) -> str:
    """Where an agency asks the broker about its consents (request/reply, core NATS)."""
    return f"{_PREFIX}.disclosure.{check_agency_id(agency)}"


def disclosure_subjects_all() -> str:
    return f"{_PREFIX}.disclosure.*"


def audit_subject() -> str:
    return f"{_PREFIX}.audit"


def consent_subject(issuer: str, consent_id: str, kind: str) -> str:
    """Where `issuer` keeps a consent record (`record`) or its withdrawal (`withdrawal`)."""
    if kind not in CONSENT_KINDS:
        raise ValueError(f"unknown consent document kind {kind!r}")
    return f"{_PREFIX}.consent.{check_agency_id(issuer)}.{check_consent_ref(consent_id)}.{kind}"


def consent_stream(issuer: str, kind: str) -> str:
    """The stream of `issuer`'s consent records (`record`) or of its withdrawals (`withdrawal`)."""
    if kind not in CONSENT_KINDS:
        raise ValueError(f"unknown consent document kind {kind!r}")
    prefix = CONSENT_STREAM_PREFIX if kind == "record" else WITHDRAWAL_STREAM_PREFIX
    return f"{prefix}{check_agency_id(issuer)}"


def consent_streams(issuer: str) -> tuple[str, ...]:
    """Both registry streams of one issuer."""
    return tuple(consent_stream(issuer, kind) for kind in CONSENT_KINDS)


def consent_subjects(issuer: str, kind: str) -> str:
    """Every record (or withdrawal) of one issuer: its stream's subjects."""
    if kind not in CONSENT_KINDS:
        raise ValueError(f"unknown consent document kind {kind!r}")
    return f"{_PREFIX}.consent.{check_agency_id(issuer)}.*.{kind}"


def report_subject(agency: str, message_id: str) -> str:
    """Where `agency`'s adapter reports a step of `message_id` for operations."""
    return f"{_PREFIX}.report.{check_agency_id(agency)}.{check_message_id(message_id)}"


def report_filter(agency: str) -> str:
    """Every report of one agency (its publish permission)."""
    return f"{_PREFIX}.report.{check_agency_id(agency)}.*"


def status_stream(agency: str) -> str:
    """The stream of the broker's status events to `agency`; only the broker publishes there."""
    return f"{STATUS_STREAM_PREFIX}{check_agency_id(agency)}"


def report_stream(agency: str) -> str:
    """The stream of `agency`'s reports for operations; only `agency` writes to it."""
    return f"{REPORT_STREAM_PREFIX}{check_agency_id(agency)}"


def report_subjects_all() -> str:
    return f"{_PREFIX}.report.*.*"


_HEARTBEAT_COMPONENTS = ("adapter", "broker")


def heartbeat_subject(component: str, name: str) -> str:
    """The liveness subject of one adapter (named by its agency) or broker (by instance)."""
    if component not in _HEARTBEAT_COMPONENTS:
        raise ValueError(f"unknown heartbeat component {component!r}")
    return f"{_PREFIX}.heartbeat.{component}.{check_agency_id(name)}"


def heartbeat_filter(component: str) -> str:
    """Every heartbeat of one kind of component (the broker's publish permission)."""
    if component not in _HEARTBEAT_COMPONENTS:
        raise ValueError(f"unknown heartbeat component {component!r}")
    return f"{_PREFIX}.heartbeat.{component}.*"


def heartbeat_subjects_all() -> str:
    return f"{_PREFIX}.heartbeat.*.*"


def inbox_consumer(agency: str) -> str:
    return f"inbox-{check_agency_id(agency)}"


def status_consumer(agency: str) -> str:
    return f"status-{check_agency_id(agency)}"


def kv_bucket(agency: str) -> str:
    return f"adapter-{check_agency_id(agency)}"


def agency_inbox_prefix(agency: str) -> str:
    """The reply-inbox prefix of an agency's NATS identity."""
    return f"_INBOX.agency.{check_agency_id(agency)}"


def role_inbox_prefix(role: str) -> str:
    """The reply-inbox prefix of a service identity (`broker`, `ops`, `admin`)."""
    if role not in ("broker", "ops", "admin"):
        raise ValueError(f"unknown service role {role!r}")
    return f"_INBOX.{role}"


# -- NATS's own API subjects ------------------------------------------------------------------
# Not bridge's subjects, but built here too so that permissions and clients never format a
# subject by hand. Stream, consumer and bucket names come from the validated builders above
# (or are module constants), so no agency id can add a token or a wildcard.

_JS_API = "$JS.API"


def kv_stream(agency: str) -> str:
    """The stream behind an agency's KV bucket (the `KV_<bucket>` convention of NATS)."""
    return f"KV_{kv_bucket(agency)}"


def kv_key_prefix(agency: str) -> str:
    """The subject prefix of the keys in an agency's bucket (`$KV.<bucket>.`)."""
    return f"$KV.{kv_bucket(agency)}."


def pull_consumer_api_subjects(stream: str, consumer: str) -> tuple[str, ...]:
    """Fetch from, inspect and acknowledge one existing durable pull consumer."""
    _check_name(stream)
    _check_name(consumer)
    return (
        f"{_JS_API}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"{_JS_API}.CONSUMER.INFO.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
    )


def kv_bucket_api_subjects(agency: str) -> tuple[str, ...]:
    """Everything nats-py's KV client publishes to for get, create, update and put."""
    stream = kv_stream(agency)
    return (
        f"{kv_key_prefix(agency)}>",  # put, create, update, delete, purge are publishes
        f"{_JS_API}.STREAM.INFO.{stream}",  # js.key_value() looks the bucket up
        f"{_JS_API}.DIRECT.GET.{stream}",  # get by revision (direct buckets)
        f"{_JS_API}.DIRECT.GET.{stream}.>",  # get last by key (direct buckets)
        f"{_JS_API}.STREAM.MSG.GET.{stream}",  # get, for buckets without direct access
    )


def status_stream_read_subjects(federation: Sequence[str]) -> tuple[str, ...]:
    """Read-only access to each agency's status and report streams: their state and direct
    gets (ops)."""
    streams = tuple(f(agency) for agency in federation for f in (status_stream, report_stream))
    return tuple(
        f"{_JS_API}.{request}.{stream}"
        for stream in streams
        for request in ("STREAM.INFO", "DIRECT.GET")
    ) + tuple(f"{_JS_API}.DIRECT.GET.{stream}.>" for stream in streams)


def agency_consent_publish_subjects(agency: str) -> tuple[str, ...]:
    """An agency writes records and withdrawals only in its own part of the registry."""
    own = f"{_PREFIX}.consent.{check_agency_id(agency)}.*"
    return tuple(f"{own}.{kind}" for kind in CONSENT_KINDS)


def consent_read_subjects() -> tuple[str, ...]:
    """Direct gets of the one message on a named registry subject (whoever knows the id), in
    any issuer's streams.

    Only the by-subject form: the bare `$JS.API.DIRECT.GET.<stream>`, which takes a sequence
    number and so could walk an issuer's registry, is not included. The stream token is a
    wildcard (an adapter behind its own leaf node cannot know the federation): only the
    registry streams hold `bridge.consent.` subjects, so no other stream answers with anything.
    """
    return (f"{_JS_API}.DIRECT.GET.*.{_PREFIX}.consent.>",)


def inbox_edit_subjects(federation: Sequence[str]) -> tuple[str, ...]:
    """Read single inbox messages (expiry, withdrawal) and delete them by sequence (withdrawal),
    in the inbox stream of each agency of the federation (the broker)."""
    return tuple(
        f"{_JS_API}.STREAM.MSG.{verb}.{inbox_stream(agency)}"
        for agency in federation
        for verb in ("GET", "DELETE")
    )


def ops_read_api_subjects(federation: Sequence[str]) -> tuple[str, ...]:
    """What ops asks JetStream: the state of the status and report streams and direct gets of
    them, and the state of the broker's consumer on each agency's submit stream and of the inbox
    consumers (backlogs). All read-only requests."""
    return (
        *status_stream_read_subjects(federation),
        *(f"{_JS_API}.CONSUMER.INFO.{submit_stream(a)}.{BROKER_CONSUMER}" for a in federation),
        *(f"{_JS_API}.CONSUMER.INFO.{inbox_stream(a)}.{inbox_consumer(a)}" for a in federation),
    )


def _check_name(name: str) -> None:
    if not name or any(c in name for c in ".*> \t\r\n"):
        raise ValueError(f"not a stream or consumer name: {name!r}")


def attach_write_subjects(sender: str) -> tuple[str, ...]:
    """A sender stores chunks in its own stream and purges them (receipted, abandoned); it
    finds its abandoned uploads by their markers (stream info by subject, direct get)."""
    stream = attach_stream(sender)
    return (
        attach_subjects(sender),
        f"{_JS_API}.STREAM.PURGE.{stream}",
        f"{_JS_API}.STREAM.INFO.{stream}",
        f"{_JS_API}.DIRECT.GET.{stream}.{attach_open_filter(sender)}",
    )


def attach_filter_all(recipient: str) -> str:
    """Every chunk addressed to `recipient`, from any sender."""
    return f"{_PREFIX}.attach.*.{check_agency_id(recipient)}.>"


def attach_read_subjects(recipient: str, federation: Sequence[str]) -> tuple[str, ...]:
    """Direct gets by subject of chunks addressed to `recipient`, in each sender's stream."""
    check_agency_id(recipient)
    return tuple(
        f"{_JS_API}.DIRECT.GET.{attach_stream(sender)}.{_PREFIX}.attach.{sender}.{recipient}.>"
        for sender in federation
    )


def audit_read_subjects() -> tuple[str, ...]:
    """Read-only access to the audit stream: its state and direct gets (ops, verifiers)."""
    return (
        f"{_JS_API}.STREAM.INFO.{AUDIT_STREAM}",
        f"{_JS_API}.DIRECT.GET.{AUDIT_STREAM}",
        f"{_JS_API}.DIRECT.GET.{AUDIT_STREAM}.>",
    )


def audit_write_subjects() -> tuple[str, ...]:
    """What the audit writer needs: append, and read the head of the chain from the leader."""
    return (
        audit_subject(),
        f"{_JS_API}.STREAM.INFO.{AUDIT_STREAM}",
        f"{_JS_API}.STREAM.MSG.GET.{AUDIT_STREAM}",
        f"{_JS_API}.DIRECT.GET.{AUDIT_STREAM}",  # reading it back for disclosure answers
    )


def audit_stream_admin_subjects() -> tuple[str, ...]:
    """What even the admin must not do to the audit stream: append, delete, purge, remove it."""
    return (
        audit_subject(),
        f"{_JS_API}.STREAM.DELETE.{AUDIT_STREAM}",
        f"{_JS_API}.STREAM.PURGE.{AUDIT_STREAM}",
        f"{_JS_API}.STREAM.MSG.DELETE.{AUDIT_STREAM}",
    )


def stream_settings_subjects(federation: Sequence[str]) -> tuple[str, ...]:
    """Read the settings of the streams whose age limits the broker checks at start-up.

    Stream info is read-only metadata (limits and counts, never a message)."""
    streams = (
        *(submit_stream(agency) for agency in federation),
        *(attach_stream(agency) for agency in federation),
        *(stream for agency in federation for stream in consent_streams(agency)),
        *(inbox_stream(agency) for agency in federation),
        *(report_stream(agency) for agency in federation),
        *(status_stream(agency) for agency in federation),
    )
    return tuple(f"{_JS_API}.STREAM.INFO.{stream}" for stream in streams)


def pending_write_subjects() -> tuple[str, ...]:
    """The broker's own pending-delivery notes (it looks into the inboxes by sequence with
    `inbox_edit_subjects`)."""
    return (
        pending_subjects_all(),
        f"{_JS_API}.STREAM.INFO.{PENDING_STREAM}",
        f"{_JS_API}.DIRECT.GET.{PENDING_STREAM}",
    )


# -- JetStream domains (agencies behind leaf nodes) --------------------------------------------


def js_api_prefix(domain: str) -> str:
    """The API prefix under which the JetStream of `domain` answers across leaf connections."""
    _check_name(domain)
    return f"$JS.{domain}.API"


def in_domain(subjects: Sequence[str], domain: str) -> tuple[str, ...]:
    """The JetStream API subjects among `subjects`, as requests to the JetStream of `domain`."""
    prefix = js_api_prefix(domain)
    return tuple(
        prefix + subject[len(_JS_API) :]
        for subject in subjects
        if subject.startswith(_JS_API + ".")
    )


def leaf_source_subjects(agency: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What sourcing an agency's leaf outbox needs on the leaf connection at the hub.

    Publish (leaf to hub): the outbox's messages on the deliver prefix, and the leaf's answers
    to the hub's consumer requests, which go to the hub's internal reply subjects. Subscribe
    (hub to leaf): those consumer requests in the leaf's domain, and the hub's flow-control
    answers, which acknowledge what the hub has stored.
    """
    outbox = outbox_stream(agency)
    return (
        (f"{leaf_deliver_prefix(agency)}.>", "$JSC.R.>"),
        (f"{js_api_prefix(leaf_domain(agency))}.CONSUMER.>", f"$JS.FC.{outbox}.>"),
    )
