"""The demo client's consent: registered by `bridge up` at the Jobcenter's adapter, reused by
`bridge demo`, so that the demo runs with consent enforcement on, as production does.

Its id is kept in `<state>/demo-consent`; a consent that is gone, withdrawn or expired is
replaced by a new one. The local reference is a fictional case file number.
"""

from __future__ import annotations

import datetime
from typing import Final

import aiohttp
import msgspec

from .._files import write_private_file
from ..errors import BridgeError, TransportError
from ..ids import check_consent_ref
from .state import Stack

__all__ = [
    "DEMO_CASE_FILE",
    "DEMO_CONSENT_CATEGORIES",
    "DEMO_CONSENT_RECIPIENTS",
    "consent_request",
    "ensure_demo_consent",
]

ISSUER: Final = "jobcenter-unna"
DEMO_CONSENT_RECIPIENTS: Final = ("suchtberatung-unna", "spdi-unna")
DEMO_CONSENT_CATEGORIES: Final = ("identity", "contact", "addiction", "health")
DEMO_CASE_FILE: Final = "DEMO-4711"
"""The fictional client's case file number: the consent's local reference, kept in the adapter."""
_VALID_DAYS: Final = 180
_TIMEOUT: Final = 10.0


class _View(msgspec.Struct):
    consent_id: str
    state: str


def consent_request(now: datetime.datetime, local_ref: str) -> dict[str, object]:
    return {
        "recipients": list(DEMO_CONSENT_RECIPIENTS),
        "purposes": ["integration-support"],
        "categories": list(DEMO_CONSENT_CATEGORIES),
        "types": ["referral", "handover"],
        "valid_until": (now + datetime.timedelta(days=_VALID_DAYS)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "local_ref": local_ref,
    }


async def ensure_demo_consent(stack: Stack, session: aiohttp.ClientSession) -> tuple[str, bool]:
    """The demo consent's id, and whether it was registered just now (else: reused)."""
    path = stack.layout.root / "demo-consent"
    base = stack.adapter_url(ISSUER)
    headers = {
        "Authorization": f"Bearer {stack.token(ISSUER, ['consents:read', 'consents:write'], 600)}"
    }
    timeout = aiohttp.ClientTimeout(total=_TIMEOUT)
    try:
        if path.exists():
            known = check_consent_ref(path.read_text().strip())
            async with session.get(
                f"{base}/v1/consents/{known}", headers=headers, timeout=timeout
            ) as r:
                if r.status == 200 and msgspec.json.decode(await r.read(), type=_View).state == (
                    "active"
                ):
                    return known, False
        request = consent_request(datetime.datetime.now(datetime.UTC), DEMO_CASE_FILE)
        async with session.post(
            f"{base}/v1/consents",
            data=msgspec.json.encode(request),
            headers={**headers, "Content-Type": "application/json"},
            timeout=timeout,
        ) as r:
            data = await r.read()
            if r.status != 201:
                raise TransportError(
                    f"the adapter of {ISSUER} answered {r.status} to the demo consent",
                    reason="up.demo_consent",
                )
    except TransportError:
        raise
    except (aiohttp.ClientError, TimeoutError, OSError, msgspec.DecodeError, BridgeError) as exc:
        raise TransportError(
            f"cannot register the demo consent at {ISSUER}'s adapter ({type(exc).__name__})",
            reason="up.demo_consent",
        ) from exc
    consent_id = msgspec.json.decode(data, type=_View).consent_id
    write_private_file(path, consent_id.encode() + b"\n")
    return consent_id, True
