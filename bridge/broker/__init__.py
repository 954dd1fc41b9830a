"""The broker: checks every submission and routes it to its recipients' inboxes, or rejects it.

It never holds a decryption key: it verifies the sender's signatures and the signed cleartext
header against the key directory, applies the signed routing policy (bridge.policy), and
forwards the exact bytes it received. docs/broker.md describes the checks, the reason codes and
why nothing is routed twice.

    broker = Broker(load_broker_config(path))
    async with broker:          # or: await broker.run() elsewhere, then broker.stop()
        ...
"""

from __future__ import annotations

from ._nats import inbox_msg_id, status_msg_id
from ._routing import Submission, Verdict, decide, inbox_ttl, parse_submission
from ._service import Broker
from ._stats import BrokerStatistics

__all__ = [
    "Broker",
    "BrokerStatistics",
    "Submission",
    "Verdict",
    "decide",
    "inbox_msg_id",
    "inbox_ttl",
    "parse_submission",
    "status_msg_id",
]
