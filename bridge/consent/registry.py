"""The consent registry on NATS: one write-once subject per record and per withdrawal.

Records live in the issuer's stream `BRIDGE_CONSENT_<issuer>` under
`bridge.consent.<issuer>.<id>.record`, their withdrawals in `BRIDGE_WITHDRAWAL_<issuer>` under
`....withdrawal`. Each stream keeps at most one message per subject and refuses a second one,
deletes and purges (`bridge.nats.provision`), and NATS permissions let an agency write only
below its own `<issuer>` token (`bridge.nats.identities`). So nothing in the registry is ever
overwritten: a withdrawal is added beside its record, and a replayed or altered copy of a
record, or of an old version, is refused by the server. Each issuer's streams are its quota: a
full one refuses with `TransportError` `transport.stream_full` (its adapter answers 429), and
its withdrawals have room of their own.

Reads are direct gets of the one message on a subject. A verified record is cached (it cannot
change; its signing key is checked against the current directory's revocations on every use);
a withdrawal is looked up every time until one is found.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from dataclasses import dataclass
from typing import Final

import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext

from ..crypto import KeyLookup
from ..errors import ConsentInvalid, PolicyError, TransportError
from ..nats.subjects import consent_stream, consent_subject
from ..nats.transport import publish_durable, subject_taken
from .record import VerifiedConsent, VerifiedWithdrawal, verify_consent, verify_withdrawal

__all__ = ["ConsentState", "Registry"]

_CACHE_SIZE: Final = 4096
_MAX_DOCUMENT_CODES: Final = (10077, 10060)  # per-subject limit reached: the subject is taken


def _exists(kind: str) -> PolicyError:
    return PolicyError(f"the registry already holds this consent's {kind}", reason="consent.exists")


@dataclass(frozen=True, slots=True)
class ConsentState:
    """A verified record and, if it was withdrawn, its verified withdrawal."""

    consent: VerifiedConsent
    withdrawal: VerifiedWithdrawal | None

    @property
    def withdrawn(self) -> bool:
        return self.withdrawal is not None


class Registry:
    """Read and write the consent registry as one NATS identity."""

    def __init__(self, js: JetStreamContext, *, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._js = js
        self._timeout = timeout
        self._records: collections.OrderedDict[tuple[str, str], VerifiedConsent] = (
            collections.OrderedDict()
        )
        self._withdrawals: dict[tuple[str, str], VerifiedWithdrawal] = {}

    def __repr__(self) -> str:
        return f"Registry(cached={len(self._records)}, withdrawn={len(self._withdrawals)})"

    # -- writing ----------------------------------------------------------------------------

    async def put(self, issuer: str, consent_id: str, kind: str, document: bytes) -> None:
        """Store a signed record or withdrawal; `PolicyError` `consent.exists` if one is there.

        A retry of the very same write (its first acknowledgement was lost) succeeds: the
        subject holds exactly this document already.

        The id is fresh for every attempt and never relied on (JetStream deduplicates by
        `Nats-Msg-Id` per stream, whoever published; when the registry was one stream for all
        issuers, a predictable id let another agency pre-empt our withdrawal). What makes a
        write happen once is the stream itself (one message per subject, never replaced) and
        that only the issuer may publish below its own subjects.

        `TransportError` `transport.stream_full`: the issuer's stream is at its quota.
        """
        try:
            ack = await publish_durable(
                self._js,
                consent_subject(issuer, consent_id, kind),
                document,
                msg_id=f"{issuer}.{consent_id}.{kind}.{uuid.uuid4().hex}",
                timeout=self._timeout,
                expected_stream=consent_stream(issuer, kind),
            )
        except TransportError as exc:
            if exc.reason == "transport.stream_full" and not subject_taken(exc):
                raise  # the issuer's quota, not this subject
            cause = exc.__cause__
            if isinstance(cause, nats.js.errors.APIError) and (
                cause.err_code in _MAX_DOCUMENT_CODES
            ):
                if await self.raw(issuer, consent_id, kind) == document:
                    return  # an earlier attempt of this very write was stored
                raise _exists(kind) from exc
            raise
        # A duplicate within the window stored nothing: fine if it was this very document.
        if ack.duplicate and await self.raw(issuer, consent_id, kind) != document:
            raise _exists(kind)

    # -- reading ----------------------------------------------------------------------------

    async def raw(self, issuer: str, consent_id: str, kind: str) -> bytes | None:
        """The stored bytes on one subject, or None; `TransportError` if NATS cannot say."""
        subject = consent_subject(issuer, consent_id, kind)
        try:
            async with asyncio.timeout(self._timeout):
                msg = await self._js.get_msg(
                    consent_stream(issuer, kind), subject=subject, direct=True
                )
        except nats.js.errors.NotFoundError:
            return None
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise TransportError(
                f"the consent registry cannot be read ({type(exc).__name__})",
                reason="consent.registry_unavailable",
            ) from exc
        return bytes(msg.data or b"")

    async def state(
        self, issuer: str, consent_id: str, directory: KeyLookup
    ) -> ConsentState | None:
        """The verified state of `issuer`'s consent `consent_id`, or None if there is none.

        Raises `ConsentInvalid` for a record or withdrawal that does not verify as `issuer`'s
        document about this very consent, `TransportError` if the registry cannot be read.
        """
        key = (issuer, consent_id)
        consent = self._records.get(key)
        if consent is not None and directory.is_revoked(consent.kid):
            # Revoked since it was verified: a compromised key's signatures count no more.
            raise ConsentInvalid("the consent's signing key has been revoked")
        if consent is None:
            data = await self.raw(issuer, consent_id, "record")
            if data is None:
                return None
            consent = verify_consent(data, directory, issuer)
            if consent.body.id != consent_id:
                raise ConsentInvalid("a consent record is stored under another consent's id")
            self._remember(key, consent)
        withdrawal = self._withdrawals.get(key)
        if withdrawal is None:
            data = await self.raw(issuer, consent_id, "withdrawal")
            if data is not None:
                withdrawal = verify_withdrawal(data, directory, issuer, consent_id)
                self._withdrawals[key] = withdrawal
        return ConsentState(consent=consent, withdrawal=withdrawal)

    def _remember(self, key: tuple[str, str], consent: VerifiedConsent) -> None:
        self._records[key] = consent
        self._records.move_to_end(key)
        while len(self._records) > _CACHE_SIZE:
            old, _ = self._records.popitem(last=False)
            self._withdrawals.pop(old, None)
