"""A short fault-injection run in the suite (the long one is `make chaos`; see tests/chaos.py).

While referrals flow to a webhook and a pull recipient, the broker, the sending adapter, both
receiving adapters and nats-server are each SIGKILLed at random moments and restarted by the
supervisor. Everything answered 202 must reach both local systems, no repeat may be unmarked,
no pull item may come back after its 204, every sender timeline must end `receipted`, and every
process must be alive and ready at the end.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from chaos import TARGETS, Experiment, run


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_nothing_accepted_is_lost_or_repeated_unmarked_while_everything_is_killed(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    seed = random.SystemRandom().randrange(2**32)
    # Every target once, in random order, at random moments, while 40 referrals go out.
    experiment = Experiment("kill anything", TARGETS, messages=40, kills=5, pause=(1.0, 3.0))
    [outcome] = await run([experiment], root=tmp_path, ack_wait=4.0, seed=seed, say=lines.append)
    report = f"seed {seed}\n" + "\n".join(lines)
    assert set(outcome.kills) == set(TARGETS), report
    assert outcome.accepted == 40, report
    assert outcome.never_delivered == 0, report
    assert outcome.repeats_unmarked == 0, report
    assert outcome.pull_after_204 == 0, report
    assert outcome.wrong_final == 0, report
    assert outcome.idle == [], report
    assert outcome.ok, report
