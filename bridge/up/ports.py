"""The network addresses of the embedded stack, chosen once and then kept.

The first `bridge up` prefers fixed ports from a port base (NATS on the base, the adapters on
base+1..base+3, the broker's health and metrics on base+4, ops on base+5, the demo sink on
base+9), so the URLs in the docs work; a taken port is replaced
by a free one. The choice is recorded in `ports.json`, and later runs reuse it, so the URLs and
the tokens a developer copied keep working. A port base of 0 means "free ports only" (tests).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Final

import msgspec

from .._files import write_private_file
from ..errors import ConfigError
from ..nats.server import free_port
from .layout import DEMO_AGENCIES

__all__ = [
    "DEFAULT_NATS_PORT",
    "DEFAULT_PORT_BASE",
    "SINK_OFFSET",
    "Ports",
    "check_free",
    "choose_ports",
    "complete_ports",
    "connect_host",
    "http_url",
    "load_ports",
    "port_is_free",
    "save_ports",
]

DEFAULT_PORT_BASE: Final = 8400
DEFAULT_NATS_PORT: Final = 4222  # NATS's own default, used when no port base is given
SINK_OFFSET: Final = 9
BROKER_OFFSET: Final = 4
OPS_OFFSET: Final = 5

_Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class Ports(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where each part of the stack listens; stored as `ports.json`."""

    host: str
    nats: _Port
    sink: _Port
    adapters: dict[str, _Port]
    # Added later: a ports.json from before has neither; `complete_ports` fills them in.
    broker: _Port | None = None  # the broker's /healthz, /readyz and /metrics
    ops: _Port | None = None

    def all(self) -> dict[str, int]:
        """Every port by what uses it, for messages and checks."""
        named = {"nats-server": self.nats, "demo sink": self.sink}
        named.update({f"adapter {agency}": port for agency, port in self.adapters.items()})
        if self.broker is not None:
            named["broker"] = self.broker
        if self.ops is not None:
            named["ops"] = self.ops
        return named


def connect_host(host: str) -> str:
    """The address to connect to for a server listening on `host` (0.0.0.0 is not one)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return host


def http_url(host: str, port: int, path: str = "") -> str:
    shown = connect_host(host)
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}{path}"


def port_is_free(host: str, port: int) -> bool:
    """Whether `port` can be bound on `host` right now (as servers bind: SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror}", reason="up.host"
            ) from exc
    return True


def _pick(host: str, preferred: int | None, taken: set[int]) -> int:
    if preferred is not None and preferred not in taken and port_is_free(host, preferred):
        taken.add(preferred)
        return preferred
    for _ in range(32):
        port = free_port(host)
        if port not in taken:
            taken.add(port)
            return port
    raise ConfigError(f"no free port found on {host}", reason="up.ports")


def choose_ports(host: str, port_base: int | None) -> Ports:
    """Ports for a new stack: the preferred ones where free, otherwise free ones.

    `port_base=None` is the default layout (NATS on 4222, the rest from 8400); `0` picks free
    ports for everything.
    """
    if port_base is not None and port_base != 0 and not 1 <= port_base <= 65535 - SINK_OFFSET:
        raise ConfigError(
            f"--port-base must be 0 or between 1 and {65535 - SINK_OFFSET}", reason="up.ports"
        )
    base = DEFAULT_PORT_BASE if port_base is None else port_base
    taken: set[int] = set()

    def want(offset: int) -> int | None:
        return base + offset if base else None

    nats_wanted = DEFAULT_NATS_PORT if port_base is None else want(0)
    return Ports(
        host=host,
        nats=_pick(host, nats_wanted, taken),
        sink=_pick(host, want(SINK_OFFSET), taken),
        adapters={a.id: _pick(host, want(a.port_offset), taken) for a in DEMO_AGENCIES},
        broker=_pick(host, want(BROKER_OFFSET), taken),
        ops=_pick(host, want(OPS_OFFSET), taken),
    )


def complete_ports(ports: Ports) -> Ports | None:
    """`ports` with the ports added since it was recorded, or None if none is missing."""
    if ports.broker is not None and ports.ops is not None:
        return None
    taken = set(ports.all().values())
    base = ports.nats if ports.nats != DEFAULT_NATS_PORT else DEFAULT_PORT_BASE
    return msgspec.structs.replace(
        ports,
        broker=ports.broker or _pick(ports.host, base + BROKER_OFFSET, taken),
        ops=ports.ops or _pick(ports.host, base + OPS_OFFSET, taken),
    )


def check_free(ports: Ports, skip: Iterable[str] = ()) -> None:
    """Refuse to start when a recorded port is taken, naming what wanted it."""
    skipped = set(skip)
    busy = [
        f"{what} ({ports.host}:{port})"
        for what, port in ports.all().items()
        if what not in skipped and not port_is_free(ports.host, port)
    ]
    if busy:
        raise ConfigError(
            "ports recorded for this state directory are in use: "
            + ", ".join(busy)
            + "; is another `bridge up` running? Stop it, or delete ports.json to choose new ones",
            reason="up.port_in_use",
        )


def load_ports(path: Path) -> Ports | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return msgspec.json.decode(raw, type=Ports)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: {exc}; delete it to choose new ports", reason="up.ports"
        ) from exc


def save_ports(path: Path, ports: Ports) -> None:
    write_private_file(path, msgspec.json.format(msgspec.json.encode(ports), indent=2) + b"\n")
