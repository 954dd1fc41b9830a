"""The routing policy the tests use: the demo policy, made for the test federation.

`bridge up`'s demo policy (bridge/up/demo-policy.toml) with the test federation's id, so that
what the tests enforce is what the demo ships. `signed_policy` signs a text with the test
federation's trust anchor.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
from envelope_helpers import FEDERATION_ID, Federation

from bridge.crypto import sign_document
from bridge.policy import CONTEXT, MAGIC, Policy, PolicyBody, sign_policy

__all__ = ["DEMO_POLICY", "LEGACY_POLICY", "POLICY", "signed_legacy_policy", "signed_policy"]

DEMO_POLICY = (Path(__file__).parent.parent / "bridge" / "up" / "demo-policy.toml").read_text()
POLICY = DEMO_POLICY.replace('federation = "demo-unna"', f'federation = "{FEDERATION_ID}"', 1)
assert POLICY != DEMO_POLICY
LEGACY_POLICY = "".join(
    line
    for line in (
        POLICY[: POLICY.index("# How long the records")] + POLICY[POLICY.index("[[flows]]") :]
    ).splitlines(keepends=True)
    if not line.startswith("pull_wait")
)
"""The test policy as it was before `[retention]` and `pull_wait` existed: refused today."""


def signed_policy(fed: Federation, text: str = POLICY, serial: int = 1) -> tuple[bytes, Policy]:
    return sign_policy(text, fed.anchor, serial=serial, now=fed.now)


def signed_legacy_policy(fed: Federation, serial: int = 1) -> bytes:
    """`LEGACY_POLICY` signed by the trust anchor as an older bridge signed it, without the
    checks `sign_policy` makes today: a file every component must refuse at start-up."""
    body = PolicyBody(
        v=1, federation=FEDERATION_ID, serial=serial, issued_at=fed.now, source=LEGACY_POLICY
    )
    return sign_document(MAGIC, CONTEXT, msgspec.msgpack.encode(body), fed.anchor)


def legacy_fault_line() -> int:
    """The line `parse_policy` names for `LEGACY_POLICY`: the first type without `pull_wait`."""
    import pytest

    from bridge.errors import PolicyFileError
    from bridge.policy import parse_policy

    with pytest.raises(PolicyFileError) as info:
        parse_policy(LEGACY_POLICY)
    assert info.value.line is not None
    return info.value.line
