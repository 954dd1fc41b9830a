"""The routing policy the tests use: the demo policy, made for the test federation.

`bridge up`'s demo policy (bridge/up/demo-policy.toml) with the test federation's id, so that
what the tests enforce is what the demo ships. `signed_policy` signs a text with the test
federation's trust anchor.
"""

from __future__ import annotations

from pathlib import Path

from envelope_helpers import FEDERATION_ID, Federation

from bridge.policy import Policy, sign_policy

__all__ = ["DEMO_POLICY", "POLICY", "signed_policy"]

DEMO_POLICY = (Path(__file__).parent.parent / "bridge" / "up" / "demo-policy.toml").read_text()
POLICY = DEMO_POLICY.replace('federation = "demo-unna"', f'federation = "{FEDERATION_ID}"', 1)
assert POLICY != DEMO_POLICY


def signed_policy(fed: Federation, text: str = POLICY, serial: int = 1) -> tuple[bytes, Policy]:
    return sign_policy(text, fed.anchor, serial=serial, now=fed.now)
