"""The checked-in JSON Schemas are current, valid 2020-12, and agree with the structs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from bridge import schemas
from bridge.wire import (
    BodyInvalid,
    MessageType,
    StatusEventInvalid,
    decode_body,
    decode_status_event,
    encode_body,
    encode_status_event,
)
from bridge.wire.examples import BODIES, STATUS_EVENT

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
REPLY_ID = "0b7e6c52-2f1d-4c3a-9e8b-5d4f3a2b1c0d"


def validator(name: str) -> Draft202012Validator:
    document = json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
    return Draft202012Validator(document, format_checker=Draft202012Validator.FORMAT_CHECKER)


def example(message_type: MessageType) -> dict[str, Any]:
    value = json.loads(encode_body(BODIES[message_type]))
    assert isinstance(value, dict)
    return value


def test_checked_in_schemas_are_current() -> None:
    assert schemas.check(SCHEMAS) == [], "run: python -m bridge.schemas schemas"
    for name, struct in schemas.DOCUMENTS:
        assert (SCHEMAS / f"{name}.json").read_text(encoding="utf-8") == schemas.render(
            name, struct
        )


def test_rendering_is_deterministic() -> None:
    assert schemas.generate() == schemas.generate()
    for text in schemas.generate().values():
        assert text.endswith("}\n")
        assert (
            json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + ("\n")
            == text
        )


@pytest.mark.parametrize("name", [name for name, _ in schemas.DOCUMENTS])
def test_every_schema_is_valid_2020_12(name: str) -> None:
    document = json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$id"] == f"https://bridge.example/schemas/{name}.json"
    assert document["type"] == "object"
    assert document["additionalProperties"] is False


def test_registry_covers_every_document() -> None:
    names = [name for name, _ in schemas.DOCUMENTS]
    assert len(set(names)) == len(names)
    assert {*MessageType, "status-event", "envelope-header", "audit-record"} == set(names)


@pytest.mark.parametrize("message_type", list(MessageType))
def test_examples_validate_against_their_schema(message_type: MessageType) -> None:
    validator(message_type.value).validate(example(message_type))


def test_status_event_example_validates() -> None:
    validator("status-event").validate(json.loads(encode_status_event(STATUS_EVENT)))


# Each bad document is refused by the struct and by the schema alike.
BAD: list[tuple[MessageType, tuple[str | int, ...], object]] = [
    (MessageType.REFERRAL, ("client", "nickname"), "Eri"),
    (MessageType.REFERRAL, ("client", "family_name"), "M" * 121),
    (MessageType.REFERRAL, ("client", "family_name"), " Mustermann"),
    (MessageType.REFERRAL, ("client", "given_names"), "Erika\nMaria"),
    (MessageType.REFERRAL, ("client", "date_of_birth"), "1984-02-30"),
    (MessageType.REFERRAL, ("urgency",), "asap"),
    (MessageType.REFERRAL, ("concerns",), ["alcohol"] * 9),
    (MessageType.REFERRAL, ("type",), None),
    (MessageType.HANDOVER, ("to_service",), "jobcentre"),
    (MessageType.HANDOVER, ("measures_taken", 0, "description"), ""),
    (MessageType.HANDOVER, ("contact_person", "phone"), "call me"),
    (MessageType.FEEDBACK, ("in_reply_to",), REPLY_ID.upper()),
    (MessageType.FEEDBACK, ("outcome",), {"code": "measure-ended"}),
    (MessageType.FEEDBACK, ("outcome",), {"code": "measure-started", "end_reason": "completed"}),
    (MessageType.FEEDBACK, ("occurred_on",), 20250304),
    (MessageType.RECEIPT, ("received_at",), "2025-02-20T09:15:00"),
    (MessageType.RECEIPT, ("disposition",), {"code": "rejected"}),
    (MessageType.RECEIPT, ("disposition",), {"code": "rejected", "reason": "Not For You"}),
]


def _with(doc: dict[str, Any], path: tuple[str | int, ...], value: object) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node: Any = doc
    for step in path[:-1]:
        node = node[step]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


@pytest.mark.parametrize(("message_type", "path", "value"), BAD)
def test_bad_documents_fail_schema_and_struct_alike(
    message_type: MessageType, path: tuple[str | int, ...], value: object
) -> None:
    doc = _with(example(message_type), path, value)
    assert not validator(message_type.value).is_valid(doc)
    with pytest.raises(BodyInvalid):
        decode_body(message_type, json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("field", "value"), [("sender", "a.b"), ("state", "lost"), ("at", "2025-01-01T00:00:00")]
)
def test_bad_status_events_fail_schema_and_struct_alike(field: str, value: object) -> None:
    doc = json.loads(encode_status_event(STATUS_EVENT))
    doc[field] = value
    assert not validator("status-event").is_valid(doc)
    with pytest.raises(StatusEventInvalid):
        decode_status_event(json.dumps(doc).encode())


leaves = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.text(max_size=12)
    | st.sampled_from(["2025-01-01", "2025-01-01T00:00:00Z", REPLY_ID, "alcohol", "routine"])
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(node: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found: list[tuple[str | int, ...]] = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            found.extend(_paths(child, (*prefix, key)))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found.extend(_paths(child, (*prefix, index)))
    return found


@settings(deadline=None, max_examples=300)
@given(st.data())
def test_schema_and_struct_agree_on_mutated_examples(data: st.DataObject) -> None:
    message_type = data.draw(st.sampled_from(list(MessageType)))
    doc = example(message_type)
    path = data.draw(st.sampled_from(_paths(doc)))
    doc = _with(doc, path, data.draw(values))
    try:
        decode_body(message_type, json.dumps(doc).encode())
    except BodyInvalid:
        struct_ok = False
    else:
        struct_ok = True
    assert validator(message_type.value).is_valid(doc) == struct_ok


# -- the command line -------------------------------------------------------------------------


def test_cli_writes_then_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert schemas.main(["--check", str(tmp_path)]) == 1
    assert "referral.json" in capsys.readouterr().err
    assert schemas.main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(schemas.generate())
    assert schemas.main(["--check", str(tmp_path)]) == 0
    assert schemas.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("wrote") == len(schemas.DOCUMENTS)  # once, not twice


def test_cli_check_lists_changed_missing_and_stale_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schemas.write(tmp_path)
    (tmp_path / "receipt.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "feedback.json").unlink()
    (tmp_path / "old.json").write_text("{}\n", encoding="utf-8")
    capsys.readouterr()
    assert schemas.main(["--check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    for name in ("receipt.json", "feedback.json", "old.json"):
        assert name in err
    assert "referral.json" not in err
