"""Identifier patterns: what the checks and the msgspec struct constraints accept."""

from __future__ import annotations

from typing import Annotated, get_args, get_type_hints

import msgspec
import pytest

from bridge import ids
from bridge.errors import ProtocolError
from bridge.wire import MESSAGE_ID_PATTERN, REASON_CODE_PATTERN

PATTERNS = {
    "agency": (ids.AGENCY_ID_PATTERN, "jobcenter-unna"),
    "code": (ids.CODE_PATTERN, "integration-support"),
    "consent": (ids.CONSENT_REF_PATTERN, "c-" + "ab" * 16),
    "consent-uuid": (ids.CONSENT_REF_PATTERN, "0b9e4a1c-3d2f-4e5a-8b7c-1d2e3f405162"),
    "message-id": (MESSAGE_ID_PATTERN, "0b9e4a1c-3d2f-4e5a-8b7c-1d2e3f405162"),
    "reason": (REASON_CODE_PATTERN, "policy.route_denied"),
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("suffix", ["", "\n", "\r\n", " ", "\n\n"])
def test_struct_patterns_refuse_trailing_line_breaks(name: str, suffix: str) -> None:
    # msgspec matches Meta(pattern=...) with re.search, where a bare `$` also matches before a
    # final newline; the shared patterns must not let "health\n" pass as "health".
    pattern, good = PATTERNS[name]
    kind = Annotated[str, msgspec.Meta(pattern=pattern)]
    data = msgspec.json.encode(good + suffix)
    if suffix:
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(data, type=kind)
    else:
        assert msgspec.json.decode(data, type=kind) == good


@pytest.mark.parametrize(
    "value",
    ["", "-a", "a-", "A", "a.b", "a*", "a>", "a b", "a\n", "x" * 64, 7, None, "ä"],
)
def test_check_agency_id_refuses(value: object) -> None:
    with pytest.raises(ProtocolError) as info:
        ids.check_agency_id(value)
    assert info.value.reason == "id.agency_malformed"


@pytest.mark.parametrize("value", ["a", "0", "spdi-unna", "a" * 63, "a-b-c"])
def test_check_agency_id_accepts(value: str) -> None:
    assert ids.check_agency_id(value) == value


def test_message_ids_are_lowercase_v4_uuids() -> None:
    made = ids.new_message_id()
    assert ids.check_message_id(made) == made
    for bad in [made.upper(), made + "\n", made[:14] + "1" + made[15:], made[:-1], 5]:
        with pytest.raises(ProtocolError):
            ids.check_message_id(bad)


def test_consent_and_code_checks() -> None:
    assert ids.check_consent_ref("c-" + "0" * 32)
    assert ids.check_code("health") == "health"
    for bad in ["c-" + "0" * 31, "C-" + "0" * 32, "c-" + "0" * 32 + "\n", "Fallnr-123"]:
        with pytest.raises(ProtocolError):
            ids.check_consent_ref(bad)
    for bad in ["Health", "health\n", "1abc", "a" * 49, ""]:
        with pytest.raises(ProtocolError):
            ids.check_code(bad)


def test_envelope_header_types_are_the_message_types() -> None:
    # The header's `type` Literal is what verify enforces; it must not drift from the list.
    from bridge.crypto import Header

    assert get_args(get_type_hints(Header)["type"]) == ids.MESSAGE_TYPES
