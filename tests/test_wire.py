"""Message bodies and status events: round trips, strict rejection, and errors that never leak
the content they reject."""

from __future__ import annotations

import copy
import datetime
import json
import re
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import ProtocolError
from bridge.ids import CODE_PATTERN, MESSAGE_TYPES, check_message_id
from bridge.wire import (
    ALLOWED_CATEGORIES,
    BODY_TYPES,
    MAX_BODY_BYTES,
    MESSAGE_ID_PATTERN,
    Address,
    AppointmentKept,
    AppointmentNotKept,
    BodyInvalid,
    ClientContact,
    ClientDeclined,
    ClientIdentity,
    ClientUnreachable,
    Concern,
    ContactPerson,
    DataCategory,
    EndReason,
    Feedback,
    Handover,
    Measure,
    MeasureEnded,
    MessageType,
    Purpose,
    Receipt,
    Referral,
    Rejected,
    Service,
    StatusEvent,
    StatusEventInvalid,
    Urgency,
    WireInvalid,
    decode_body,
    decode_status_event,
    decode_strict,
    encode_body,
    encode_status_event,
    message_type_of,
)
from bridge.wire.examples import BODIES, STATUS_EVENT

# Every value a test plants in a document contains this, so a leak is easy to spot.
SECRET = "Zq9Geheim"
REPLY_ID = "0b7e6c52-2f1d-4c3a-9e8b-5d4f3a2b1c0d"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "messages.md"


def builtins(body: object) -> dict[str, Any]:
    value = msgspec.to_builtins(body)
    assert isinstance(value, dict)
    return value


def example(message_type: MessageType) -> dict[str, Any]:
    return builtins(BODIES[message_type])


def with_value(doc: dict[str, Any], path: tuple[str | int, ...], value: object) -> bytes:
    doc = copy.deepcopy(doc)
    node: Any = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return json.dumps(doc, ensure_ascii=False).encode()


def assert_no_leak(exc: BaseException, *values: object) -> None:
    for text in (str(exc), repr(exc), str(getattr(exc, "path", ""))):
        assert SECRET not in text
        for value in values:
            assert str(value) not in text
    # The msgspec error quotes values; it must not be chained for a traceback to print.
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("message_type", list(MessageType))
def test_example_round_trips(message_type: MessageType) -> None:
    body = BODIES[message_type]
    data = encode_body(body)
    assert json.loads(data)["type"] == message_type
    assert decode_body(message_type, data) == body
    assert decode_body(message_type.value, data) == body
    assert message_type_of(body) is message_type
    assert encode_body(decode_body(message_type, data)) == data


FEEDBACK_OUTCOMES = [
    AppointmentKept(),
    AppointmentNotKept(),
    ClientDeclined(),
    ClientUnreachable(),
    MeasureEnded(end_reason=EndReason.COMPLETED),
    MeasureEnded(end_reason=EndReason.ABORTED),
    MeasureEnded(end_reason=EndReason.TRANSFERRED, transferred_to=Service.PSYCHOTHERAPY),
]


@pytest.mark.parametrize("outcome", FEEDBACK_OUTCOMES, ids=lambda o: type(o).__name__)
def test_every_feedback_outcome_round_trips(outcome: Any) -> None:
    body = Feedback(
        in_reply_to=REPLY_ID, outcome=outcome, occurred_on=datetime.date(2025, 1, 31), note="ok"
    )
    assert decode_body("feedback", encode_body(body)) == body


def test_rejected_receipt_round_trips() -> None:
    body = Receipt(
        in_reply_to=REPLY_ID,
        received_at=datetime.datetime(2025, 1, 31, 12, tzinfo=datetime.UTC),
        disposition=Rejected(reason="body.invalid"),
    )
    data = encode_body(body)
    assert json.loads(data)["disposition"] == {"code": "rejected", "reason": "body.invalid"}
    assert decode_body("receipt", data) == body


def test_minimal_referral_omits_defaults() -> None:
    body = Referral(
        client=ClientIdentity(
            family_name="Muster", given_names="Eva", date_of_birth=datetime.date(1990, 1, 1)
        ),
        client_contact=ClientContact(),
        requested_service=Service.SOCIAL_PSYCHIATRIC_COUNSELLING,
        reason="Unterstützung gewünscht.",
        urgency=Urgency.ROUTINE,
        contact_person=ContactPerson(name="Max Beispiel", phone="0221 123456"),
    )
    data = encode_body(body)
    doc = json.loads(data)
    assert doc["client_contact"] == {}
    assert "notes" not in doc
    assert "concerns" not in doc
    assert decode_body("referral", data) == body


def test_multiline_text_is_allowed_where_free_text_is() -> None:
    doc = example(MessageType.REFERRAL)
    body = decode_body("referral", with_value(doc, ("notes",), "Zeile 1\r\n\tZeile 2"))
    assert isinstance(body, Referral)
    assert body.notes == "Zeile 1\r\n\tZeile 2"


def test_datetimes_are_normalised_to_utc() -> None:
    doc = example(MessageType.RECEIPT)
    body = decode_body("receipt", with_value(doc, ("received_at",), "2025-02-20T10:15:00+01:00"))
    assert isinstance(body, Receipt)
    assert body.received_at.tzinfo is datetime.UTC
    assert body.received_at == datetime.datetime(2025, 2, 20, 9, 15, tzinfo=datetime.UTC)
    assert json.loads(encode_body(body))["received_at"] == "2025-02-20T09:15:00Z"


def test_naive_datetime_is_refused_in_python_too() -> None:
    with pytest.raises(ValueError, match="timezone"):
        Receipt(
            in_reply_to=REPLY_ID,
            received_at=datetime.datetime(2025, 1, 1),  # naive on purpose
            disposition=Rejected(reason="x"),
        )


# -- vocabularies -----------------------------------------------------------------------------


def test_message_types_match_the_envelope() -> None:
    assert tuple(MessageType) == MESSAGE_TYPES
    assert set(BODY_TYPES) == set(MessageType)


@pytest.mark.parametrize("vocabulary", [MessageType, Purpose, DataCategory])
def test_header_codes_match_the_code_pattern(vocabulary: Any) -> None:
    for member in vocabulary:
        assert re.fullmatch(CODE_PATTERN, member.value), member


def test_allowed_categories() -> None:
    assert set(ALLOWED_CATEGORIES) == set(MessageType)
    assert ALLOWED_CATEGORIES[MessageType.RECEIPT] == {DataCategory.DELIVERY_METADATA}
    assert DataCategory.IDENTITY not in ALLOWED_CATEGORIES[MessageType.FEEDBACK]
    assert DataCategory.CONTACT not in ALLOWED_CATEGORIES[MessageType.FEEDBACK]
    personal = frozenset(DataCategory) - {DataCategory.DELIVERY_METADATA}
    assert ALLOWED_CATEGORIES[MessageType.REFERRAL] == personal
    assert ALLOWED_CATEGORIES[MessageType.HANDOVER] == personal


@given(st.uuids(version=4))
def test_message_id_pattern_accepts_what_ids_accepts(value: uuid.UUID) -> None:
    text = str(value)
    assert check_message_id(text) == text
    assert re.fullmatch(MESSAGE_ID_PATTERN, text)


@given(st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), st.text()))
def test_message_id_pattern_refuses_what_ids_refuses(text: str) -> None:
    try:
        check_message_id(text)
    except ProtocolError:
        assert re.fullmatch(MESSAGE_ID_PATTERN, text) is None
    else:
        assert re.fullmatch(MESSAGE_ID_PATTERN, text)


# -- bad input, one table per type ------------------------------------------------------------

TOO_LONG = SECRET * 500
R, H, F, C = MessageType.REFERRAL, MessageType.HANDOVER, MessageType.FEEDBACK, MessageType.RECEIPT
BAD: list[tuple[MessageType, str, tuple[str | int, ...], object, str]] = [
    # (type, what, where, value, expected path)
    (R, "unknown field", ("client", SECRET + "_name"), SECRET, "$.client"),
    (R, "unknown top-level field", (SECRET,), 1, "$"),
    (R, "wrong type", ("client", "family_name"), 4711, "$.client.family_name"),
    (R, "wrong type for a block", ("client_contact",), [SECRET], "$.client_contact"),
    (R, "too long", ("client", "family_name"), TOO_LONG, "$.client.family_name"),
    (R, "too long text", ("notes",), TOO_LONG, "$.notes"),
    (R, "bad date", ("client", "date_of_birth"), "1984-02-30", "$.client.date_of_birth"),
    (R, "bad enum code", ("requested_service",), SECRET, "$.requested_service"),
    (R, "bad enum code in a list", ("concerns",), ["alcohol", SECRET], "$.concerns[1]"),
    (R, "too many concerns", ("concerns",), ["alcohol"] * 9, "$.concerns"),
    (
        R,
        "line break in a name",
        ("client", "given_names"),
        f"Eva\n{SECRET}",
        "$.client.given_names",
    ),
    (R, "leading space", ("client", "family_name"), f" {SECRET}", "$.client.family_name"),
    (R, "bidi override", ("client", "family_name"), f"{SECRET}\u202e", "$.client.family_name"),
    (R, "empty reason", ("reason",), "", "$.reason"),
    (R, "blank reason", ("reason",), " \n ", "$.reason"),
    (
        R,
        "bad e-mail",
        ("contact_person", "email"),
        f"{SECRET}-at-example",
        "$.contact_person.email",
    ),
    (R, "bad phone", ("client_contact", "phone"), f"{SECRET}", "$.client_contact.phone"),
    (R, "bad gender", ("client", "gender"), SECRET, "$.client.gender"),
    (
        R,
        "bad country",
        ("client_contact", "address", "country"),
        "deu",
        "$.client_contact.address.country",
    ),
    (
        R,
        "bad interpreter flag",
        ("client_contact", "interpreter_needed"),
        "ja",
        "$.client_contact.interpreter_needed",
    ),
    (H, "unknown field", ("measures_taken", 0, SECRET), SECRET, "$.measures_taken[0]"),
    (H, "wrong type", ("measures_taken",), SECRET, "$.measures_taken"),
    (H, "too long", ("summary",), TOO_LONG, "$.summary"),
    (
        H,
        "bad date",
        ("measures_taken", 0, "started_on"),
        "2025-13-01",
        "$.measures_taken[0].started_on",
    ),
    (H, "bad enum code", ("to_service",), SECRET, "$.to_service"),
    (H, "too many measures", ("measures_taken",), [{"description": "x"}] * 21, "$.measures_taken"),
    (F, "unknown field", ("outcome", SECRET), SECRET, "$.outcome"),
    (F, "wrong type", ("note",), [SECRET], "$.note"),
    (F, "too long", ("note",), TOO_LONG, "$.note"),
    (F, "bad date", ("occurred_on",), "2025-02-29", "$.occurred_on"),
    (F, "bad enum code", ("outcome", "code"), SECRET, "$.outcome.code"),
    (
        F,
        "bad end reason",
        ("outcome",),
        {"code": "measure-ended", "end_reason": SECRET},
        "$.outcome.end_reason",
    ),
    (F, "measure ended without reason", ("outcome",), {"code": "measure-ended"}, "$.outcome"),
    (F, "bad in_reply_to", ("in_reply_to",), SECRET, "$.in_reply_to"),
    (F, "upper-case in_reply_to", ("in_reply_to",), REPLY_ID.upper(), "$.in_reply_to"),
    (F, "version 1 in_reply_to", ("in_reply_to",), str(uuid.uuid1()), "$.in_reply_to"),
    (C, "unknown field", ("disposition", SECRET), 1, "$.disposition"),
    (C, "wrong type", ("received_at",), 1700000000, "$.received_at"),
    (
        C,
        "too long",
        ("disposition",),
        {"code": "rejected", "reason": "a" * 65},
        "$.disposition.reason",
    ),
    (C, "bad datetime", ("received_at",), "2025-02-30T00:00:00Z", "$.received_at"),
    (C, "naive datetime", ("received_at",), "2025-02-20T09:15:00", "$.received_at"),
    (C, "bad disposition code", ("disposition", "code"), SECRET, "$.disposition.code"),
    (
        C,
        "bad reason code",
        ("disposition",),
        {"code": "rejected", "reason": SECRET},
        "$.disposition.reason",
    ),
    (C, "rejected without reason", ("disposition",), {"code": "rejected"}, "$.disposition"),
    (C, "bad in_reply_to", ("in_reply_to",), f"{REPLY_ID}{SECRET}", "$.in_reply_to"),
]


@pytest.mark.parametrize(
    ("message_type", "what", "where", "value", "path"), BAD, ids=[f"{b[0]}-{b[1]}" for b in BAD]
)
def test_bad_input_names_the_path_not_the_value(
    message_type: MessageType, what: str, where: tuple[str | int, ...], value: object, path: str
) -> None:
    data = with_value(example(message_type), where, value)
    with pytest.raises(BodyInvalid) as info:
        decode_body(message_type, data)
    exc = info.value
    assert isinstance(exc, ProtocolError)
    assert exc.reason == "body.invalid"
    assert exc.path == path
    assert f"at {path}:" in str(exc)
    leaks = [value] if isinstance(value, str | int) and value not in ("", "ja") else []
    assert_no_leak(exc, *leaks)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "body.malformed"),
        (b"{", "body.malformed"),
        (encode_body(BODIES[MessageType.REFERRAL]) + b" x", "body.malformed"),
        (b'{"type": "referral"} x', "body.invalid"),  # validation comes first
        (b'{"type": "referral", "notes": "\xff' + SECRET.encode() + b'"}', "body.malformed"),
        (b'{"type": "referral", "notes": "\\ud800"}', "body.malformed"),
        (b"[]", "body.invalid"),
        (b"null", "body.invalid"),
        (b'{"type": 1}', "body.invalid"),
        (b"{}", "body.invalid"),
        (b'{"type": "' + SECRET.encode() + b'"}', "body.invalid"),
    ],
)
def test_garbage_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(BodyInvalid) as info:
        decode_body("referral", data)
    assert info.value.reason == reason
    assert_no_leak(info.value)


def test_deep_nesting_is_refused_not_crashed() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(BodyInvalid):
        decode_body("referral", b'{"type": "referral", "notes": ' + deep + b"}")

    class Envelope(msgspec.Struct):
        body: msgspec.Raw

    with pytest.raises(WireInvalid) as info:
        decode_strict(
            msgspec.json.Decoder(Envelope),
            b'{"body": ' + deep + b"}",
            limit=1_000_000,
            error=WireInvalid,
            what="request",
            prefix="request",
        )
    assert info.value.reason == "request.malformed"
    assert_no_leak(info.value)


def test_body_of_another_type_is_a_mismatch() -> None:
    data = encode_body(BODIES[MessageType.FEEDBACK])
    for message_type in (R, H, C):
        with pytest.raises(BodyInvalid) as info:
            decode_body(message_type, data)
        assert info.value.reason == "body.type_mismatch"
        assert info.value.path == "$.type"


def test_invalid_body_claiming_another_type_is_a_mismatch() -> None:
    with pytest.raises(BodyInvalid) as info:
        decode_body("referral", b'{"type": "feedback"}')
    assert info.value.reason == "body.type_mismatch"


def test_unknown_message_type() -> None:
    data = encode_body(BODIES[MessageType.REFERRAL])
    with pytest.raises(BodyInvalid) as info:
        decode_body(SECRET, data)
    assert info.value.reason == "body.unknown_type"
    assert_no_leak(info.value)


def test_repeated_key_is_refused() -> None:
    data = encode_body(BODIES[MessageType.RECEIPT])
    doubled = data[:-1] + b',"in_reply_to":"' + REPLY_ID.encode() + b'"}'
    with pytest.raises(BodyInvalid) as info:
        decode_body("receipt", doubled)
    assert info.value.reason == "body.invalid"


def test_oversized_body_is_refused_before_parsing() -> None:
    data = b" " * (MAX_BODY_BYTES + 1)
    with pytest.raises(BodyInvalid) as info:
        decode_body("referral", data)
    assert info.value.reason == "body.too_large"


def test_encode_checks_structs_built_in_python() -> None:
    referral = BODIES[MessageType.REFERRAL]
    assert isinstance(referral, Referral)
    bad = msgspec.structs.replace(referral, reason=TOO_LONG)
    with pytest.raises(BodyInvalid) as info:
        encode_body(bad)
    assert info.value.path == "$.reason"
    assert_no_leak(info.value)
    with pytest.raises(BodyInvalid):
        encode_body(msgspec.structs.replace(referral, notes="\ud800"))
    with pytest.raises(TypeError):
        message_type_of(STATUS_EVENT)  # type: ignore[arg-type]


# -- bounds are coherent ----------------------------------------------------------------------

EMOJI = "\U0001f600"  # four bytes in UTF-8, a surrogate pair (12 bytes) when \u-escaped


def _text(n: int) -> str:
    return EMOJI * n


def _maximal_client() -> tuple[ClientIdentity, ClientContact]:
    identity = ClientIdentity(
        family_name=_text(120),
        given_names=_text(120),
        date_of_birth=datetime.date(1970, 1, 1),
        birth_name=_text(120),
    )
    contact = ClientContact(
        address=Address(
            street=_text(120),
            house_number=_text(16),
            extra=_text(120),
            postal_code="A" * 10,
            city=_text(120),
        ),
        phone="0" * 32,
        email="a" * 240 + "@example.org",
        preferred_time=_text(200),
        language="deu-" + "-".join(["abcdefgh"] * 3),
        interpreter_needed=True,
    )
    return identity, contact


def _maximal_bodies() -> list[Referral | Handover]:
    identity, contact = _maximal_client()
    person = ContactPerson(
        name=_text(120), phone="0" * 32, email="b" * 240 + "@example.org", unit=_text(200)
    )
    referral = Referral(
        client=identity,
        client_contact=contact,
        requested_service=Service.ADDICTION_COUNSELLING,
        concerns=(Concern.ALCOHOL,) * 8,
        reason=_text(1000),
        urgency=Urgency.URGENT,
        contact_person=person,
        notes=_text(4000),
    )
    handover = Handover(
        client=identity,
        client_contact=contact,
        from_service=Service.SOCIAL_PSYCHIATRIC_COUNSELLING,
        to_service=Service.PSYCHOTHERAPY,
        summary=_text(4000),
        measures_taken=(
            Measure(
                description=_text(1000),
                started_on=datetime.date(2020, 1, 1),
                ended_on=datetime.date(2021, 1, 1),
            ),
        )
        * 20,
        reason=_text(1000),
        urgency=Urgency.URGENT,
        contact_person=person,
        notes=_text(4000),
    )
    return [referral, handover]


@pytest.mark.parametrize("body", _maximal_bodies(), ids=["referral", "handover"])
def test_largest_valid_body_fits_however_it_is_escaped(body: Referral | Handover) -> None:
    data = encode_body(body)
    assert decode_body(message_type_of(body), data) == body
    # A local system's JSON library may \u-escape every non-ASCII character.
    escaped = json.dumps(builtins(body), ensure_ascii=True).encode()
    assert len(escaped) <= MAX_BODY_BYTES
    assert decode_body(message_type_of(body), escaped) == body


# -- nothing but BodyInvalid, and nothing leaks, whatever comes in -----------------------------

FIELD_NAMES = sorted(
    {
        field.encode_name
        for struct in (
            Referral,
            Handover,
            Feedback,
            Receipt,
            ClientIdentity,
            ClientContact,
            Address,
            ContactPerson,
            Measure,
            MeasureEnded,
            Rejected,
        )
        for field in msgspec.structs.fields(struct)
    }
    | {"type", "code"}
)
secret_text = st.text(max_size=30).map(lambda s: SECRET + s)
keys = st.sampled_from(FIELD_NAMES) | secret_text
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | secret_text
    | st.sampled_from([*MessageType, *Service, "2025-01-01", REPLY_ID])
)
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)


def _decode_or_invalid(message_type: MessageType, data: bytes) -> None:
    """Either a valid body that survives a round trip, or `BodyInvalid` that leaks nothing."""
    try:
        body = decode_body(message_type, data)
    except BodyInvalid as exc:
        error: BodyInvalid | None = exc
    else:
        error = None
        assert decode_body(message_type, encode_body(body)) == body
    if error is not None:
        assert error.reason.startswith("body.")
        assert_no_leak(error)


@settings(deadline=None)
@given(st.sampled_from(list(MessageType)), st.binary(max_size=512))
def test_random_bytes_raise_only_body_invalid(message_type: MessageType, data: bytes) -> None:
    _decode_or_invalid(message_type, data)


@settings(deadline=None)
@given(
    st.sampled_from(list(MessageType)),
    st.dictionaries(keys, json_values, max_size=8),
    st.sampled_from([None, *MessageType]),
)
def test_random_json_objects_raise_only_body_invalid(
    message_type: MessageType, doc: dict[str, Any], tag: MessageType | None
) -> None:
    if tag is not None:
        doc["type"] = tag.value
    _decode_or_invalid(message_type, json.dumps(doc).encode())


def _paths(node: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found: list[tuple[str | int, ...]] = [prefix] if prefix else []
    items: list[tuple[str | int, Any]] = []
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    for key, child in items:
        found.extend(_paths(child, (*prefix, key)))
    return found


@st.composite
def mutated_examples(draw: st.DrawFn) -> tuple[MessageType, bytes]:
    """A valid example with one value replaced, one key added or one key removed."""
    message_type = draw(st.sampled_from(list(MessageType)))
    doc = example(message_type)
    path = draw(st.sampled_from(_paths(doc)))
    parent: Any = doc
    for step in path[:-1]:
        parent = parent[step]
    action = draw(st.sampled_from(["replace", "add", "remove"]))
    if action == "replace":
        parent[path[-1]] = draw(json_values)
    elif action == "add" and isinstance(parent, dict):
        parent[draw(keys)] = draw(json_values)
    elif isinstance(parent, dict):
        del parent[path[-1]]
    return message_type, json.dumps(doc).encode()


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_examples())
def test_mutated_examples_raise_only_body_invalid(case: tuple[MessageType, bytes]) -> None:
    _decode_or_invalid(*case)


# -- status events ----------------------------------------------------------------------------


def test_status_event_round_trips() -> None:
    data = encode_status_event(STATUS_EVENT)
    assert decode_status_event(data) == STATUS_EVENT
    minimal = StatusEvent(
        message_id=REPLY_ID,
        sender="jc-1",
        state="accepted",  # type: ignore[arg-type]
        at=datetime.datetime(2025, 1, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
        component="adapter",  # type: ignore[arg-type]
    )
    decoded = decode_status_event(encode_status_event(minimal))
    assert decoded.at == datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    assert set(json.loads(encode_status_event(minimal))) == {
        "message_id",
        "sender",
        "state",
        "at",
        "component",
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sender", "jc.1"),
        ("sender", "jc-*"),
        ("sender", "bridge.submit.>"),
        ("recipient", "-jc"),
        ("recipient", "JC"),
        ("message_id", SECRET),
        ("state", SECRET.lower()),
        ("component", "ops"),
        ("reason", f"{SECRET}.x"),
        ("reason", "a" * 65),
        ("at", "2025-01-01T00:00:00"),
        ("message_type", "letter"),
        (SECRET, 1),
    ],
)
def test_bad_status_event_is_refused(field: str, value: object) -> None:
    doc = builtins(STATUS_EVENT)
    doc[field] = value
    with pytest.raises(StatusEventInvalid) as info:
        decode_status_event(json.dumps(doc).encode())
    assert info.value.reason == "status.invalid"
    assert info.value.path == (f"$.{field}" if field != SECRET else "$")
    assert_no_leak(info.value, value)


@settings(deadline=None)
@given(
    st.binary(max_size=256)
    | st.dictionaries(keys, json_values).map(lambda d: json.dumps(d).encode())
)
def test_random_status_events_raise_only_status_event_invalid(data: bytes) -> None:
    with pytest.raises(StatusEventInvalid) as info:
        decode_status_event(data)
    assert info.value.reason.startswith("status.")
    assert_no_leak(info.value)


# -- the documentation's examples are valid ---------------------------------------------------


def test_docs_examples_decode() -> None:
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
    seen = set()
    for block in blocks:
        doc = json.loads(block)
        if "type" in doc:
            body = decode_body(doc["type"], block.encode())
            seen.add(message_type_of(body))
        else:
            decode_status_event(block.encode())
    assert seen == set(MessageType)
