"""Fault injection: SIGKILL parts of a real stack while referrals flow, then count what arrived.

The stack is the demo federation of `bridge up` as real processes (nats-server, the broker, the
sending adapter of jobcenter-unna, the webhook adapter of suchtberatung-unna, the pull adapter of
spdi-unna), supervised as `bridge up` does it: whatever dies is restarted with backoff. Around it
live the local systems, in this process:

- the Jobcenter's case system submits referrals to both recipients, each with its own
  Idempotency-Key, retrying the same key after a 503 or a lost answer until it gets 202;
- the counselling service's webhook receiver answers every signed call 204 and records its
  `Bridge-Message-Id` and whether it carried `Bridge-Possible-Repeat`;
- the social-psychiatric service's system lists, reads and acknowledges its inbox (an ack that
  got no 204 is repeated), and records any item listed again after its ack was answered 204.

An experiment submits its messages while a killer SIGKILLs one of its targets at random moments;
then the killing stops and everything accepted must arrive. Its outcome counts, per recipient
copy: delivered once, repeats (marked or not), never delivered; per message: a sender timeline
not in its final state (`receipted` for both recipients). It passes when nothing was lost, no
repeat was unmarked, no pull item came back after its 204, every timeline is final, and every
process is alive and ready at the end (none alive but idle).

`python tests/chaos.py` (what `make chaos` runs) runs one experiment per target and one that
kills anything, and prints a table; tests/test_chaos.py runs a short one in the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final

import aiohttp
import msgspec
from aiohttp import web

from bridge.nats.identities import Credentials, Identity
from bridge.nats.provision import ProvisionSettings, provision_at
from bridge.nats.server import NatsServer
from bridge.up.layout import DEMO_AGENCIES
from bridge.up.sink import verify_webhook_signature
from bridge.up.state import Stack, prepare
from bridge.up.supervisor import ChildSpec, Supervisor, keep_server
from bridge.wire import MessageType, encode_body
from bridge.wire.examples import BODIES

SENDER: Final = "jobcenter-unna"
WEBHOOK: Final = "suchtberatung-unna"
PULL: Final = "spdi-unna"
RECIPIENTS: Final = (WEBHOOK, PULL)
NATS_SERVER: Final = "nats-server"
TARGETS: Final = (
    "broker",
    f"adapter {SENDER}",
    f"adapter {WEBHOOK}",
    f"adapter {PULL}",
    NATS_SERVER,
)
_HTTP_TIMEOUT: Final = 30.0
_START_TIMEOUT: Final = 120.0  # Python processes start slowly on a loaded 2-core machine


@dataclass(frozen=True)
class Experiment:
    name: str
    targets: tuple[str, ...]
    messages: int
    kills: int  # each target once (in random order) before any is killed again
    pause: tuple[float, float]  # seconds between two kills, drawn uniformly
    settle_seconds: float = 240.0  # after the last kill, for everything accepted to arrive


@dataclass
class Outcome:
    experiment: str
    accepted: int = 0
    delivered_once: int = 0
    repeats_marked: int = 0
    repeats_unmarked: int = 0
    pull_after_204: int = 0
    never_delivered: int = 0
    wrong_final: int = 0
    idle: list[str] = field(default_factory=list)
    kills: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def ok(self) -> bool:
        return not (
            self.repeats_unmarked
            or self.pull_after_204
            or self.never_delivered
            or self.wrong_final
            or self.idle
        )

    HEADER: ClassVar[str] = (
        f"{'experiment':<32}{'kills':>6}{'accepted':>10}{'once':>7}{'marked':>8}"
        f"{'unmarked':>10}{'pull>204':>10}{'never':>7}{'wrong':>7}  idle"
    )

    def row(self) -> str:
        return (
            f"{self.experiment:<32}{sum(self.kills.values()):>6}{self.accepted:>10}"
            f"{self.delivered_once:>7}{self.repeats_marked:>8}{self.repeats_unmarked:>10}"
            f"{self.pull_after_204:>10}{self.never_delivered:>7}{self.wrong_final:>7}  "
            f"{','.join(self.idle) or '-'}"
        )


# -- the local systems --------------------------------------------------------------------------


class _Id(msgspec.Struct):
    message_id: str


class _Listing(msgspec.Struct):
    items: list[_Id]


class _Recipient(msgspec.Struct):
    agency: str
    state: str | None = None


class _Status(msgspec.Struct):
    recipients: list[_Recipient]


class Webhook:
    """Takes every signed call (204) and records its message id and repeat marker."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self.calls: dict[str, list[bool]] = collections.defaultdict(list)  # id -> marked?
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        app = web.Application(client_max_size=2 * 1024 * 1024)
        app.router.add_post(f"/webhook/{WEBHOOK}", self._call)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _call(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify_webhook_signature(self._secret, request.headers, body):
            return web.Response(status=401)
        message_id = msgspec.json.decode(body, type=_Id).message_id
        self.calls[message_id].append(request.headers.get("Bridge-Possible-Repeat") == "true")
        return web.Response(status=204)


class Puller:
    """Lists, reads and acknowledges; remembers 204s and items listed again after one."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        self._session = session
        self._url = url
        self._headers = {"Authorization": f"Bearer {token}"}
        self.acked: set[str] = set()
        self.after_204: collections.Counter[str] = collections.Counter()

    async def _request(self, method: str, path: str) -> tuple[int, bytes]:
        async with self._session.request(
            method,
            self._url + path,
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=_HTTP_TIMEOUT),
        ) as response:
            return response.status, await response.read()

    async def run(self) -> None:
        unconfirmed: set[str] = set()  # read, but the ack's answer was not 204 (yet)
        while True:
            try:
                for message_id in list(unconfirmed):  # as a careful system does: ack again
                    await self._ack(message_id, unconfirmed)
                status, data = await self._request("GET", "/v1/inbox")
                items = msgspec.json.decode(data, type=_Listing).items if status == 200 else []
                for item in items:
                    if item.message_id in self.acked:
                        self.after_204[item.message_id] += 1
                    status, _ = await self._request("GET", f"/v1/inbox/{item.message_id}")
                    if status == 200:
                        unconfirmed.add(item.message_id)
                        await self._ack(item.message_id, unconfirmed)
            except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError):
                pass  # the adapter is down or restarting: look again
            await asyncio.sleep(0.05)

    async def _ack(self, message_id: str, unconfirmed: set[str]) -> None:
        status, _ = await self._request("POST", f"/v1/inbox/{message_id}/ack")
        if status == 204:
            self.acked.add(message_id)
        if status in (204, 404):  # 404: neither held nor recorded; it will be listed again
            unconfirmed.discard(message_id)


class Sender:
    """Submits referrals to both recipients until each is answered 202."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        self._session = session
        self._url = f"{url}/v1/messages"
        self._token = token
        self.accepted: list[str] = []
        self.refusals: collections.Counter[int] = collections.Counter()

    async def submit(self, request: bytes) -> str:
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Content-Type": "application/json",
            "Idempotency-Key": str(uuid.uuid4()),
        }
        while True:
            try:
                async with self._session.post(
                    self._url,
                    data=request,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=_HTTP_TIMEOUT),
                ) as response:
                    data = await response.read()
                    if response.status == 202:
                        message_id = msgspec.json.decode(data, type=_Id).message_id
                        self.accepted.append(message_id)
                        return message_id
                    self.refusals[response.status] += 1
                    if response.status < 500:
                        raise AssertionError(f"submission refused with {response.status}")
            except (aiohttp.ClientError, TimeoutError):
                self.refusals[0] += 1  # no answer: the same key again
            await asyncio.sleep(0.2)


class _Consent(msgspec.Struct):
    consent_id: str


async def register_consent(session: aiohttp.ClientSession, url: str, token: str) -> str:
    """The client's consent to refer to both recipients, registered as a case worker would."""
    valid_until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)
    request = {
        "recipients": sorted(RECIPIENTS),
        "purposes": ["counselling"],
        "categories": ["identity", "contact", "addiction"],
        "types": ["referral"],
        "valid_until": valid_until.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "local_ref": "chaos",
    }
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with session.post(
        f"{url}/v1/consents",
        data=msgspec.json.encode(request),
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=_HTTP_TIMEOUT),
    ) as response:
        data = await response.read()
        if response.status != 201:
            raise AssertionError(f"the consent was refused with {response.status}")
    return msgspec.json.decode(data, type=_Consent).consent_id


def referral(consent: str) -> bytes:
    return msgspec.json.encode(
        {
            "type": "referral",
            "recipients": list(RECIPIENTS),
            "consent": consent,
            "purpose": "counselling",
            "categories": ["identity", "contact", "addiction"],
            "body": msgspec.Raw(encode_body(BODIES[MessageType.REFERRAL])),
        }
    )


# -- the stack ----------------------------------------------------------------------------------


class ChaosStack:
    """The demo federation as supervised real processes, and the local systems around it."""

    def __init__(self, root: Path, *, ack_wait: float, say: Callable[[str], None]) -> None:
        self.stack: Stack = prepare(root / "state", port_base=0)
        self.server = NatsServer.from_layout(self.stack.layout.nats)
        self.supervisor = Supervisor(on_event=lambda text: say(f"  {text.splitlines()[0]}"))
        self._ack_wait = ack_wait
        self._say = say
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        secret = self.stack.layout.webhook_secret(WEBHOOK).read_bytes().strip()
        self.webhook = Webhook(secret)
        self.puller: Puller | None = None
        self.sender: Sender | None = None
        self.consent = ""

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None
        return self._session

    async def start(self) -> None:
        layout = self.stack.layout
        await self.server.start()
        seed = Credentials(layout.nats.creds_dir).seed_file(Identity.admin())
        agencies = [a.id for a in DEMO_AGENCIES]
        await provision_at(
            self.server.url, seed, agencies, ProvisionSettings(ack_wait=self._ack_wait)
        )
        await self.webhook.start(self.stack.ports.host, self.stack.ports.sink)
        self._session = aiohttp.ClientSession()
        for name, config, log in [
            ("broker", layout.broker_config, layout.broker_log),
            *(
                (f"adapter {a.id}", layout.adapter_config(a.id), layout.adapter_log(a.id))
                for a in DEMO_AGENCIES
            ),
        ]:
            probe = self._ready_probe(name)
            await self.supervisor.start(
                ChildSpec(
                    name=name,
                    argv=(sys.executable, "-m", "bridge", name.split()[0], "-c", str(config)),
                    log_file=log,
                    ready=probe,
                    start_timeout=_START_TIMEOUT,
                )
            )
        self.sender = Sender(self.session, self.stack.adapter_url(SENDER), self._token(SENDER))
        self.consent = await register_consent(
            self.session, self.stack.adapter_url(SENDER), self._token(SENDER)
        )
        self.puller = Puller(self.session, self.stack.adapter_url(PULL), self._token(PULL))
        self._tasks = [
            asyncio.create_task(self.supervisor.supervise(self._stop)),
            asyncio.create_task(keep_server(self._stop, self.server, self._say_first_line)),
            asyncio.create_task(self.puller.run()),
        ]

    def _say_first_line(self, text: str) -> None:
        self._say(f"  {text.splitlines()[0]}")

    def _token(self, agency: str) -> str:
        return self.stack.token(agency, lifetime_seconds=6 * 3600)

    def _ready_probe(self, name: str) -> Callable[[], Any]:
        if name == "broker":

            async def started() -> bool:
                return "consuming" in self.stack.layout.broker_log.read_text(errors="replace")

            return started
        url = f"{self.stack.adapter_url(name.split()[1])}/readyz"

        async def ready() -> bool:
            return await self._http_ok(url)

        return ready

    async def _http_ok(self, url: str) -> bool:
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def pid(self, target: str) -> int | None:
        if target == NATS_SERVER:
            return self.server.pid
        for child in self.supervisor.children:
            if child.name == target and child.returncode is None:
                return child.pid
        return None

    async def idle(self) -> list[str]:
        """Processes that are not alive and ready (each given a while to come back)."""
        waiting = []
        for target in TARGETS:
            if self.pid(target) is None:
                waiting.append(target)
            elif target.startswith("adapter "):
                url = f"{self.stack.adapter_url(target.split()[1])}/readyz"
                if not await self._http_ok(url):
                    waiting.append(target)
        return waiting

    async def status(self, message_id: str) -> dict[str, str | None]:
        url = f"{self.stack.adapter_url(SENDER)}/v1/messages/{message_id}"
        headers = {"Authorization": f"Bearer {self._token(SENDER)}"}
        try:
            async with self.session.get(url, headers=headers, timeout=_timeout()) as r:
                if r.status != 200:
                    return {}
                status = msgspec.json.decode(await r.read(), type=_Status)
        except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError):
            return {}
        return {r.agency: r.state for r in status.recipients}

    async def stop(self) -> None:
        self._stop.set()  # supervision ends on its own; the puller is cancelled
        for task in self._tasks[2:]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.supervisor.stop_all()
        finally:
            if self._session is not None:
                await self._session.close()
            await self.webhook.stop()
            await self.server.stop()


def _timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=_HTTP_TIMEOUT)


# -- one experiment -----------------------------------------------------------------------------


async def run_experiment(
    stack: ChaosStack, experiment: Experiment, rng: random.Random, say: Callable[[str], None]
) -> Outcome:
    outcome = Outcome(experiment.name)
    sender = stack.sender
    assert sender is not None
    assert stack.puller is not None
    say(f"{experiment.name}: {experiment.messages} referrals, killing {experiment.targets}")
    order = [
        t
        for _ in range(-(-experiment.kills // len(experiment.targets)))
        for t in rng.sample(experiment.targets, len(experiment.targets))
    ][: experiment.kills]
    pauses = [rng.uniform(*experiment.pause) for _ in order]
    interval = sum(pauses) / experiment.messages  # submissions spread over the killing

    async def kill() -> None:
        for target, pause in zip(order, pauses, strict=True):
            await asyncio.sleep(pause)
            pid = stack.pid(target)
            if pid is None:  # still being restarted: kill something that runs
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                outcome.kills[target] += 1
                say(f"  killed {target} (pid {pid})")

    accepted: list[str] = []

    async def submit(index: int) -> None:
        await asyncio.sleep(index * interval)
        accepted.append(await sender.submit(referral(stack.consent)))

    async with asyncio.TaskGroup() as group:
        group.create_task(kill())
        for index in range(experiment.messages):
            group.create_task(submit(index))
    outcome.accepted = len(accepted)
    say(f"  all {len(accepted)} accepted; waiting for them to arrive")

    deadline = time.monotonic() + experiment.settle_seconds
    final: dict[str, dict[str, str | None]] = {}
    while True:
        missing = [m for m in accepted if not _arrived(stack, m)]
        open_ = [m for m in accepted if not _final(final.get(m))]
        for message_id in open_[:50]:
            final[message_id] = await stack.status(message_id)
        open_ = [m for m in accepted if not _final(final.get(m))]
        if (not missing and not open_) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    outcome.idle = await stack.idle()
    while outcome.idle and time.monotonic() < deadline:  # a process may be restarting
        await asyncio.sleep(0.5)
        outcome.idle = await stack.idle()

    for message_id in accepted:
        calls = stack.webhook.calls.get(message_id, [])
        if calls:
            outcome.delivered_once += len(calls) == 1
            outcome.repeats_marked += sum(calls[1:])
            outcome.repeats_unmarked += len(calls) - 1 - sum(calls[1:])
        else:
            outcome.never_delivered += 1
        if message_id in stack.puller.acked:
            outcome.delivered_once += stack.puller.after_204[message_id] == 0
            outcome.pull_after_204 += stack.puller.after_204[message_id]
        else:
            outcome.never_delivered += 1
        outcome.wrong_final += not _final(final.get(message_id))
    return outcome


def _arrived(stack: ChaosStack, message_id: str) -> bool:
    assert stack.puller is not None
    return message_id in stack.webhook.calls and message_id in stack.puller.acked


def _final(states: dict[str, str | None] | None) -> bool:
    return bool(states) and all(states.get(r) == "receipted" for r in RECIPIENTS)  # type: ignore[union-attr]


async def run(
    experiments: Sequence[Experiment],
    *,
    root: Path,
    ack_wait: float,
    seed: int,
    say: Callable[[str], None],
) -> list[Outcome]:
    """Start the stack, run the experiments one after another on it, stop it."""
    rng = random.Random(seed)
    stack = ChaosStack(root, ack_wait=ack_wait, say=say)
    outcomes = []
    try:
        await stack.start()
        say("stack ready")
        for experiment in experiments:
            outcomes.append(await run_experiment(stack, experiment, rng, say))
            say(outcomes[-1].row())
    finally:
        await stack.stop()
    return outcomes


def long_experiments(messages: int, kills: int, pause: tuple[float, float]) -> list[Experiment]:
    return [
        *(Experiment(f"kill {target}", (target,), messages, kills, pause) for target in TARGETS),
        Experiment("kill anything", TARGETS, messages, kills, pause),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=400, help="referrals per experiment")
    parser.add_argument("--kills", type=int, default=10, help="kills per experiment")
    parser.add_argument("--pause", type=float, nargs=2, default=(2.0, 6.0), metavar=("MIN", "MAX"))
    parser.add_argument("--ack-wait", type=float, default=30.0, help="consumers' ack wait (s)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"chaos: seed {seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bridge-chaos-") as tmp:
        outcomes = asyncio.run(
            run(
                long_experiments(args.messages, args.kills, tuple(args.pause)),
                root=Path(tmp),
                ack_wait=args.ack_wait,
                seed=seed,
                say=lambda text: print(text, flush=True),
            )
        )
    print()
    print(Outcome.HEADER)
    for outcome in outcomes:
        print(outcome.row())
    print("(per recipient copy: once, marked/unmarked repeats, never; per message: wrong final)")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
