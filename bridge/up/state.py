"""Create the state directory of the embedded stack on the first run, resume it on later ones.

Everything secret is made here exactly once: the federation's trust anchor, each agency's
keyring, NATS identities, token signing keys, the webhook secret, the sink's access token and
the broker's audit signing key.
A later run reuses all of it and only rewrites what is derived (server and component configs,
the signed key directory when it nears expiry, the signed routing policy when its text
changed), so keys, ports and the JetStream store
survive restarts. Every step checks what exists before it writes, so an interrupted first run
is completed by the next one.
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .._files import write_file, write_private_file
from ..audit import generate_audit_key
from ..crypto import Keyring, kid_hex
from ..errors import BridgeError, ConfigError
from ..federation import operator as fed
from ..federation.directory import Directory, load_anchor
from ..http.auth import OPS_SCOPES, SCOPES, generate_signing_key, mint_token
from ..nats.server import ServerSettings, configure
from ..policy import SIGNED_POLICY, load_policy_file, read_policy_source, sign_policy_file
from .configs import write_adapter_config, write_broker_config, write_ops_config
from .layout import (
    DEMO_AGENCIES,
    FEDERATION,
    OPS_AUDIENCE,
    TOKEN_ISSUER,
    StateLayout,
    demo_agency,
)
from .ports import Ports, choose_ports, complete_ports, http_url, load_ports, save_ports

__all__ = [
    "DEFAULT_TOKEN_LIFETIME",
    "Stack",
    "open_stack",
    "prepare",
]

DEFAULT_TOKEN_LIFETIME: Final = 12 * 3600
_RESIGN_BEFORE: Final = 7 * 86400  # re-sign the key directory when it expires within a week
_MAX_TOKEN_LIFETIME: Final = 30 * 86400


@dataclass(frozen=True, slots=True)
class Stack:
    """A prepared state directory: its layout and addresses. Holds no secrets itself."""

    layout: StateLayout
    ports: Ports
    created: bool = False

    @property
    def nats_url(self) -> str:
        host = self.ports.host
        return f"nats://{f'[{host}]' if ':' in host else host}:{self.ports.nats}"

    def adapter_url(self, agency: str) -> str:
        return http_url(self.ports.host, self.ports.adapters[demo_agency(agency).id])

    @property
    def sink_url(self) -> str:
        return http_url(self.ports.host, self.ports.sink)

    def key_ids(self, agency: str) -> dict[str, str]:
        """The agency's current key ids by use (public: they are in the key directory)."""
        keyring = Keyring.load(self.layout.keys_dir(agency))
        now = int(time.time())
        return {use: kid_hex(keyring.current(use, now).kid) for use in ("sign", "enc")}

    def token(
        self,
        agency: str,
        scopes: Iterable[str] = SCOPES,
        lifetime_seconds: int = DEFAULT_TOKEN_LIFETIME,
        subject: str | None = None,
    ) -> str:
        """A bearer token for `agency`'s adapter, signed with its demo token key."""
        entry = demo_agency(agency)
        if not 60 <= lifetime_seconds <= _MAX_TOKEN_LIFETIME:
            raise ConfigError(
                f"token lifetime must be 60 to {_MAX_TOKEN_LIFETIME} seconds", reason="up.token"
            )
        return mint_token(
            self.layout.token_private_key(entry.id),
            issuer=TOKEN_ISSUER,
            audience=entry.audience,
            subject=subject or f"{entry.id}-local-system",
            scopes=scopes,
            lifetime_seconds=lifetime_seconds,
        )

    @property
    def ops_url(self) -> str:
        assert self.ports.ops is not None  # filled in by prepare()
        return http_url(self.ports.host, self.ports.ops)

    @property
    def broker_health_url(self) -> str:
        assert self.ports.broker is not None
        return http_url(self.ports.host, self.ports.broker)

    def ops_token(self, lifetime_seconds: int = DEFAULT_TOKEN_LIFETIME) -> str:
        """A bearer token with the ops role for the dashboard and the ops API (read-only)."""
        if not 60 <= lifetime_seconds <= _MAX_TOKEN_LIFETIME:
            raise ConfigError(
                f"token lifetime must be 60 to {_MAX_TOKEN_LIFETIME} seconds", reason="up.token"
            )
        return mint_token(
            self.layout.ops_token_private_key,
            issuer=TOKEN_ISSUER,
            audience=OPS_AUDIENCE,
            subject="ops-dashboard",
            scopes=OPS_SCOPES,
            lifetime_seconds=lifetime_seconds,
        )

    def sink_access_token(self) -> str:
        return self.layout.sink_token.read_text().strip()


def _ensure_root(root: Path) -> None:
    if root.exists():
        if not root.is_dir():
            raise ConfigError(f"{root} exists and is not a directory", reason="up.state")
        layout = StateLayout(root)
        ours = layout.ports_file.exists() or layout.federation_dir.exists()
        others = (p for p in root.iterdir() if p != layout.lock_file)
        if not ours and any(others):
            # Never take over (and chmod) a directory that holds something else.
            raise ConfigError(
                f"{root} is not empty and not a bridge state directory; choose another --state",
                reason="up.state",
            )
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(root.stat().st_mode) != 0o700:
        os.chmod(root, 0o700)


def _ensure_federation(layout: StateLayout, now: int) -> None:
    directory = layout.federation_dir
    if not (directory / fed.ANCHOR_KEY).exists():
        fed.init_federation(directory, FEDERATION, now=now)
    changed = False
    for agency in DEMO_AGENCIES:
        keys_dir = layout.keys_dir(agency.id)
        if not (keys_dir.is_dir() and any(keys_dir.glob("*.key"))):
            for parent in (keys_dir.parent.parent, keys_dir.parent):
                parent.mkdir(mode=0o700, exist_ok=True)
            fed.new_keys(keys_dir, agency.id, now=now)
        bundle = fed.load_bundle(fed.bundle_path(keys_dir, agency.id))
        change = fed.add_agency(directory, agency.id, agency.name, agency.role, bundle)
        changed = changed or change.created or bool(change.added)
    if changed or _expires_soon(directory, now):
        fed.sign_draft(directory, now=now)


def _expires_soon(directory: Path, now: int) -> bool:
    signed = directory / fed.SIGNED
    if not signed.exists():
        return True
    try:
        loaded = Directory.load_file(signed, load_anchor(directory / fed.ANCHOR_PUB), now=now)
    except BridgeError:
        return True  # expired or unreadable: a fresh signature from the same anchor fixes it
    return loaded.body.expires_at - now < _RESIGN_BEFORE


DEMO_POLICY: Final = Path(__file__).with_name("demo-policy.toml")


def _ensure_policy(layout: StateLayout, now: int) -> None:
    """Put the demo policy in place on the first run; sign it whenever its text changed.

    The text under `federation/policy.toml` is the operator's to edit: a change is signed as
    the next serial on the next start, and a text `bridge policy check` refuses stops it.
    """
    source = layout.policy_source
    if not source.exists():
        write_file(source, DEMO_POLICY.read_bytes(), mode=0o644)
    signed = layout.federation_dir / SIGNED_POLICY
    text = read_policy_source(source)
    try:
        anchor = load_anchor(layout.federation_dir / fed.ANCHOR_PUB)
        if load_policy_file(signed, anchor).source == text:
            return
    except BridgeError:
        pass  # missing or unreadable: a fresh signature from the same anchor fixes it
    sign_policy_file(layout.federation_dir, source, now=now)


def _ensure_secrets(layout: StateLayout) -> None:
    for agency in DEMO_AGENCIES:
        private = layout.token_private_key(agency.id)
        if not private.exists():
            layout.token_public_key(agency.id).unlink(missing_ok=True)
            generate_signing_key(private, layout.token_public_key(agency.id))
        secret = layout.webhook_secret(agency.id)
        if agency.delivery == "webhook" and not secret.exists():
            write_private_file(secret, secrets.token_hex(32).encode() + b"\n")
    if not layout.audit_key.exists():
        layout.broker_dir.mkdir(mode=0o700, exist_ok=True)
        layout.audit_public_key.unlink(missing_ok=True)
        generate_audit_key(layout.audit_key, layout.audit_public_key)
    layout.ops_dir.mkdir(mode=0o700, exist_ok=True)
    if not layout.ops_token_private_key.exists():
        layout.ops_token_public_key.unlink(missing_ok=True)
        generate_signing_key(layout.ops_token_private_key, layout.ops_token_public_key)
    layout.sink_dir.mkdir(mode=0o700, exist_ok=True)
    if not layout.sink_token.exists():
        write_private_file(layout.sink_token, secrets.token_urlsafe(32).encode() + b"\n")


def _ensure_ports(layout: StateLayout, host: str | None, port_base: int | None) -> Ports:
    recorded = load_ports(layout.ports_file)
    if recorded is not None:
        if host is not None and host != recorded.host:
            raise ConfigError(
                f"this state directory listens on {recorded.host}; delete "
                f"{layout.ports_file} to choose another host",
                reason="up.host",
            )
        return _complete(layout, recorded)
    ports = choose_ports(host or "127.0.0.1", port_base)
    save_ports(layout.ports_file, ports)
    return ports


def _complete(layout: StateLayout, ports: Ports) -> Ports:
    completed = complete_ports(ports)
    if completed is None:
        return ports
    save_ports(layout.ports_file, completed)
    return completed


def prepare(
    root: Path,
    *,
    host: str | None = None,
    port_base: int | None = None,
    now: int | None = None,
) -> Stack:
    """Create or resume the state directory and (re)write every derived config in it.

    `host` and `port_base` matter only on the first run; later runs keep what was recorded.
    """
    root = Path(root).absolute()
    _ensure_root(root)
    layout = StateLayout(root)
    created = not layout.ports_file.exists()
    at = int(time.time()) if now is None else now
    ports = _ensure_ports(layout, host, port_base)
    _ensure_federation(layout, at)
    _ensure_policy(layout, at)
    _ensure_secrets(layout)
    layout.log_dir.mkdir(mode=0o700, exist_ok=True)
    configure(
        layout.nats,
        ServerSettings(host=ports.host, port=ports.nats),
        [agency.id for agency in DEMO_AGENCIES],
    )
    write_broker_config(layout, ports)
    for agency in DEMO_AGENCIES:
        write_adapter_config(layout, ports, agency)
    write_ops_config(layout, ports)
    return Stack(layout=layout, ports=ports, created=created)


def open_stack(root: Path) -> Stack:
    """A state directory `bridge up` prepared before, for `bridge token` and `bridge demo`."""
    layout = StateLayout(Path(root).absolute())
    ports = load_ports(layout.ports_file)
    if ports is None:
        raise ConfigError(
            f"{layout.root} holds no embedded stack; run `bridge up --state {root}` first",
            reason="up.not_prepared",
        )
    return Stack(layout=layout, ports=_complete(layout, ports))
