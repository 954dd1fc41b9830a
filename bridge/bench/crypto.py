"""`bridge bench crypto`: throughput of seal, verify and open against their own primitives.

For each body size the three envelope recipes are timed, and so is every primitive they call,
in the same run and on the same inputs. A recipe's primitive cost is the sum of its primitives'
costs (seconds per call times calls per recipe); its ratio is its throughput divided by the
throughput that cost alone would allow. 1.0 means the recipe spends nothing beyond the
primitives; 0.93 means 7 % goes to framing, msgpack, key lookups and checks. Absolute rates
depend on the machine; the ratio mostly does not, so it is what to compare between runs.

Measurement: every item is warmed up, then timed for `seconds / rounds` per round with
`time.perf_counter`, calls batched so that reading the clock costs nothing measurable. Within a
round the items take turns in slices of a few milliseconds (`bridge.bench._timing`), so that a
machine slowing down or speeding up mid-run affects recipes and primitives alike; each item's
rate is the median of its rounds. docs/bench.md says how to read the numbers.

NOTE: this module calls `bridge.crypto._primitives` directly, on purpose: timing the primitives
is its job. It never touches `cryptography.hazmat` itself.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Final, Literal

import msgspec

from ..crypto import (
    DEFAULT_LIMITS,
    Keyring,
    PrivateKey,
    generate_key,
    open_envelope,
    seal,
    verify,
)
from ..crypto import _primitives as P
from ..crypto.envelope import SIGNATURE_CONTEXT
from ..federation.directory import AgencyEntry, Directory, DirectoryBody, sign_directory
from ._timing import Progress, Schedule, Tally, no_progress

__all__ = [
    "BODY_SIZES",
    "FORMAT",
    "CostTerm",
    "CryptoBench",
    "PrimitiveRate",
    "RecipeRate",
    "render_text",
    "run",
    "to_json",
]

FORMAT: Final = "bridge-bench-crypto/v1"
BODY_SIZES: Final = (1024, 64 * 1024)

Recipe = Literal["seal", "verify", "open"]

# What each primitive is, for people reading the output.
_LABELS: Final = {
    "sign": "composite sign (Ed25519 + ML-DSA-65)",
    "verify-signature": "composite verify (Ed25519 + ML-DSA-65)",
    "hpke-wrap": "HPKE wrap (X-Wing, HKDF-SHA256, AES-256-GCM)",
    "hpke-unwrap": "HPKE unwrap (X-Wing, HKDF-SHA256, AES-256-GCM)",
    "aead-seal": "AES-256-GCM encrypt (body)",
    "aead-open": "AES-256-GCM decrypt (body)",
    "sha256": "SHA-256 (header)",
    "hkdf-pair": "2 x HKDF-SHA256 (body key+nonce, commitment)",
    "random": "os.urandom (content key)",
}
# The envelope derives a 44-byte body key+nonce and a 32-byte commitment from the content key
# and binds each wrap to `info` || header hash || kid; the same lengths are used here.
_BODY_INFO: Final = b"bridge/v1 body"
_COMMIT_INFO: Final = b"bridge/v1 commitment"
_WRAP_INFO_PREFIX: Final = b"bridge/v1 wrap"
_SIGS_LEN: Final = P.ED25519_SIG_LEN + P.MLDSA65_SIG_LEN
_LIFETIME: Final = 3600
_CONSENT: Final = "c-" + "0" * 32
_RECIPE_ORDER: Final = {"seal": 0, "verify": 1, "open": 2}
# A batch of calls between two clock reads lasts about this long (or less in tiny runs).
_BATCH_SECONDS: Final = 0.001
# Each item runs for about this long before the next one takes over (see `_timing`).
_SLICE_SECONDS: Final = 0.005


class PrimitiveRate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One primitive on an input of `input_bytes` bytes: median calls per second."""

    name: str
    label: str
    input_bytes: int
    ops_per_second: float
    rounds: list[float]


class CostTerm(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`count` calls of primitive `name` on `input_bytes` bytes, made by one recipe call."""

    name: str
    input_bytes: int
    count: int


class RecipeRate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A recipe on one body size, its primitive cost and the ratio between the two."""

    recipe: Recipe
    body_bytes: int
    ops_per_second: float
    rounds: list[float]
    cost: list[CostTerm]
    primitive_ops_per_second: float
    ratio: float


class CryptoBench(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The result of one run; `to_json()` gives its machine-readable form."""

    format: str
    started_at: str
    recipients: int
    seconds: float
    rounds: int
    python: str
    cryptography: str
    cpus: int
    recipes: list[RecipeRate]
    primitives: list[PrimitiveRate]


# -- measuring --------------------------------------------------------------------------------


@dataclass
class _Item:
    """One thing to time: its batch size, and its calls and seconds per round once timed."""

    fn: Callable[[], object]
    batch: int = 1
    tally: Tally = field(default_factory=Tally)


def _warm_up(item: _Item, seconds: float, batch_seconds: float) -> None:
    """Run `item` for about `seconds` (at least twice) and size its batch from what it took."""
    calls = 0
    start = time.perf_counter()
    while True:
        item.fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if calls >= 2 and elapsed >= seconds:
            break
    item.batch = max(1, int(batch_seconds * calls / elapsed))


def _time_slice(item: _Item, seconds: float) -> tuple[int, float]:
    """Run `item` for at least `seconds` (and at least one batch): (calls, seconds taken)."""
    fn, batch = item.fn, item.batch
    calls = 0
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls, elapsed


def _measure(items: Sequence[_Item], schedule: Schedule, progress: Progress) -> None:
    """Warm every item up, then time it in the interleaved slices of `schedule`."""
    progress(f"warming up {len(items)} measurements")
    for item in items:
        _warm_up(item, schedule.warm_up, min(_BATCH_SECONDS, schedule.slice_length / 10))
    for item in schedule.turns(items, progress):
        item.tally.add(*_time_slice(item, schedule.slice_length))


# -- the federation and the inputs ------------------------------------------------------------


@dataclass(frozen=True)
class _Federation:
    sender: Keyring
    recipients: list[Keyring]
    directory: Directory
    now: int


def _federation(recipients: int, now: int) -> _Federation:
    """An in-memory federation: one sender, `recipients` recipients, a signed directory."""
    start, end = now - 60, now + 86400

    def keyring(agency: str) -> Keyring:
        return Keyring(agency, [generate_key(agency, use, start, end) for use in ("sign", "enc")])

    def entry(ring: Keyring, role: Literal["jobcenter", "counselling"]) -> AgencyEntry:
        return AgencyEntry(
            id=ring.agency,
            name=f"Benchmark {ring.agency}",
            role=role,
            keys=[k.public_record() for k in ring.keys()],  # noqa: SIM118 (a method, not a dict),
        )

    sender = keyring("bench-sender")
    receivers = [keyring(f"bench-recipient-{i}") for i in range(1, recipients + 1)]
    anchor: PrivateKey = generate_key("bench-federation", "sign", start, end)
    body = DirectoryBody(
        v=1,
        federation="bench-federation",
        serial=1,
        issued_at=start,
        expires_at=end,
        agencies=[entry(sender, "jobcenter")] + [entry(r, "counselling") for r in receivers],
        revoked=[],
    )
    directory = Directory.load(sign_directory(body, anchor), anchor.public_record(), now=now)
    return _Federation(sender, receivers, directory, now)


def _items_for_size(
    fed: _Federation, size: int
) -> tuple[dict[Recipe, _Item], dict[tuple[str, int], _Item], dict[Recipe, list[CostTerm]]]:
    """Recipe items, primitive items (by name and input length) and each recipe's cost."""
    plaintext = P.random_bytes(size)
    agencies = [r.agency for r in fed.recipients]
    opener = fed.recipients[0]

    def seal_once() -> bytes:
        return seal(
            plaintext,
            message_type="referral",
            sender=fed.sender,
            recipients=agencies,
            directory=fed.directory,
            consent=_CONSENT,
            purpose="bench",
            categories=["bench"],
            lifetime=_LIFETIME,
            now=fed.now,
        )

    envelope = seal_once()
    verified = verify(envelope, fed.directory, now=fed.now)
    if open_envelope(envelope, opener, fed.directory, now=fed.now).plaintext != plaintext:
        raise RuntimeError("bench setup: the envelope does not open to its plaintext")

    # The primitives' inputs are the envelope's own parts, or stand-ins of the same length.
    signed = envelope[:-_SIGS_LEN]
    ed_sig = envelope[-_SIGS_LEN : -P.MLDSA65_SIG_LEN]
    ml_sig = envelope[-P.MLDSA65_SIG_LEN :]
    header = msgspec.msgpack.encode(verified.header)  # verify() proved it canonical
    header_hash = P.sha256(header)
    signer = fed.sender.current("sign", fed.now).signer()
    public = P.signing_public(verified.sender_key.public_bytes)
    enc_key = opener.current("enc", fed.now)
    wrap_to = P.encryption_public(enc_key.public_bytes)
    unwrap_with = enc_key.decrypter()
    wrap_info = _WRAP_INFO_PREFIX + header_hash + enc_key.kid
    content_key = P.random_bytes(32)
    wrapped = wrap_to.wrap(content_key, wrap_info)
    body_key, nonce = P.random_bytes(32), P.random_bytes(12)
    ciphertext = P.aead_seal(body_key, nonce, plaintext, header_hash)
    checks = (
        public.verify(SIGNATURE_CONTEXT, signed, ed_sig, ml_sig),
        unwrap_with.unwrap(wrapped, wrap_info) == content_key,
        P.aead_open(body_key, nonce, ciphertext, header_hash) == plaintext,
    )
    if not all(checks):
        raise RuntimeError("bench setup: a primitive does not round-trip")

    def hkdf_pair() -> None:
        P.hkdf_sha256(content_key, _BODY_INFO, 44)
        P.hkdf_sha256(content_key, _COMMIT_INFO, 32)

    primitives: dict[tuple[str, int], _Item] = {
        ("sign", len(signed)): _Item(lambda: signer.sign(SIGNATURE_CONTEXT, signed)),
        ("verify-signature", len(signed)): _Item(
            lambda: public.verify(SIGNATURE_CONTEXT, signed, ed_sig, ml_sig)
        ),
        ("hpke-wrap", 32): _Item(lambda: wrap_to.wrap(content_key, wrap_info)),
        ("hpke-unwrap", len(wrapped)): _Item(lambda: unwrap_with.unwrap(wrapped, wrap_info)),
        ("aead-seal", size): _Item(lambda: P.aead_seal(body_key, nonce, plaintext, header_hash)),
        ("aead-open", len(ciphertext)): _Item(
            lambda: P.aead_open(body_key, nonce, ciphertext, header_hash)
        ),
        ("sha256", len(header)): _Item(lambda: P.sha256(header)),
        ("hkdf-pair", 32): _Item(hkdf_pair),
        ("random", 32): _Item(lambda: P.random_bytes(32)),
    }

    input_len = {name: length for name, length in primitives}

    def terms(*counts: tuple[str, int]) -> list[CostTerm]:
        return [CostTerm(name, input_len[name], count) for name, count in counts]

    verify_cost = [("verify-signature", 1), ("sha256", 1)]
    costs: dict[Recipe, list[CostTerm]] = {
        # seal() verifies what it produced before returning it, so its cost includes verify's.
        "seal": terms(
            ("sign", 1),
            ("hpke-wrap", len(agencies)),
            ("aead-seal", 1),
            ("sha256", 1),
            ("hkdf-pair", 1),
            ("random", 1),
            *verify_cost,
        ),
        "verify": terms(*verify_cost),
        "open": terms(*verify_cost, ("hpke-unwrap", 1), ("aead-open", 1), ("hkdf-pair", 1)),
    }
    recipes: dict[Recipe, _Item] = {
        "seal": _Item(seal_once),
        "verify": _Item(lambda: verify(envelope, fed.directory, now=fed.now)),
        "open": _Item(lambda: open_envelope(envelope, opener, fed.directory, now=fed.now)),
    }
    return recipes, primitives, costs


# -- the run ----------------------------------------------------------------------------------


def run(
    *,
    seconds: float,
    recipients: int,
    rounds: int,
    progress: Progress = no_progress,
) -> CryptoBench:
    """Time the recipes and their primitives for every size in `BODY_SIZES`.

    Each of the 2 x 3 recipes and the 14 primitive measurements under them is timed for about
    `seconds` in all, in `rounds` rounds, after a short warm-up; a whole run takes about
    30 x `seconds` (plus a second or two to set up). `progress` hears of each phase.
    """
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError("seconds must be a positive number")
    if not 1 <= recipients <= DEFAULT_LIMITS.max_recipients:
        raise ValueError(f"recipients must be 1 to {DEFAULT_LIMITS.max_recipients}")
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    started = datetime.datetime.now(datetime.UTC)
    fed = _federation(recipients, int(started.timestamp()))
    recipe_items: dict[tuple[Recipe, int], _Item] = {}
    primitive_items: dict[tuple[str, int], _Item] = {}
    costs: dict[tuple[Recipe, int], list[CostTerm]] = {}
    for size in BODY_SIZES:
        recipes, primitives, recipe_costs = _items_for_size(fed, size)
        for recipe, item in recipes.items():
            recipe_items[recipe, size] = item
            costs[recipe, size] = recipe_costs[recipe]
        # Size-independent primitives (wrap, unwrap, hkdf, random) are timed once.
        for key, item in primitives.items():
            primitive_items.setdefault(key, item)
    schedule = Schedule(seconds=seconds, rounds=rounds, slice_seconds=_SLICE_SECONDS)
    _measure([*recipe_items.values(), *primitive_items.values()], schedule, progress)

    primitive_rates = {
        key: PrimitiveRate(
            name=key[0],
            label=_LABELS[key[0]],
            input_bytes=key[1],
            ops_per_second=item.tally.median,
            rounds=item.tally.rates,
        )
        for key, item in primitive_items.items()
    }
    recipe_rates = []
    for (recipe, size), item in recipe_items.items():
        cost = costs[recipe, size]
        seconds_per_call = sum(
            term.count / primitive_rates[term.name, term.input_bytes].ops_per_second
            for term in cost
        )
        rate = item.tally.median
        recipe_rates.append(
            RecipeRate(
                recipe=recipe,
                body_bytes=size,
                ops_per_second=rate,
                rounds=item.tally.rates,
                cost=cost,
                primitive_ops_per_second=1 / seconds_per_call,
                ratio=rate * seconds_per_call,
            )
        )
    return CryptoBench(
        format=FORMAT,
        started_at=started.isoformat(timespec="seconds"),
        recipients=recipients,
        seconds=seconds,
        rounds=rounds,
        python=platform.python_version(),
        cryptography=version("cryptography"),
        cpus=os.cpu_count() or 0,
        recipes=sorted(recipe_rates, key=lambda r: (r.body_bytes, _RECIPE_ORDER[r.recipe])),
        primitives=list(primitive_rates.values()),
    )


# -- output -----------------------------------------------------------------------------------


def to_json(result: CryptoBench) -> bytes:
    return msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n"


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n:,} B"


def _formula(cost: list[CostTerm]) -> str:
    return " + ".join(t.name if t.count == 1 else f"{t.count} x {t.name}" for t in cost)


def render_text(result: CryptoBench) -> str:
    """The human-readable report: recipes with ratios, primitives, and what each recipe costs."""
    lines = [
        f"bridge bench crypto: {result.recipients} recipient(s), "
        f"{result.seconds:g} s per measurement, median of {result.rounds} rounds",
        f"{result.started_at}, Python {result.python}, cryptography {result.cryptography}, "
        f"{result.cpus} CPUs",
        "",
        f"{'recipe':<8}{'body':>8}{'ops/s':>12}{'primitives ops/s':>19}{'ratio':>8}",
    ]
    for r in result.recipes:
        lines.append(
            f"{r.recipe:<8}{_size(r.body_bytes):>8}{r.ops_per_second:>12.1f}"
            f"{r.primitive_ops_per_second:>19.1f}{r.ratio:>8.2f}"
        )
    lines += ["", f"{'primitive':<18}{'input':>10}{'ops/s':>13}  what"]
    for p in result.primitives:
        lines.append(f"{p.name:<18}{_size(p.input_bytes):>10}{p.ops_per_second:>13.1f}  {p.label}")
    lines += ["", "cost of one call (per body size):"]
    for r in result.recipes:
        if r.body_bytes == result.recipes[0].body_bytes:
            lines.append(f"  {r.recipe:<7}= {_formula(r.cost)}")
    lines += [
        "",
        "ratio = recipe ops/s / primitives ops/s; 1.00 = no cost beyond the primitives.",
        "seal verifies what it produced, so its cost includes verify's.",
    ]
    return "\n".join(lines) + "\n"
