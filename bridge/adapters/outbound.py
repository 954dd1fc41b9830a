"""Outbound: seal a checked submission and hand it to NATS durably.

Nothing is published unless every check passed (the routing policy's among them, with the
broker's reason codes), and the caller hears `202` only after JetStream
acknowledged the envelope. With an `Idempotency-Key` the message id is fixed before anything is
published (an atomic create in the KV bucket), so a retry after a lost answer seals again under
the same id and JetStream's duplicate window drops the second copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from typing import Final

from aiohttp import MultipartReader
from nats.js.client import JetStreamContext

from ..consent import MessageFacts, Registry, check_message
from ..consent.rules import policy_rule
from ..crypto import Attachment, Keyring, Limits, new_content_key, seal
from ..errors import BridgeError, ConsentDenied, ConsentInvalid, TransportError
from ..federation.directory import Directory
from ..http.problems import ApiProblem
from ..ids import new_message_id
from ..nats.subjects import submit_subject
from ..nats.transport import publish_durable
from ..policy import Decision, FlowRequest, Policy
from .chunks import ChunkStore
from .reports import Reporter
from .spool import Spool, SpooledAttachments
from .store import Event, IdemRecord, MessageRecord, Store
from .submission import Submission, parse_submission
from .upload import AttachmentParts

__all__ = ["Outbound"]

log = logging.getLogger(__name__)

_MAX_IDEMPOTENCY_KEY: Final = 200
_QUOTA_RETRY_AFTER: Final = 30  # seconds: a full quota drains as the recipients take
_IDEMPOTENCY_KEY_RE: Final = re.compile(r"^[!-~]+$")


def _check_idempotency_key(key: str) -> str:
    if len(key) > _MAX_IDEMPOTENCY_KEY or not _IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise ApiProblem(
            400,
            f"Idempotency-Key must be 1 to {_MAX_IDEMPOTENCY_KEY} printable ASCII characters",
            reason="idempotency.key_invalid",
        )
    return key


class Outbound:
    """Seals and publishes submissions for one agency."""

    def __init__(
        self,
        *,
        agency: str,
        keyring: Keyring,
        directory: Callable[[], Directory],
        policy: Callable[[], Policy],
        store: Store,
        js: JetStreamContext,
        limits: Limits,
        default_lifetime: int,
        idempotency_ttl: int,
        max_bytes: int,
        publish_timeout: float,
        clock: Callable[[], float],
        registry: Registry | None,
        retry_after: int = 5,
        reporter: Reporter | None = None,
        chunks: ChunkStore | None = None,
        registry_optional: bool = False,
        spool: Spool | None = None,
    ) -> None:
        """`registry` is None only when consent enforcement is off (`[consent] enforce`).

        `registry_optional` (an adapter behind a leaf node): when the hub's registry cannot be
        read, accept the submission anyway; the broker checks the consent before routing and
        the sender hears `rejected` if it fails. Otherwise a registry away means `503`.
        """
        self._registry_optional = registry_optional
        self._agency = agency
        self._reporter = reporter
        self._keyring = keyring
        self._directory = directory
        self._policy = policy
        self._store = store
        self._js = js
        self._limits = limits
        self._default_lifetime = default_lifetime
        self._idempotency_ttl = idempotency_ttl
        self._max_bytes = max_bytes
        self._publish_timeout = publish_timeout
        self._clock = clock
        self._retry_after = retry_after
        self._registry = registry
        self._chunks = chunks
        self._spool = spool

    async def submit(self, raw: bytes, *, subject: str, idempotency_key: str | None) -> str:
        """Check, seal and publish; return the message id once JetStream has stored it."""
        return await self._submit_checked(raw, subject, idempotency_key, None)

    async def submit_with_attachments(
        self, raw: bytes, reader: MultipartReader, *, subject: str
    ) -> str:
        """As `submit`, with the attachments that follow the message in a multipart request.

        Each attachment is encrypted and stored chunk by chunk as it arrives; the envelope that
        lists them is published only after every chunk was stored. Whatever fails, the chunks
        stored so far are removed.
        """
        if self._chunks is None:
            raise ApiProblem(404, "this adapter takes no attachments", reason="attachment.disabled")
        parts = AttachmentParts(reader, self._limits, self._chunks.chunk_size)
        return await self._submit_checked(raw, subject, None, parts)

    async def _submit_checked(
        self,
        raw: bytes,
        subject: str,
        idempotency_key: str | None,
        parts: AttachmentParts | None,
    ) -> str:
        now = int(self._clock())
        spooled: SpooledAttachments | None = None
        directory = self._directory()
        submission = parse_submission(
            raw,
            agency=self._agency,
            directory=directory,
            limits=self._limits,
            default_lifetime=self._default_lifetime,
            max_bytes=self._max_bytes,
            now=now,
        )
        if submission.request.attachments is not None:
            spooled = self._spooled(
                submission, subject, idempotency_key, multipart=parts is not None
            )
        policy = self._policy()
        _check_policy(policy, submission, self._agency, directory, now)
        try:
            await self._check_consent(submission, directory, now)
            if spooled is not None:
                message_id = await self._submit_attachments(
                    submission, spooled, directory, policy, subject, now
                )
                assert self._spool is not None
                for upload_id in spooled.upload_ids:
                    self._spool.remove(upload_id)  # sent: the plaintext has no reason to stay
                return message_id
            if parts is None:
                return await self._submit(
                    submission, directory, policy, subject, idempotency_key, now
                )
            return await self._submit_attachments(
                submission, parts, directory, policy, subject, now
            )
        except TransportError as exc:
            if exc.reason == "transport.stream_full":
                log.warning("submission not accepted: over this agency's quota [quota.sender_full]")
                raise ApiProblem(
                    429,
                    "this agency has as many messages waiting as its quota allows; retry later",
                    reason="quota.sender_full",
                    headers={"Retry-After": str(_QUOTA_RETRY_AFTER)},
                ) from exc
            log.warning("submission not accepted: NATS unavailable [%s]", exc.reason)
            raise ApiProblem(
                503,
                "the message could not be stored right now; retry later",
                reason=exc.reason,
                headers={"Retry-After": str(self._retry_after)},
            ) from exc

    def _spooled(
        self, submission: Submission, subject: str, idempotency_key: str | None, *, multipart: bool
    ) -> SpooledAttachments:
        """The uploads a JSON submission names, each checked to be the caller's and complete."""
        if self._chunks is None or self._spool is None:
            raise ApiProblem(404, "this adapter takes no attachments", reason="attachment.disabled")
        if multipart:
            raise ApiProblem(
                400,
                "a multipart message carries its files as parts, not as uploads",
                reason="attachment.uploads_in_multipart",
                field="$.attachments",
            )
        if idempotency_key is not None:
            # As with multipart: a retry would seal under a fresh content key.
            raise ApiProblem(
                400,
                "Idempotency-Key is not supported with attachments; retry only after GET shows "
                "the message missing",
                reason="idempotency.not_with_attachments",
            )
        refs = submission.request.attachments or []
        return SpooledAttachments(
            self._spool,
            subject,
            [ref.upload for ref in refs],
            self._limits,
            self._chunks.chunk_size,
        )

    async def _check_consent(self, submission: Submission, directory: Directory, now: int) -> None:
        """The broker's consent check, run here first so the local system hears it at once."""
        if self._registry is None:
            return
        request = submission.request
        facts = MessageFacts(
            consent=request.consent,
            sender=self._agency,
            recipients=tuple(request.recipients),
            type=request.type,
            purpose=request.purpose.value,
            categories=tuple(c.value for c in request.categories),
            expires_at=now + submission.lifetime,
        )
        agencies = [entry.id for entry in directory.agencies()]
        policy = self._policy()
        try:
            await check_message(
                facts,
                self._registry,
                directory,
                agencies,
                now,
                rule=policy_rule(policy, directory),
                max_validity=policy.max_consent_validity,
            )
        except (ConsentDenied, ConsentInvalid) as exc:
            raise ApiProblem(422, str(exc), reason=exc.reason, field="$.consent") from None
        except TransportError as exc:
            if not self._registry_optional:
                raise
            log.warning(
                "consent not checked here, the hub is out of reach; the broker checks it [%s]",
                exc.reason,
            )

    async def _submit_attachments(
        self,
        submission: Submission,
        parts: AttachmentParts | SpooledAttachments,
        directory: Directory,
        policy: Policy,
        subject: str,
        now: int,
    ) -> str:
        assert self._chunks is not None
        message_id = new_message_id()
        content_key = new_content_key()
        request = submission.request
        parts.allowed_types = policy.limits[request.type].attachment_types  # flow check passed
        publisher = self._chunks.publisher(request.recipients, message_id, submission.lifetime)
        await self._chunks.open_upload(message_id, submission.lifetime)
        stored = False
        try:
            attachments = await parts.store(content_key, publisher)
            if not attachments:
                raise ApiProblem(
                    400,
                    "a multipart message needs at least one attachment part",
                    reason="attachment.missing",
                )
            result = await self._submit(
                submission,
                directory,
                policy,
                subject,
                None,
                now,
                message_id=message_id,
                content_key=content_key,
                attachments=attachments,
            )
            stored = True
            return result
        finally:
            certain = stored
            try:
                if not stored:
                    certain = await publisher.settle()
            finally:  # cancelled while settling: the marker stays for the sweep
                await asyncio.shield(
                    self._end_upload(message_id, discard=not stored, keep_marker=not certain)
                )

    async def _end_upload(self, message_id: str, *, discard: bool, keep_marker: bool) -> None:
        """Purge an unsent message's chunks, then its upload marker; what fails here is left
        to the sweep of abandoned uploads (and to the chunks' TTL at the latest). A chunk
        whose publish timed out may still be stored later: its marker stays for the sweep."""
        assert self._chunks is not None
        try:
            if discard:
                await self._chunks.purge(message_id)
            if not keep_marker:
                await self._chunks.close_upload(message_id)
        except TransportError as exc:
            log.warning("upload of message %s not cleaned up yet [%s]", message_id, exc.reason)

    async def _submit(
        self,
        submission: Submission,
        directory: Directory,
        policy: Policy,
        subject: str,
        idempotency_key: str | None,
        now: int,
        *,
        message_id: str | None = None,
        content_key: bytes | None = None,
        attachments: Sequence[Attachment] = (),
    ) -> str:
        message_id = message_id or new_message_id()
        if idempotency_key is not None:
            key = _check_idempotency_key(idempotency_key)
            key_hash = hashlib.sha256(f"{subject}\x00{key}".encode()).hexdigest()
            digest = submission.digest()
            claimed = await self._store.claim_idempotency(
                key_hash, IdemRecord(message_id=message_id, digest=digest), self._idempotency_ttl
            )
            if claimed.digest != digest:
                raise ApiProblem(
                    422,
                    "this Idempotency-Key was used with a different request",
                    reason="idempotency.mismatch",
                )
            message_id = claimed.message_id
        request = submission.request
        try:
            envelope = await asyncio.to_thread(
                seal,
                submission.plaintext,
                message_type=request.type,
                sender=self._keyring,
                recipients=list(request.recipients),
                directory=directory,
                consent=request.consent,
                purpose=request.purpose.value,
                categories=[c.value for c in request.categories],
                lifetime=submission.lifetime,
                reply_to=request.reply_to,
                message_id=message_id,
                now=now,
                limits=self._limits,
                content_key=content_key,
                attachments=attachments,
            )
        except BridgeError as exc:
            log.error("cannot seal a submission [%s]", exc.reason)
            raise ApiProblem(500, "the message could not be sealed", reason=exc.reason) from exc
        limits = policy.limits[request.type]  # present: the flow check passed
        if len(envelope) > limits.max_bytes:
            raise ApiProblem(
                422,
                f"the sealed message exceeds {limits.max_bytes} bytes allowed for a {request.type}",
                reason="policy.too_large",
                field="$.body",
            )
        record = MessageRecord(
            message_id=message_id,
            type=request.type,
            recipients=list(request.recipients),
            created_at=now,
            expires_at=now + submission.lifetime,
            attachments=len(attachments),
        )
        revision = await self._store.create_message(record, now)
        submitted_at = self._clock()
        ack = await publish_durable(
            self._js,
            submit_subject(self._agency),
            envelope,
            msg_id=message_id,
            timeout=self._publish_timeout,
        )
        accepted_at = int(self._clock())
        # The record as just created, unless a retried submission found one: no read back.
        known = None if revision is None else (record, revision)

        async def note_consent() -> None:
            # Remembered under our own consent, so a withdrawal knows whom to send notices.
            try:
                await self._store.update_consent(
                    request.consent, now=accepted_at, message=message_id
                )
            except TransportError as exc:
                log.warning("message %s not noted under its consent [%s]", message_id, exc.reason)

        async def report() -> None:
            if self._reporter is not None:
                await self._reporter.accepted(
                    message_id,
                    request.type,
                    request.recipients,
                    now + submission.lifetime,
                    submitted_at,
                )

        # Three independent writes after the envelope is stored: one wait before the 202, not
        # three. Only the record's `accepted` decides the answer; the others log their failures.
        outcomes = await asyncio.gather(
            self._store.add_events(
                message_id, [Event(state="accepted", at=accepted_at)], accepted_at, known=known
            ),
            note_consent(),
            report(),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        log.info(
            "submitted message %s (%s, %d recipients%s)",
            message_id,
            request.type,
            len(request.recipients),
            ", duplicate" if ack.duplicate else "",
        )
        return message_id


def _check_policy(
    policy: Policy, submission: Submission, agency: str, directory: Directory, now: int
) -> None:
    """Refuse what the broker would refuse under the same policy, with its reason code."""
    request = submission.request
    decision = policy.evaluate(
        FlowRequest(
            sender=agency,
            recipients=tuple(request.recipients),
            message_type=request.type,
            purpose=request.purpose.value,
            categories=tuple(c.value for c in request.categories),
            size=None,  # known only once sealed; checked then
            iat=now,
            exp=now + submission.lifetime,
        ),
        directory,
    )
    if not decision.allowed:
        log.info("submission refused by policy [%s]", decision.reason)
        raise ApiProblem(
            422,
            decision.detail,
            reason=decision.reason or "policy.denied",
            field=_field(decision, submission),
        )


def _field(decision: Decision, submission: Submission) -> str | None:
    request = submission.request
    if decision.reason == "policy.route_denied" and decision.recipient in request.recipients:
        return f"$.recipients[{request.recipients.index(decision.recipient)}]"
    if decision.reason == "policy.purpose_denied":
        return "$.purpose"
    if decision.reason == "policy.category_denied":
        values = [c.value for c in request.categories]
        return f"$.categories[{values.index(decision.outside[0])}]"
    if decision.reason == "policy.lifetime":
        return "$.lifetime_seconds"
    return "$.type" if decision.reason == "policy.route_denied" else None
