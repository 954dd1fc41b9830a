"""The demo federation and where `bridge up` keeps its files in the state directory.

One state directory holds a whole embedded stack, so deleting it resets everything and moving it
moves everything (generated configs use paths relative to themselves). docs/running.md shows the
tree this module describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from ..federation.directory import Role
from ..ids import check_agency_id
from ..nats.server import ServerLayout

__all__ = [
    "DEMO_AGENCIES",
    "FEDERATION",
    "OPS_AUDIENCE",
    "TOKEN_ISSUER",
    "DemoAgency",
    "StateLayout",
    "demo_agency",
]

FEDERATION: Final = "demo-unna"
TOKEN_ISSUER: Final = "bridge-demo"  # noqa: S105 - an issuer name, not a secret
OPS_AUDIENCE: Final = "bridge:ops"


@dataclass(frozen=True, slots=True)
class DemoAgency:
    """One agency of the demo federation and how its local system takes deliveries."""

    id: str
    name: str
    role: Role
    delivery: Literal["webhook", "pull"]
    port_offset: int  # from the port base; fixed so that URLs are the same on every machine

    @property
    def audience(self) -> str:
        return f"bridge:{self.id}"


DEMO_AGENCIES: Final = (
    DemoAgency("jobcenter-unna", "Jobcenter Kreis Unna", "jobcenter", "pull", 1),
    DemoAgency("suchtberatung-unna", "Suchtberatung Unna", "counselling", "webhook", 2),
    DemoAgency(
        "spdi-unna",
        "Sozialpsychiatrischer Dienst Kreis Unna",
        "social-psychiatric-service",
        "pull",
        3,
    ),
)


def demo_agency(agency: str) -> DemoAgency:
    """The demo agency with id `agency`; a ConfigError naming the known ones otherwise."""
    from ..errors import ConfigError

    for candidate in DEMO_AGENCIES:
        if candidate.id == agency:
            return candidate
    known = ", ".join(a.id for a in DEMO_AGENCIES)
    raise ConfigError(f"no agency {agency!r} in the demo; known: {known}", reason="up.agency")


@dataclass(frozen=True, slots=True)
class StateLayout:
    """Paths below the state directory. Nothing here touches the disk."""

    root: Path

    @property
    def ports_file(self) -> Path:
        return self.root / "ports.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "up.lock"

    @property
    def federation_dir(self) -> Path:
        return self.root / "federation"

    @property
    def nats(self) -> ServerLayout:
        return ServerLayout.in_state(self.root)

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    @property
    def broker_config(self) -> Path:
        return self.broker_dir / "broker.toml"

    @property
    def audit_key(self) -> Path:
        """The broker's audit checkpoint signing key (private)."""
        return self.broker_dir / "audit-signing.key"

    @property
    def audit_public_key(self) -> Path:
        """Its public half, which `bridge audit verify` pins."""
        return self.federation_dir / "audit.pub.json"

    @property
    def sink_dir(self) -> Path:
        return self.root / "sink"

    @property
    def sink_token(self) -> Path:
        """Bearer token for reading the sink's deliveries (they hold decrypted content)."""
        return self.sink_dir / "access.token"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def broker_log(self) -> Path:
        return self.log_dir / "broker.log"

    @property
    def ops_dir(self) -> Path:
        return self.root / "ops"

    @property
    def ops_config(self) -> Path:
        return self.ops_dir / "ops.toml"

    @property
    def ops_log(self) -> Path:
        return self.log_dir / "ops.log"

    @property
    def ops_token_private_key(self) -> Path:
        return self.ops_dir / "token-signing.key"

    @property
    def ops_token_public_key(self) -> Path:
        return self.ops_dir / "token-signing.pub.pem"

    def adapter_log(self, agency: str) -> Path:
        return self.log_dir / f"adapter-{check_agency_id(agency)}.log"

    def agency_dir(self, agency: str) -> Path:
        return self.root / "agencies" / check_agency_id(agency)

    def keys_dir(self, agency: str) -> Path:
        return self.agency_dir(agency) / "keys"

    def adapter_config(self, agency: str) -> Path:
        return self.agency_dir(agency) / "adapter.toml"

    def token_private_key(self, agency: str) -> Path:
        return self.agency_dir(agency) / "token-signing.key"

    def token_public_key(self, agency: str) -> Path:
        return self.agency_dir(agency) / "token-signing.pub.pem"

    def webhook_secret(self, agency: str) -> Path:
        return self.agency_dir(agency) / "webhook.secret"

    def directory_serial(self, component_dir: Path) -> Path:
        return component_dir / "directory.serial"

    @property
    def policy_source(self) -> Path:
        """The demo's routing policy as the operator edits it; `bridge up` signs it."""
        return self.federation_dir / "policy.toml"

    def policy_serial(self, component_dir: Path) -> Path:
        return component_dir / "policy.serial"
