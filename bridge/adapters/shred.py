"""`bridge keys shred -c adapter.toml`: destroy the agency's spent encryption keys, on the record.

Plans with `bridge.federation.shred` from the adapter's own config (its key directory, the key
directory of the federation, its envelope lifetime limit), destroys what is due, then tells the
audit writer through a signed `key-destroyed` notice on the agency's submit subject. A notice
that could not be sent yet is kept in `shred-pending.json` beside the keys (public key ids and
times only) and sent first on the next run, so no destruction goes unrecorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from .._files import write_private_file
from ..audit.notice import KEY_DESTROYED, KeyDestroyed, notice_message_id, sign_notice
from ..config import AdapterConfig, nats_tls_context
from ..crypto import Keyring, PrivateKey
from ..errors import ConfigError
from ..federation.directory import Directory, SerialState, load_anchor
from ..federation.shred import ShredItem, destroy_key_file, plan_shred
from ..nats.subjects import HDR_NOTICE, agency_inbox_prefix, submit_subject
from ..nats.transport import connect, publish_durable

__all__ = ["ShredReport", "shred_keys"]

PENDING_FILE: Final = "shred-pending.json"


class _Pending(msgspec.Struct, frozen=True):
    kid: str
    at: int


@dataclass(frozen=True, slots=True)
class ShredReport:
    plan: list[ShredItem]
    destroyed: list[str]
    notified: list[str]
    now: int


def _load_directory(config: AdapterConfig, now: int) -> Directory:
    c = config
    return Directory.load_file(
        c.path(c.directory.file),
        load_anchor(c.path(c.directory.anchor)),
        state=SerialState(c.path(c.directory.serial_state)),
        now=now,
    )


def _read_pending(path: Path) -> list[_Pending]:
    if not path.exists():
        return []
    try:
        return msgspec.json.decode(path.read_bytes(), type=list[_Pending])
    except (OSError, msgspec.DecodeError) as exc:
        raise ConfigError(f"{path} is unreadable", reason="keys.shred_pending") from exc


def _write_pending(path: Path, pending: list[_Pending]) -> None:
    if pending:
        write_private_file(path, msgspec.json.encode(pending))
    else:
        path.unlink(missing_ok=True)


async def shred_keys(
    config: AdapterConfig,
    *,
    dry_run: bool,
    passphrase: bytes | None = None,
    now: int | None = None,
) -> ShredReport:
    at = int(time.time()) if now is None else now
    keys_dir = config.path(config.keys_dir)
    directory = _load_directory(config, at)
    plan = plan_shred(
        keys_dir, directory, directory.body.issued_at, max_lifetime=config.limits.max_lifetime
    )
    if dry_run:
        return ShredReport(plan, [], [], at)
    pending_path = keys_dir / PENDING_FILE
    pending = _read_pending(pending_path)
    due = [item for item in plan if item.due(at)]
    if not due and not pending:
        return ShredReport(plan, [], [], at)
    keyring = Keyring.load(keys_dir, passphrase)
    signing = keyring.current_published("sign", at, directory)
    destroyed = []
    for item in due:
        destroy_key_file(item.info.path)
        destroyed.append(item.info.kid)
        pending.append(_Pending(item.info.kid, at))
        _write_pending(pending_path, pending)  # recorded before anything can fail
    notified = await _notify(config, keyring.agency, signing, pending)
    _write_pending(pending_path, [p for p in pending if p.kid not in notified])
    return ShredReport(plan, destroyed, notified, at)


async def _notify(
    config: AdapterConfig, agency: str, signing: PrivateKey, pending: list[_Pending]
) -> list[str]:
    c = config
    nc = await connect(
        c.nats.url,
        c.path(c.nats.seed_file),
        agency_inbox_prefix(agency),
        f"bridge-shred-{agency}",
        connect_timeout=c.nats.connect_timeout_seconds,
        tls=nats_tls_context(c.nats, c.path),
    )
    sent = []
    try:
        js = nc.jetstream(timeout=c.nats.request_timeout_seconds)
        for item in pending:
            notice = KeyDestroyed(agency=agency, kid=item.kid, at=item.at)
            await publish_durable(
                js,
                submit_subject(agency),
                sign_notice(notice, signing),
                msg_id=notice_message_id(agency, item.kid),
                headers={HDR_NOTICE: KEY_DESTROYED},
                timeout=c.nats.request_timeout_seconds,
            )
            sent.append(item.kid)
    finally:
        await nc.close()
    return sent
