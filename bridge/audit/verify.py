"""Check an audit chain: every record in its place, linked to the one before, checkpoints signed.

The same check runs over records read from the stream (`bridge audit verify`) and over an
export (`bridge audit verify --file`). It stops at the first record that does not fit and says
which and why: a record that was altered, removed, reordered or inserted, a checkpoint whose
signature fails or that signs another chain than the one before it. A chain whose first
records aged out (the stream's age limit) is checked from the first record still there.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass

from ..crypto import PublicKeyRecord
from ..errors import BridgeError
from .checkpoint import CheckpointInvalid, open_checkpoint
from .events import GENESIS, AuditRecord, AuditRecordInvalid, decode_record, record_hash

__all__ = ["AuditBroken", "ChainReport", "ChainVerifier", "verify_records"]


class AuditBroken(BridgeError):
    """The chain does not hold at record `seq`; `problem` is a reason code."""

    reason = "audit.broken"

    def __init__(self, seq: int, problem: str, message: str) -> None:
        super().__init__(f"record {seq}: {message}", reason=f"audit.{problem}")
        self.seq = seq
        self.problem = problem


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What a successful check saw."""

    first: int  # seq of the first record checked (0: none)
    last: int  # seq of the last record checked
    events: int
    checkpoints: int
    signed_upto: int  # the last record a verified checkpoint covers (0: none)

    @property
    def unsigned(self) -> int:
        """Records after the last checkpoint: chained, but not yet signed."""
        return self.last - self.signed_upto if self.last else 0

    def __str__(self) -> str:
        if not self.last:
            return "audit trail is empty"
        return (
            f"audit trail intact: records {self.first}..{self.last} "
            f"({self.events} events, {self.checkpoints} checkpoints); "
            f"signed up to {self.signed_upto}, {self.unsigned} not yet signed"
        )


class ChainVerifier:
    """Feed records in stream order with `add(seq, data)`; `report()` at the end."""

    def __init__(self, public: PublicKeyRecord, stream: str, *, start: int | None = None) -> None:
        self._public = public
        self._stream = stream
        self._expected = start  # None: take the first record's position as given
        self._first = 0
        self._prev_hash: str | None = None
        self._prev_seq = 0
        self._events = 0
        self._checkpoints = 0
        self._signed = 0

    def add(self, position: int | None, data: bytes) -> AuditRecord:
        """Check the next record; `position` is its stream sequence (None in an export)."""
        expected = self._expected if self._expected is not None else position
        try:
            record = decode_record(data)
        except AuditRecordInvalid as exc:
            at = position if position is not None else (expected or self._prev_seq + 1)
            raise AuditBroken(
                at, "malformed", f"is not a readable audit record ({exc.reason})"
            ) from None
        if expected is None:
            expected = record.seq
        if position is not None and record.seq != position:
            raise AuditBroken(
                position, "misplaced", f"says it is record {record.seq} (moved or inserted)"
            )
        if record.seq != expected:
            if record.seq < expected:
                raise AuditBroken(
                    record.seq,
                    "repeated",
                    f"appears again after record {expected - 1} (inserted or reordered)",
                )
            raise AuditBroken(
                expected,
                "missing",
                f"is missing (found record {record.seq} in its place: removed or reordered)",
            )
        if self._prev_hash is None:
            if record.seq == 1 and record.prev != GENESIS:
                raise AuditBroken(1, "altered", "is the first record but names a predecessor")
            self._first = record.seq
        elif record.prev != self._prev_hash:
            raise AuditBroken(
                self._prev_seq,
                "altered",
                f"does not match the hash record {record.seq} holds for it "
                f"(record {self._prev_seq} altered, or record {record.seq} inserted)",
            )
        if record.checkpoint is not None:
            self._check_checkpoint(record)
        else:
            self._events += len(record.all_events)
        self._prev_hash = record_hash(data)
        self._prev_seq = record.seq
        self._expected = record.seq + 1
        return record

    def _check_checkpoint(self, record: AuditRecord) -> None:
        assert record.checkpoint is not None
        try:
            checkpoint = open_checkpoint(record.checkpoint, self._public)
        except CheckpointInvalid as exc:
            raise AuditBroken(
                record.seq, "bad_checkpoint", f"is a checkpoint whose signature fails ({exc})"
            ) from exc
        if checkpoint.stream != self._stream:
            raise AuditBroken(record.seq, "bad_checkpoint", "is a checkpoint of another stream")
        if checkpoint.upto != record.seq - 1 or checkpoint.head != record.prev:
            raise AuditBroken(
                record.seq,
                "bad_checkpoint",
                f"is a checkpoint signed for record {checkpoint.upto} with another hash: "
                "the records before it were rewritten",
            )
        self._checkpoints += 1
        self._signed = record.seq

    def report(self) -> ChainReport:
        return ChainReport(
            first=self._first,
            last=self._prev_seq,
            events=self._events,
            checkpoints=self._checkpoints,
            signed_upto=self._signed,
        )


def verify_records(
    records: Iterable[tuple[int | None, bytes]], public: PublicKeyRecord, stream: str
) -> ChainReport:
    verifier = ChainVerifier(public, stream)
    for position, data in records:
        verifier.add(position, data)
    return verifier.report()


async def verify_records_async(
    records: AsyncIterable[tuple[int | None, bytes]], public: PublicKeyRecord, stream: str
) -> ChainReport:
    verifier = ChainVerifier(public, stream)
    async for position, data in records:
        verifier.add(position, data)
    return verifier.report()
