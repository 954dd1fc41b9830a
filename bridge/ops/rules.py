"""Which alert conditions hold now, rule by rule, over the ops state."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

from .alerts import Condition
from .config import AlertRule
from .views import OpsState

__all__ = ["conditions"]


def conditions(rules: Sequence[AlertRule], state: OpsState, now: float) -> Iterator[Condition]:
    for rule in rules:
        yield from _KINDS[rule.kind](rule, state, now)


def _stuck(rule: AlertRule, state: OpsState, now: float) -> Iterator[Condition]:
    assert rule.seconds is not None
    limit = state.thresholds.redelivered_max
    per: Counter[str] = Counter()
    for _, leg in state.legs():
        if leg.open and (now - leg.since > rule.seconds or leg.attempts > limit):
            per[leg.recipient or "-"] += 1
    for recipient, n in sorted(per.items()):
        yield Condition(
            rule,
            f"inbox:{recipient}",
            f"{n} message(s) to {recipient} undelivered for more than {rule.seconds} s "
            f"or delivered more than {limit} times",
            n,
        )


def _near_expiry(rule: AlertRule, state: OpsState, now: float) -> Iterator[Condition]:
    assert rule.seconds is not None
    per: Counter[str] = Counter()
    for tracked, leg in state.legs():
        if (
            leg.open
            and tracked.expires_at is not None
            and now < tracked.expires_at <= now + rule.seconds
        ):
            per[leg.recipient or "-"] += 1
    for recipient, n in sorted(per.items()):
        yield Condition(
            rule,
            f"inbox:{recipient}",
            f"{n} message(s) to {recipient} undelivered and expiring within {rule.seconds} s",
            n,
        )


def _expired(rule: AlertRule, state: OpsState, now: float) -> Iterator[Condition]:
    assert rule.seconds is not None
    per: Counter[str] = Counter()
    for _, leg in state.legs():
        if leg.state == "expired" and now - leg.steps["expired"] <= rule.seconds:
            per[leg.recipient or "-"] += 1
    for recipient, n in sorted(per.items()):
        yield Condition(
            rule,
            f"inbox:{recipient}",
            f"{n} message(s) to {recipient} expired undelivered in the last {rule.seconds} s",
            n,
        )


def _rejections(rule: AlertRule, state: OpsState, now: float) -> Iterator[Condition]:
    assert rule.seconds is not None
    assert rule.threshold is not None
    n = sum(
        1
        for _, leg in state.legs()
        if leg.state == "rejected" and now - leg.steps["rejected"] <= rule.seconds
    )
    if n >= rule.threshold:
        yield Condition(rule, "federation", f"{n} rejection(s) in the last {rule.seconds} s", n)


def _silent(rule: AlertRule, state: OpsState, now: float) -> Iterator[Condition]:
    assert rule.seconds is not None
    for agency in state.agencies:
        beat = state.adapters.get(agency)
        last = beat.last_seen if beat is not None else state.started_at
        if now - last > rule.seconds:
            yield Condition(
                rule,
                f"adapter:{agency}",
                f"no heartbeat from the adapter of {agency} for {int(now - last)} s",
                now - last,
            )
    newest = max((beat.last_seen for beat in state.brokers.values()), default=state.started_at)
    if now - newest > rule.seconds:
        yield Condition(
            rule, "broker", f"no heartbeat from any broker for {int(now - newest)} s", now - newest
        )


def _backlog(rule: AlertRule, state: OpsState, now: float) -> Iterator[Condition]:
    assert rule.threshold is not None
    for agency, backlog in sorted(state.inboxes.items()):
        waiting = backlog.pending + backlog.ack_pending
        if waiting >= rule.threshold:
            yield Condition(
                rule,
                f"inbox:{agency}",
                f"{waiting} message(s) waiting in the inbox of {agency}",
                waiting,
            )
    if state.submissions is not None:
        waiting = state.submissions.pending + state.submissions.ack_pending
        if waiting >= rule.threshold:
            yield Condition(
                rule, "submissions", f"{waiting} submission(s) waiting for a broker", waiting
            )


_KINDS = {
    "stuck": _stuck,
    "near_expiry": _near_expiry,
    "expired": _expired,
    "rejections": _rejections,
    "silent": _silent,
    "backlog": _backlog,
}
