"""The audit trail: hash-chained, metadata-only records of every state change, signed checkpoints.

The broker is the single writer (`AuditWriter`); anyone holding the pinned audit public key can
check the chain from the stream or from an export (`ChainVerifier`, `bridge audit verify`).
docs/audit.md describes the record format, every kind of event and how they are produced.
"""

from __future__ import annotations

from .checkpoint import (
    Checkpoint,
    CheckpointInvalid,
    generate_audit_key,
    load_audit_key,
    load_audit_public_key,
    open_checkpoint,
    sign_checkpoint,
)
from .events import (
    GENESIS,
    AuditEvent,
    AuditKind,
    AuditRecord,
    AuditRecordInvalid,
    decode_record,
    encode_record,
    record_hash,
)
from .verify import AuditBroken, ChainReport, ChainVerifier, verify_records
from .writer import AuditWriter, audit_msg_id

__all__ = [
    "GENESIS",
    "AuditBroken",
    "AuditEvent",
    "AuditKind",
    "AuditRecord",
    "AuditRecordInvalid",
    "AuditWriter",
    "ChainReport",
    "ChainVerifier",
    "Checkpoint",
    "CheckpointInvalid",
    "audit_msg_id",
    "decode_record",
    "encode_record",
    "generate_audit_key",
    "load_audit_key",
    "load_audit_public_key",
    "open_checkpoint",
    "record_hash",
    "sign_checkpoint",
    "verify_records",
]
