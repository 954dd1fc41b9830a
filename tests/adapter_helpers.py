"""Shared builders for the adapter tests: a configured agency, its tokens, and traffic helpers.

Keys and the signed directory come from `envelope_helpers.federation`, built around the real
current time (the adapter checks validity against its clock). Each agency gets a keys directory,
the directory file, the pinned anchor, the signed routing policy (the demo's), a token signing
key and an `AdapterConfig` pointing at the test's own nats-server. Inbound traffic is published
straight into the recipient's BRIDGE_INBOX_<id> as admin and outbound traffic read from
BRIDGE_SUBMIT_<id> as admin: no broker takes part.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from envelope_helpers import CONSENT, Federation, federation
from policy_helpers import signed_policy

from bridge.audit import generate_audit_key
from bridge.config import (
    AdapterConfig,
    AuditConfig,
    AuthConfig,
    BrokerConfig,
    ConsentConfig,
    DeliveryConfig,
    DirectoryConfig,
    HttpConfig,
    NatsClientConfig,
    PolicyConfig,
)
from bridge.crypto import Keyring, seal, write_key_file
from bridge.http.auth import generate_signing_key, mint_token
from bridge.nats.identities import Identity
from bridge.nats.subjects import inbox_subject, submit_stream, submit_subject
from bridge.nats.transport import publish_durable
from bridge.wire import MessageType, encode_body
from bridge.wire.examples import BODIES

NOW = int(time.time())
JOBCENTER = "jobcenter-unna"
SUCHT = "suchtberatung-unna"
SPDI = "spdi-unna"
ISSUER = "https://idp.test"
SCOPES_ALL = (
    "messages:send",
    "messages:read",
    "inbox:read",
    "inbox:ack",
    "consents:read",
    "consents:write",
)

_T = TypeVar("_T")


def fed() -> Federation:
    return federation(NOW)


def keyring(agency: str) -> Keyring:
    f = fed()
    return Keyring(agency, [f.key(f"{agency}/sign"), f.key(f"{agency}/enc")])


@dataclass
class Agency:
    agency: str
    config: AdapterConfig
    token_key: Path

    def token(
        self,
        *scopes: str,
        subject: str = "case-system",
        lifetime: int = 3600,
        now: int | None = None,
    ) -> str:
        return mint_token(
            self.token_key,
            issuer=ISSUER,
            audience=f"bridge-{self.agency}",
            subject=subject,
            scopes=scopes or SCOPES_ALL,
            lifetime_seconds=lifetime,
            now=now,
        )

    def auth(self, *scopes: str, subject: str = "case-system") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(*scopes, subject=subject)}"}


def make_agency(
    root: Path,
    nats_url: str,
    seed_file: Path,
    agency: str,
    *,
    delivery: DeliveryConfig | None = None,
    max_body_bytes: int = 768 * 1024,
    enforce_consent: bool = False,
) -> Agency:
    base = root / agency
    keys = base / "keys"
    keys.mkdir(parents=True, mode=0o700)
    f = fed()
    for use in ("sign", "enc"):
        write_key_file(keys / f"{use}.key", f.key(f"{agency}/{use}"))
    (base / "directory.bin").write_bytes(f.directory_bytes)
    (base / "anchor.json").write_bytes(msgspec.json.encode(f.anchor.public_record()))
    (base / "policy.bin").write_bytes(signed_policy(f)[0])
    generate_signing_key(base / "token.key", base / "token.pub")
    config = AdapterConfig(
        agency=agency,
        keys_dir=str(keys),
        nats=NatsClientConfig(
            url=nats_url,
            seed_file=str(seed_file),
            connect_timeout_seconds=2,
            request_timeout_seconds=2,
        ),
        directory=DirectoryConfig(
            file=str(base / "directory.bin"),
            anchor=str(base / "anchor.json"),
            serial_state=str(base / "serial"),
        ),
        policy=PolicyConfig(
            file=str(base / "policy.bin"), serial_state=str(base / "policy.serial")
        ),
        auth=AuthConfig(
            issuer=ISSUER, audience=f"bridge-{agency}", public_key_file=str(base / "token.pub")
        ),
        delivery=delivery or DeliveryConfig(mode="pull"),
        http=HttpConfig(port=0, max_body_bytes=max_body_bytes),
        # Off unless a test is about consent: the others send under made-up consent ids.
        consent=ConsentConfig(enforce=enforce_consent),
    )
    return Agency(agency, config, base / "token.key")


def broker_config(
    root: Path, nats: NatsClientConfig, *, name: str = "broker", policy: bytes | None = None
) -> BrokerConfig:
    """A broker's config under `root` for the test federation: its directory, trust anchor,
    signed policy (the test policy unless `policy` is given) and audit key are written once,
    and shared by every broker started under the same `root`; serial states are per `name`.
    Consent enforcement is off, as for the adapters (`make_agency`)."""
    f = fed()
    directory, anchor = root / "directory.bin", root / "anchor.json"
    if not directory.exists():
        directory.write_bytes(f.directory_bytes)
        anchor.write_bytes(msgspec.json.encode(f.anchor.public_record()))
        (root / "policy.bin").write_bytes(policy if policy is not None else signed_policy(f)[0])
        generate_audit_key(root / "audit.key", root / "audit.pub.json")
    return BrokerConfig(
        nats=nats,
        directory=DirectoryConfig(
            file=str(directory), anchor=str(anchor), serial_state=str(root / f"{name}.serial")
        ),
        audit=AuditConfig(key_file=str(root / "audit.key")),
        policy=PolicyConfig(
            file=str(root / "policy.bin"), serial_state=str(root / f"{name}.policy.serial")
        ),
        consent=ConsentConfig(enforce=False),
        batch_size=4,
        publish_timeout_seconds=5,
    )


def agency_seed(env: Any, agency: str) -> Path:
    path: Path = env.seed_file(Identity.for_agency(agency))
    return path


def referral_request(recipients: Sequence[str] = (SUCHT,), **changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "type": "referral",
        "recipients": list(recipients),
        "consent": CONSENT,
        "purpose": "counselling",
        "categories": ["identity", "contact", "addiction"],
        "body": msgspec.json.decode(encode_body(BODIES[MessageType.REFERRAL])),
    }
    request.update(changes)
    return request


def seal_to(
    recipient: str,
    *,
    sender: str = JOBCENTER,
    plaintext: bytes | None = None,
    message_type: str = "referral",
    message_id: str | None = None,
    reply_to: str | None = None,
    categories: tuple[str, ...] = ("identity", "contact", "addiction"),
    purpose: str = "counselling",
    consent: str = CONSENT,
) -> bytes:
    return seal(
        encode_body(BODIES[MessageType.REFERRAL]) if plaintext is None else plaintext,
        message_type=message_type,
        sender=keyring(sender),
        recipients=[recipient],
        directory=fed().directory,
        consent=consent,
        purpose=purpose,
        categories=list(categories),
        lifetime=86400,
        reply_to=reply_to,
        message_id=message_id,
    )


async def put_in_inbox(admin: Any, recipient: str, envelope: bytes, msg_id: str) -> None:
    await publish_durable(admin.js, inbox_subject(recipient), envelope, msg_id=msg_id)


async def submitted(admin: Any, sender: str) -> int:
    """How many messages from `sender` wait in its submit stream."""
    info = await admin.js.stream_info(submit_stream(sender))
    return int(info.state.messages)


async def last_submitted(admin: Any, sender: str) -> Any:
    return await admin.js.get_last_msg(submit_stream(sender), submit_subject(sender))


async def eventually(
    probe: Callable[[], Awaitable[_T | None]], *, within: float = 15.0, what: str = "condition"
) -> _T:
    """Poll `probe` until it returns something truthy; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
