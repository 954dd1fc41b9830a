"""Crypto-shredding: which keys go when, that they are really gone, and that the audit knows."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import pytest
from envelope_helpers import DAY, RECIPIENTS, SENDER, build, federation
from policy_helpers import signed_policy
from test_broker import NOW, make_broker, write_config

from bridge.adapters.shred import PENDING_FILE, shred_keys
from bridge.audit import AuditKind, ChainVerifier, load_audit_public_key
from bridge.audit.reader import stream_records
from bridge.cli import main
from bridge.config import load_adapter_config
from bridge.crypto import DEFAULT_LIMITS, Keyring, kid_hex, open_envelope, write_key_file
from bridge.errors import BridgeError
from bridge.nats.identities import Identity
from bridge.nats.subjects import AUDIT_STREAM

if TYPE_CHECKING:
    from conftest import NatsEnv

AGENCY = RECIPIENTS[0]  # suchtberatung-unna: a current, an expired and a revoked encryption key


def adapter_config(base: Path, env: NatsEnv | None) -> Path:
    tmp_path = base / "agency"
    tmp_path.mkdir()
    fed = federation(NOW)
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    for label, key in fed.keys.items():
        if key.agency == AGENCY:
            write_key_file(keys / f"{label.split('/')[1]}.key", key)
    (tmp_path / "directory.bin").write_bytes(fed.directory_bytes)
    (tmp_path / "anchor.json").write_bytes(msgspec.json.encode(fed.anchor.public_record()))
    (tmp_path / "policy.bin").write_bytes(signed_policy(fed)[0])
    (tmp_path / "token.pem").write_text("unused")
    url = env.url if env else "nats://127.0.0.1:1"
    seed = env.seed_file(Identity.for_agency(AGENCY)) if env else tmp_path / "none.nk"
    path = tmp_path / "adapter.toml"
    path.write_text(
        f'agency = "{AGENCY}"\nkeys_dir = "keys"\n'
        f'[nats]\nurl = "{url}"\nseed_file = "{seed}"\n'
        '[directory]\nfile = "directory.bin"\nanchor = "anchor.json"\n'
        'serial_state = "serial"\n'
        '[policy]\nfile = "policy.bin"\nserial_state = "policy.serial"\n'
        '[auth]\nissuer = "i"\naudience = "a"\npublic_key_file = "token.pem"\n'
        '[delivery]\nmode = "pull"\n'
    )
    return path


async def test_dry_run_lists_and_destroys_nothing(tmp_path: Path) -> None:
    config = load_adapter_config(adapter_config(tmp_path, None))
    before = sorted(p.name for p in (tmp_path / "agency" / "keys").iterdir())
    report = await shred_keys(config, dry_run=True)
    fed = federation(NOW)
    expired = kid_hex(fed.key(f"{AGENCY}/enc-expired").kid)
    revoked = kid_hex(fed.key(f"{AGENCY}/enc-revoked").kid)
    current = kid_hex(fed.key(f"{AGENCY}/enc").kid)
    by_kid = {item.info.kid: item for item in report.plan}
    assert set(by_kid) == {expired, revoked, current}  # encryption keys only
    assert by_kid[expired].due(report.now)  # expired 30 days ago, lifetimes are at most 30 days
    # Revoked by the directory issued a day ago: nothing sealed to it can outlive 30 days more.
    assert by_kid[revoked].revoked
    assert not by_kid[revoked].due(report.now)
    assert by_kid[revoked].destroy_at == fed.directory.body.issued_at + 3600 + 30 * DAY
    assert not by_kid[current].due(report.now)
    assert report.destroyed == []
    assert sorted(p.name for p in (tmp_path / "agency" / "keys").iterdir()) == before


def test_cli_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = adapter_config(tmp_path, None)
    assert main(["keys", "shred", "-c", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("would destroy") == 1
    assert out.count("keep until") == 2
    assert "revoked" in out


async def test_shredded_key_is_gone_its_ciphertexts_cannot_be_opened_and_the_audit_knows(
    nats_env: NatsEnv, tmp_path: Path
) -> None:
    fed = federation(NOW)
    old = fed.key(f"{AGENCY}/enc-expired")
    # A message sealed to the old key while it was valid, as a backup of the store would keep it.
    then = old.not_before + DAY
    sealed = build(
        fed,
        signing=fed.key(f"{SENDER}/sign-expired"),  # the sender's key of that time
        recipients=[(AGENCY, old.public_record())],
        iat=then,
        exp=then + 7 * DAY,
    )
    config = load_adapter_config(adapter_config(tmp_path, nats_env))
    keys = tmp_path / "agency" / "keys"
    opened = open_envelope(sealed, Keyring.load(keys), fed.directory, now=then + 60)
    assert opened.plaintext  # the key could open it before

    async with make_broker(write_config(tmp_path, nats_env, fed)) as broker:
        report = await shred_keys(config, dry_run=False, now=int(time.time()))
        assert report.destroyed == [kid_hex(old.kid)]
        assert report.notified == [kid_hex(old.kid)]
        assert not (keys / PENDING_FILE).exists()

        async def recorded() -> list[object]:
            ops = await nats_env.connect(Identity.ops())
            verifier = ChainVerifier(
                load_audit_public_key(tmp_path / "audit.pub.json"), AUDIT_STREAM
            )
            found = []
            async for seq, data in stream_records(ops.js):
                record = verifier.add(seq, data)
                if record.event is not None and record.event.kind is AuditKind.KEY_DESTROYED:
                    found.append(record.event)
            await nats_env.close_client(ops)
            return found

        events: list[object] = []
        async with asyncio.timeout(30):
            while not events:  # polled: the audit stream has no change notification here
                await asyncio.sleep(0.2)
                events = await recorded()
        assert broker.statistics().routed == 0
    (event,) = events
    assert (event.agency, event.key_id) == (AGENCY, kid_hex(old.kid))

    assert not (keys / "enc-expired.key").exists()
    keyring = Keyring.load(keys)
    assert old.kid not in {k.kid for k in list(keyring.keys())}
    with pytest.raises(BridgeError):  # not even by going back to when the key was valid
        open_envelope(sealed, keyring, fed.directory, now=then + 60, limits=DEFAULT_LIMITS)
    # Running again changes nothing and records nothing twice.
    again = await shred_keys(config, dry_run=False)
    assert again.destroyed == []
    assert SENDER not in {i.info.agency for i in again.plan}
