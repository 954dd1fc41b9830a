"""Run the embedded stack in the foreground: nats-server, broker, three adapters, ops, demo sink.

Start order is dependency order (nats-server, provisioning, the sink, the broker, the adapters,
ops),
each waited for until it is ready; stop order is the reverse. Ctrl-C and SIGTERM set an event
rather than cancel anything, so the shutdown itself cannot be interrupted half way. A process
that dies on its own, nats-server included, is restarted after a growing pause (`Backoff`) and
the run says so; the others reconnect to it. Only a signal ends the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, TextIO

import aiohttp

from ..errors import ConfigError
from ..federation.directory import load_anchor
from ..federation.operator import ANCHOR_PUB
from ..nats.identities import Credentials, Identity
from ..nats.provision import Action, provision_at
from ..nats.server import NatsServer
from ..policy import SIGNED_POLICY, load_policy_file, provision_settings
from .democonsent import ensure_demo_consent
from .layout import DEMO_AGENCIES, StateLayout
from .ports import check_free
from .sink import DemoSink
from .state import DEFAULT_TOKEN_LIFETIME, Stack
from .supervisor import ChildSpec, Probe, Supervisor, keep_server

__all__ = ["READY_LINE", "hold_lock", "run_stack"]

READY_LINE: Final = "bridge up: ready"
_PROBE_TIMEOUT: Final = 2.0


@contextlib.contextmanager
def hold_lock(layout: StateLayout) -> Iterator[None]:
    """Hold `up.lock` for the life of the run: one `bridge up` per state directory."""
    layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(layout.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(
                f"`bridge up` is already running on {layout.root} (pid {holder})",
                reason="up.already_running",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _http_probe(session: aiohttp.ClientSession, url: str) -> Probe:
    async def probe() -> bool:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=_PROBE_TIMEOUT)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    return probe


def _component(name: str, config: Path, log_file: Path, probe: Probe) -> ChildSpec:
    return ChildSpec(
        name=name,
        argv=(sys.executable, "-m", "bridge", name.split()[0], "-c", str(config)),
        log_file=log_file,
        ready=probe,
    )


def _banner(stack: Stack, server: NatsServer, supervisor: Supervisor, sink: DemoSink) -> str:
    layout = stack.layout
    pids = {child.name: child.pid for child in supervisor.children}
    hours = DEFAULT_TOKEN_LIFETIME // 3600
    state = "created" if stack.created else "resumed"
    lines = [
        f"{READY_LINE} ({state} {layout.root})",
        f"  nats-server   {stack.nats_url}  pid {server.pid}",
        f"  broker        pid {pids['broker']}  health {stack.broker_health_url}/readyz  "
        f"log {layout.broker_log}",
        f"  ops           {stack.ops_url}/  pid {pids['ops']}  log {layout.ops_log}",
        f"  demo sink     {sink.url}/deliveries  (webhook receiver of suchtberatung-unna)",
        "  adapters:",
    ]
    for agency in DEMO_AGENCIES:
        kids = stack.key_ids(agency.id)
        lines.append(
            f"    {agency.id:<20} {stack.adapter_url(agency.id):<24} {agency.delivery:<8}"
            f"pid {pids[f'adapter {agency.id}']}  sign-key {kids['sign']}  enc-key {kids['enc']}"
        )
    lines.append(
        f"  ops dashboard (token valid {hours} h; `bridge token --ops` mints more):\n"
        f"    {stack.ops_url}/#token={stack.ops_token()}"
    )
    lines.append(f"  tokens (all scopes, valid {hours} h; `bridge token` mints more):")
    for agency in DEMO_AGENCIES:
        lines.append(f"    {agency.id:<20} {stack.token(agency.id)}")
    lines += [
        f"  logs          {layout.log_dir}",
        # The command as it can be typed: `bridge` is on PATH only inside its virtualenv.
        f"Next: in a second terminal run `{_bridge_command()} demo --state {layout.root}`"
        " (from a checkout: `make demo`).",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


async def run_stack(stack: Stack, out: TextIO = sys.stdout) -> int:
    """Start everything, print the banner, run until a signal or a death; return the exit code.

    A signal during start-up abandons the start and stops what already runs (exit 0); a
    failing start raises its error after everything started so far is stopped.
    """

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    layout = stack.layout
    check_free(stack.ports)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = NatsServer.from_layout(layout.nats)
    supervisor = Supervisor(on_event=lambda text: say(f"bridge up: {text}"))
    sink = DemoSink(_webhook_secrets(layout), stack.sink_access_token())
    try:
        starting = asyncio.ensure_future(_start_all(stack, server, supervisor, sink, say))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not starting.done():
                starting.cancel()
            # wait() rather than await: the start's own cancellation is not ours to raise.
            await asyncio.wait({starting, stopped})
        if stop.is_set():
            say("bridge up: stop requested")
            return 0
        starting.result()  # raises what made the start fail
        say(_banner(stack, server, supervisor, sink))
        await _supervise(stop, server, supervisor, say)
        return 0
    finally:
        say("bridge up: stopping")
        await supervisor.stop_all()
        await sink.stop()
        await server.stop()
        say("bridge up: stopped")
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _start_all(
    stack: Stack,
    server: NatsServer,
    supervisor: Supervisor,
    sink: DemoSink,
    say: Callable[[str], None],
) -> None:
    """nats-server, provisioning, the sink, the broker, the adapters: each ready in turn."""
    layout = stack.layout
    await server.start()
    say(f"bridge up: nats-server ready on {server.url} (pid {server.pid})")
    admin_seed = Credentials(layout.nats.creds_dir).seed_file(Identity.admin())
    agencies = [agency.id for agency in DEMO_AGENCIES]
    federation_dir = layout.federation_dir
    policy = load_policy_file(
        federation_dir / SIGNED_POLICY, load_anchor(federation_dir / ANCHOR_PUB)
    )  # the stream's age limits are the policy's retention settings
    report = await provision_at(server.url, admin_seed, agencies, provision_settings(policy.rules))
    created = len(report.by_action(Action.CREATED))
    updated = len(report.by_action(Action.UPDATED))
    say(
        f"bridge up: provisioned streams, consumers and buckets ({created} created, "
        f"{updated} updated, {len(report.changes) - created - updated} unchanged)"
    )
    await sink.start(stack.ports.host, stack.ports.sink)
    say(f"bridge up: demo sink ready on {sink.url}")
    async with aiohttp.ClientSession() as session:
        # The broker says itself when it consumes (its /readyz), rather than being guessed at.
        broker_ready = _http_probe(session, f"{stack.broker_health_url}/readyz")
        await supervisor.start(
            _component("broker", layout.broker_config, layout.broker_log, broker_ready)
        )
        for agency in DEMO_AGENCIES:
            url = f"{stack.adapter_url(agency.id)}/readyz"
            await supervisor.start(
                _component(
                    f"adapter {agency.id}",
                    layout.adapter_config(agency.id),
                    layout.adapter_log(agency.id),
                    _http_probe(session, url),
                )
            )
        consent_id, new = await ensure_demo_consent(stack, session)
        say(
            f"bridge up: demo consent {consent_id} "
            + ("registered" if new else "still active")
            + " at jobcenter-unna (for `bridge demo`; consent enforcement is on)"
        )
        await supervisor.start(
            _component(
                "ops",
                layout.ops_config,
                layout.ops_log,
                _http_probe(session, f"{stack.ops_url}/readyz"),
            )
        )


async def _supervise(
    stop: asyncio.Event, server: NatsServer, supervisor: Supervisor, say: Callable[[str], None]
) -> None:
    """Restart whatever dies, nats-server and children alike, until a stop signal."""
    async with asyncio.TaskGroup() as group:
        group.create_task(supervisor.supervise(stop))
        group.create_task(keep_server(stop, server, lambda text: say(f"bridge up: {text}")))


def _webhook_secrets(layout: StateLayout) -> dict[str, bytes]:
    return {
        agency.id: layout.webhook_secret(agency.id).read_bytes().strip()
        for agency in DEMO_AGENCIES
        if agency.delivery == "webhook"
    }


def _bridge_command() -> str:
    script = Path(sys.executable).with_name("bridge")
    return str(script) if script.exists() else f"{sys.executable} -m bridge"
