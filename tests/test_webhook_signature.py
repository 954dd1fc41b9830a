"""Webhook signatures: the test vector and the verification recipe in docs/adapter.md, against
the code that signs, and a rotation on a running stack (two secrets valid at once)."""

# ruff: noqa: F811 - the `e2e` fixture is imported from test_e2e and requested by name

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from test_e2e import COUNSELLING, E2E, JOBCENTER, e2e  # noqa: F401 - fixture

from bridge.adapters.service import Adapter
from bridge.config import load_adapter_config
from bridge.demo import demo_referral
from bridge.http.signing import sign
from bridge.up.sink import verify_webhook_signature

DOC = Path(__file__).resolve().parents[1] / "docs" / "adapter.md"


def _doc_section() -> str:
    text = DOC.read_text()
    return text[text.index("#### Verifying a call") : text.index("#### Rotating the secret")]


def _vector() -> dict[str, str]:
    block = re.search(r"```text\n(.*?)```", _doc_section(), re.DOTALL)
    assert block is not None, "no test vector block in docs/adapter.md"
    lines = (line.partition(":") for line in block.group(1).splitlines())
    return {name.strip(): value.strip() for name, _, value in lines}


def _recipe() -> Callable[..., bool]:
    code = re.search(r"```python\n(.*?)```", _doc_section(), re.DOTALL)
    assert code is not None, "no recipe in docs/adapter.md"
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)  # noqa: S102 - our own documentation, run as a reader would
    verify: Callable[..., bool] = namespace["verify"]
    return verify


def test_the_documented_vector_is_what_the_adapter_sends() -> None:
    v = _vector()
    new, old, body = v["secret"].encode(), v["old"].encode(), v["body"].encode()
    t = int(v["timestamp"])
    assert sign([new], t, body) == v["header"]
    assert sign([new, old], t, body) == v["rotating"]


def test_the_documented_recipe_verifies_the_vector_and_nothing_else() -> None:
    v, verify = _vector(), _recipe()
    new, old, body = v["secret"].encode(), v["old"].encode(), v["body"].encode()
    t = int(v["timestamp"])
    for header in (v["header"], v["rotating"]):
        assert verify([new], header, body, now=t)
        assert verify([old, new], header, body, now=t)
        assert not verify([new], header, body + b" ", now=t)
        assert not verify([new], header, body, now=t + 301)  # a replay, later
        assert not verify([b"another-secret-of-some-length"], header, body, now=t)
    assert verify([old], v["rotating"], body, now=t)  # the receiver that has not moved yet
    assert not verify([old], v["header"], body, now=t)
    # The demo sink's check agrees with the recipe.
    for secret in (new, old):
        headers = {"Bridge-Signature": v["rotating"]}
        assert verify_webhook_signature(secret, headers, body, now=t)


async def test_rotation_keeps_a_receiver_on_the_old_secret_working(
    e2e: E2E, tmp_path: Path
) -> None:
    """The adapter signs with a new secret and the old one; the sink still holds the old."""
    layout = e2e.stack.layout
    old_file = layout.webhook_secret(COUNSELLING)
    new_file = tmp_path / "webhook.secret.new"
    new_file.write_bytes(b"a-brand-new-webhook-secret-0123456789\n")
    new_file.chmod(0o600)
    config = load_adapter_config(layout.adapter_config(COUNSELLING))
    rotated = msgspec.structs.replace(
        config,
        delivery=msgspec.structs.replace(
            config.delivery,
            webhook_secret_file=str(new_file),
            webhook_old_secret_file=str(old_file),
        ),
    )
    await e2e.adapters.pop(COUNSELLING).stop()
    adapter = Adapter(rotated, fetch_timeout=1.0)
    await adapter.start()
    e2e.adapters[COUNSELLING] = adapter

    message_id = await e2e.submit(JOBCENTER, [COUNSELLING], demo_referral())
    await e2e.wait_pushed(message_id)  # the sink verified the call with the old secret
    await e2e.wait_states(JOBCENTER, message_id, {COUNSELLING: "receipted"})
