"""Uploads in parts: files spooled on the adapter's local disk until a message references them.

`POST /v1/uploads` declares a file (name, media type, size, optionally its SHA-256); each
`PUT /v1/uploads/{id}?offset=N` appends a part at exactly the bytes received so far, so a client
whose connection broke asks `GET /v1/uploads/{id}` and resumes there. A complete upload is sent by
naming it in `POST /v1/messages` (`"attachments": [{"upload": id}]`): it is then encrypted through
the same sealing path as a multipart attachment, and its file is removed once the envelope is
stored. The chunk keys derive from the message's content key, so nothing can be encrypted before
the message exists: the plaintext waits here, on local disk only (a directory 0700, files 0600,
created with O_EXCL and O_NOFOLLOW), never in NATS. Uploads older than
`attachment_upload_limit_seconds` are removed by `sweep_forever`, complete or not.

An upload belongs to the token subject that created it; to any other caller it does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final

import msgspec

from .._cancel import pause
from .._files import write_private_file
from ..crypto import Attachment, Limits, check_name
from ..crypto.attachments import MEDIA_TYPE_PATTERN
from ..errors import AttachmentInvalid, ConfigError
from ..http.problems import ApiProblem
from .chunks import ChunkPublisher
from .upload import seal_stream

__all__ = ["UPLOAD_ID_PATTERN", "Spool", "SpooledAttachments", "UploadMeta"]

log = logging.getLogger(__name__)

UPLOAD_ID_PATTERN: Final = r"^[0-9a-f]{32}$"
_ID_RE: Final = re.compile(UPLOAD_ID_PATTERN)
_MEDIA_TYPE_RE: Final = re.compile(MEDIA_TYPE_PATTERN)
_READ: Final = 64 * 1024
_MIB: Final = 1024 * 1024
_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)


class UploadMeta(msgspec.Struct, frozen=True, kw_only=True):
    """What `POST /v1/uploads` declared, kept beside the spooled bytes (`<id>.json`)."""

    owner: str
    name: str
    media_type: str
    size: int
    digest: bytes | None
    created_at: float


_meta_decoder: Final = msgspec.json.Decoder(UploadMeta)


def _unknown() -> ApiProblem:
    return ApiProblem(
        404,
        "no such upload here (an upload stays with the adapter instance that created it)",
        reason="upload.unknown",
    )


class Spool:
    """The uploads of one adapter, each a data file `<id>.part` and its `<id>.json`."""

    def __init__(self, directory: Path, limits: Limits, clock: Callable[[], float]) -> None:
        self._dir = directory
        self._limits = limits
        self._clock = clock
        self._busy: set[str] = set()

    def open(self) -> None:
        """Create the directory 0700 (an existing one is tightened to 0700)."""
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self._dir.is_symlink():
                raise ConfigError(f"{self._dir} is a symlink", reason="config.invalid")
            os.chmod(self._dir, 0o700)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the upload spool {self._dir}: {exc.strerror}",
                reason="config.invalid",
            ) from exc

    def _data(self, upload_id: str) -> Path:
        return self._dir / f"{upload_id}.part"

    def _meta_path(self, upload_id: str) -> Path:
        return self._dir / f"{upload_id}.json"

    def create(
        self, owner: str, *, name: str, media_type: str, size: int, digest: bytes | None
    ) -> str:
        """Declare an upload; its data file is created empty. Refusals name the field."""
        try:
            name = check_name(name)
        except AttachmentInvalid as exc:
            raise ApiProblem(422, str(exc), reason=exc.reason, field="$.name") from None
        media_type = media_type.strip().lower()
        if not _MEDIA_TYPE_RE.fullmatch(media_type):
            raise ApiProblem(
                422,
                "media_type is not a media type",
                reason="attachment.media_type_invalid",
                field="$.media_type",
            )
        if size > self._limits.max_attachment_bytes:
            raise ApiProblem(
                413,
                f"an attachment exceeds {self._limits.max_attachment_bytes // _MIB} MiB",
                reason="attachment.too_large",
                field="$.size",
            )
        upload_id = secrets.token_hex(16)
        meta = UploadMeta(
            owner=owner,
            name=name,
            media_type=media_type,
            size=size,
            digest=digest,
            created_at=self._clock(),
        )
        fd = os.open(self._data(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
        os.close(fd)
        write_private_file(self._meta_path(upload_id), msgspec.json.encode(meta), overwrite=False)
        return upload_id

    def meta(self, owner: str, upload_id: str) -> UploadMeta:
        """The upload's declaration; 404 for an id not of this form, unknown, or not `owner`'s."""
        if not _ID_RE.fullmatch(upload_id):
            raise _unknown()
        try:
            meta = _meta_decoder.decode(self._meta_path(upload_id).read_bytes())
        except (OSError, msgspec.DecodeError):
            raise _unknown() from None
        if meta.owner != owner:
            raise _unknown()
        return meta

    def received(self, upload_id: str) -> int:
        try:
            return os.stat(self._data(upload_id), follow_symlinks=False).st_size
        except OSError:
            raise _unknown() from None

    async def append(
        self, owner: str, upload_id: str, offset: int, content: AsyncIterator[bytes]
    ) -> int:
        """Append `content` at exactly `offset`; return the bytes received so far.

        A wrong offset is 409 and changes nothing; bytes beyond the declared size are 413 and
        the part is undone. If the request breaks off, what was written stays (each piece is
        written whole), and the client resumes at the size `GET` reports.
        """
        meta = self.meta(owner, upload_id)
        if upload_id in self._busy:
            raise ApiProblem(
                409, "another part of this upload is being written", reason="upload.busy"
            )
        self._busy.add(upload_id)
        try:
            expected = self.received(upload_id)
            if offset != expected:
                raise ApiProblem(
                    409,
                    f"offset must be {expected}, the bytes received so far",
                    reason="upload.offset_mismatch",
                    field="offset",
                )
            fd = os.open(self._data(upload_id), os.O_WRONLY | os.O_APPEND | _NOFOLLOW)
            written = offset
            try:
                async for piece in content:
                    if written + len(piece) > meta.size:
                        os.ftruncate(fd, offset)
                        raise ApiProblem(
                            413,
                            "the part goes beyond the upload's declared size",
                            reason="upload.too_large",
                        )
                    os.write(fd, piece)
                    written += len(piece)
            finally:
                os.fsync(fd)
                os.close(fd)
            return written
        finally:
            self._busy.discard(upload_id)

    async def read(self, upload_id: str) -> AsyncIterator[bytes]:
        """The spooled bytes, piece by piece."""
        fd = os.open(self._data(upload_id), os.O_RDONLY | _NOFOLLOW)
        try:
            while piece := await asyncio.to_thread(os.read, fd, _READ):
                yield piece
        finally:
            os.close(fd)

    def remove(self, upload_id: str) -> None:
        for path in (self._data(upload_id), self._meta_path(upload_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def sweep(self, older_than: float) -> int:
        """Remove every upload (and stray file) older than `older_than` seconds; return how many."""
        cutoff = self._clock() - older_than
        now_wall = time.time()
        removed = 0
        for upload_id in {path.name.lstrip(".").split(".", 1)[0] for path in self._dir.iterdir()}:
            if upload_id in self._busy:
                continue
            files = [p for p in self._dir.iterdir() if p.name.lstrip(".").startswith(upload_id)]
            try:
                meta = _meta_decoder.decode(self._meta_path(upload_id).read_bytes())
                stale = meta.created_at < cutoff
            except (OSError, msgspec.DecodeError):
                # No readable declaration (a crash between the two files, a temporary file):
                # judged by the files' own age.
                stale = all(p.lstat().st_mtime < now_wall - older_than for p in files)
            if stale:
                for path in files:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    removed += 1
        return removed

    async def sweep_forever(self, older_than: float) -> None:
        """Run `sweep` now and then, forever; a failure is logged and retried."""
        every = max(1.0, min(older_than / 4, 300.0))
        while True:
            try:
                removed = await asyncio.to_thread(self.sweep, older_than)
                if removed:
                    log.info("removed %d abandoned upload files [upload.expired]", removed)
            except OSError:
                log.warning("abandoned uploads not swept [upload.sweep_failed]; retrying")
            await pause(every)


class SpooledAttachments:
    """The uploads a JSON submission names, sealed one after another like multipart parts."""

    def __init__(
        self, spool: Spool, owner: str, upload_ids: list[str], limits: Limits, chunk: int
    ) -> None:
        """Check every upload first: each the caller's own, complete, and named once."""
        if len(upload_ids) > limits.max_attachments:
            raise ApiProblem(
                413,
                f"at most {limits.max_attachments} attachments per message",
                reason="attachment.too_many",
                field="$.attachments",
            )
        self._metas: list[tuple[str, UploadMeta]] = []
        for i, upload_id in enumerate(upload_ids):
            field = f"$.attachments[{i}].upload"
            try:
                meta = spool.meta(owner, upload_id)
            except ApiProblem as exc:
                raise ApiProblem(
                    422, "no such upload", reason="upload.unknown", field=field
                ) from exc
            if upload_id in upload_ids[:i]:
                raise ApiProblem(
                    422, "an upload is named twice", reason="upload.duplicate", field=field
                )
            if spool.received(upload_id) != meta.size:
                raise ApiProblem(
                    409,
                    "the upload is not complete; send its remaining parts first",
                    reason="upload.incomplete",
                    field=field,
                )
            self._metas.append((upload_id, meta))
        self._spool = spool
        self._limits = limits
        self._chunk = chunk
        self.allowed_types: frozenset[str] = frozenset()

    @property
    def upload_ids(self) -> list[str]:
        return [upload_id for upload_id, _ in self._metas]

    async def store(self, content_key: bytes, publisher: ChunkPublisher) -> list[Attachment]:
        """Encrypt and publish every upload from the spool; return their header entries."""
        for i, (_, meta) in enumerate(self._metas):
            if meta.media_type not in self.allowed_types:
                raise ApiProblem(
                    422,
                    "the routing policy allows no attachment of this media type for this "
                    "message type",
                    reason="policy.attachment_type_denied",
                    field=f"$.attachments[{i}].upload",
                )
        entries: list[Attachment] = []
        total = 0
        for index, (upload_id, meta) in enumerate(self._metas):
            entry = await seal_stream(
                self._spool.read(upload_id),
                index,
                content_key,
                publisher,
                limits=self._limits,
                total=total,
                name=meta.name,
                media_type=meta.media_type,
                chunk=self._chunk,
                declared_size=meta.size,
                declared_digest=meta.digest,
            )
            total += entry.size
            entries.append(entry)
        await publisher.close()
        return entries
