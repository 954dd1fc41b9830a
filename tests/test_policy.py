"""The routing policy without NATS: the file format, every refusal with its line, the decisions,
and the signed document (tamper, wrong signer, rollback, a holder keeping its last good policy).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec
import pytest
from envelope_helpers import DAY, RECIPIENTS, SENDER, STRANGER, Federation, federation
from policy_helpers import DEMO_POLICY, POLICY, signed_policy

from bridge.crypto import generate_key, sign_document
from bridge.errors import PolicyError, PolicyFileError, SignedPolicyError
from bridge.policy import (
    CONTEXT,
    MAGIC,
    FlowRequest,
    PolicyHolder,
    PolicySerialState,
    load_policy,
    load_policy_file,
    parse_policy,
    sign_policy,
)

COUNSELLING, SPDI = RECIPIENTS


@pytest.fixture
def fed() -> Federation:
    return federation()


def request(**changes: object) -> FlowRequest:
    fields: dict[str, object] = {
        "sender": SENDER,
        "recipients": (COUNSELLING, SPDI),
        "message_type": "referral",
        "purpose": "counselling",
        "categories": ("contact", "addiction"),
        "size": 20_000,
        "iat": 1000,
        "exp": 1000 + 7 * DAY,
    }
    fields.update(changes)
    return FlowRequest(**fields)  # type: ignore[arg-type]


# -- decisions --------------------------------------------------------------------------------


def test_flow_names_what_is_allowed_and_whose_consent_counts(fed: Federation) -> None:
    rules = parse_policy(POLICY)
    flow = rules.flow(SENDER, COUNSELLING, "referral", fed.directory)
    assert flow is not None
    assert flow.rule.name == "jobcenter-refers"
    assert flow.consent_required
    assert flow.consent_issuers == {SENDER}
    assert "addiction" in flow.categories
    assert "counselling" in flow.purposes
    assert flow.limits.inbox_ttl == 14 * DAY
    back = rules.flow(COUNSELLING, SENDER, "feedback", fed.directory)
    assert back is not None
    assert back.consent_issuers == {COUNSELLING}
    assert rules.max_consent_validity == 365 * DAY
    # Default deny: the other direction, a type without a rule, an agency outside the directory.
    assert rules.flow(COUNSELLING, SENDER, "referral", fed.directory) is None
    assert rules.flow(SENDER, COUNSELLING, "feedback", fed.directory) is None
    assert rules.flow(COUNSELLING, SPDI, "referral", fed.directory) is None
    assert rules.flow(STRANGER, COUNSELLING, "referral", fed.directory) is None


def test_system_notices_follow_allowed_flows_both_ways_without_consent(fed: Federation) -> None:
    rules = parse_policy(POLICY)
    for sender, recipient in ((COUNSELLING, SENDER), (SENDER, SPDI)):
        flow = rules.flow(sender, recipient, "receipt", fed.directory)
        assert flow is not None
        assert flow.system
        assert not flow.consent_required
        assert flow.purposes == {"delivery-confirmation"}
        assert flow.categories == {"delivery-metadata"}
    # Two services no rule connects may not even exchange receipts.
    assert rules.flow(COUNSELLING, SPDI, "receipt", fed.directory) is None


def test_issuers_may_name_roles(fed: Federation) -> None:
    text = POLICY.replace(
        'consent_issuers = ["sender"]    # the service',
        'consent_issuers = ["sender", "jobcenter", "social-psychiatric-service"]  # the service',
    )
    flow = parse_policy(text).flow(COUNSELLING, SENDER, "feedback", fed.directory)
    assert flow is not None
    assert flow.consent_issuers == {COUNSELLING, SENDER, SPDI}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"sender": COUNSELLING, "recipients": (SENDER,)}, "policy.route_denied"),
        ({"recipients": (COUNSELLING, STRANGER)}, "policy.route_denied"),
        ({"message_type": "feedback"}, "policy.route_denied"),
        ({"purpose": "delivery-confirmation"}, "policy.purpose_denied"),
        ({"categories": ("contact", "delivery-metadata")}, "policy.category_denied"),
        ({"size": 1048577}, "policy.too_large"),
        ({"exp": 1000 + 31 * DAY}, "policy.lifetime"),
        ({"size": None}, None),
        ({"attachment_types": ("application/pdf", "image/png")}, None),
        (
            {"attachment_types": ("application/pdf", "application/zip")},
            "policy.attachment_type_denied",
        ),
        (
            {
                "message_type": "feedback",
                "sender": COUNSELLING,
                "recipients": (SENDER,),
                "categories": ("health",),
                "attachment_types": ("application/pdf",),
            },
            "policy.attachment_type_denied",
        ),
    ],
)
def test_evaluate_gives_one_reason_per_denial(
    fed: Federation, changes: dict[str, object], reason: str | None
) -> None:
    decision = parse_policy(POLICY).evaluate(request(**changes), fed.directory)
    assert decision.reason == reason
    assert decision.allowed is (reason is None)
    if reason is None:
        assert [f.recipient for f in decision.flows] == list(request(**changes).recipients)
    else:
        with pytest.raises(PolicyError) as info:
            decision.raise_if_denied()
        assert info.value.reason == reason


# -- refusing bad files -----------------------------------------------------------------------


def _line_of(text: str, needle: str) -> int:
    """The last line holding `needle`: the second of two is the one at fault."""
    return [i for i, line in enumerate(text.splitlines(), 1) if needle in line][-1]


@pytest.mark.parametrize(
    ("old", "new", "reason", "at"),
    [
        ('inbox_ttl = "14d"       #', 'inbox_ttl = = "14d"  #', "policy.syntax", "inbox_ttl = ="),
        ("counselling = ", "doctor-ish = ", "policy.unknown_name", "doctor-ish = "),
        ('to = "jobcenter"', 'to = "doctor"', "policy.unknown_name", 'to = "doctor"'),
        ('types = ["feedback"]', 'types = ["letter"]', "policy.unknown_name", '["letter"]'),
        ("[types.handover]", "[types.memo]", "policy.unknown_name", "[types.memo]"),
        ('"case-handover"]', '"marketing"]', "policy.unknown_name", '"marketing"]'),
        ('categories = ["health",', 'categories = ["hobbies",', "policy.unknown_name", "hobbies"),
        (
            'types = ["feedback"]',
            'types = ["feedback", "receipt"]',
            "policy.contradiction",
            '"receipt"]',
        ),
        (
            'categories = ["health",',
            'categories = ["identity", "health",',
            "policy.contradiction",
            '["identity", "health"',
        ),
        (
            'name = "services-answer"\nfrom = ["counselling", "social-psychiatric-service"]\n'
            'to = "jobcenter"\ntypes = ["feedback"]',
            'name = "services-answer"\nfrom = "jobcenter"\n'
            'to = "counselling"\ntypes = ["referral"]',
            "policy.contradiction",
            "",
        ),
        (
            'consent_required = true\nconsent_issuers = ["sender"]    # the service',
            'consent_required = false\nconsent_issuers = ["sender"]    # the service',
            "policy.contradiction",
            "# the service",
        ),
        ('inbox_ttl = "7d"', 'inbox_ttl = "15d"', "policy.contradiction", '"15d"'),
        (  # the recipient's own consent could never name the recipient
            'consent_issuers = ["sender"]    # the service',
            'consent_issuers = ["sender", "recipient"]    # the service',
            "policy.contradiction",
            '"recipient"]',
        ),
        (
            'consent_issuers = ["sender"]    # the service',
            'consent_issuers = ["doctor"]    # the service',
            "policy.unknown_name",
            '["doctor"]',
        ),
        ('max_lifetime = "14d"', 'max_lifetime = "14 weeks"', "policy.file_invalid", "14 weeks"),
        ("max_bytes = 65536", "max_bytes = 12", "policy.file_invalid", "max_bytes = 12"),
        (
            '"image/tiff", "text/plain"]',
            '"image/tiff", "Text/Plain"]',
            "policy.file_invalid",
            '"Text/Plain"]',
        ),
        (
            '"image/tiff", "text/plain"]',
            '"image/tiff", "image/png"]',
            "policy.file_invalid",
            '"image/tiff", "image/png"]',
        ),
        ('name = "services-answer"', 'name = "jobcenter-refers"', "policy.contradiction", ""),
        ("[types.feedback]", "[types.referral]", "policy.syntax", "[types.referral]"),
        (
            'consent_required = true\nconsent_issuers = ["sender"]    # only',
            'color = "red"\nconsent_required = true\nconsent_issuers = ["sender"]    # only',
            "policy.file_invalid",
            'color = "red"',
        ),
    ],
)
def test_bad_files_are_refused_with_the_line(old: str, new: str, reason: str, at: str) -> None:
    assert old in POLICY
    text = POLICY.replace(old, new, 1)
    with pytest.raises(PolicyFileError) as info:
        parse_policy(text)
    assert info.value.reason == reason
    if at:
        assert info.value.line == _line_of(text, at)
    else:  # a rule against another: the line of the second rule's [[flows]]
        assert (
            info.value.line
            == [i for i, s in enumerate(text.splitlines(), 1) if s == "[[flows]]"][1]
        )
    assert str(info.value).startswith(f"line {info.value.line}: ")


def test_a_feedback_rule_from_an_undeclared_role_is_refused() -> None:
    text = POLICY.replace('social-psychiatric-service = "Sozialpsychiatrischer Dienst"\n', "")
    with pytest.raises(PolicyFileError) as info:
        parse_policy(text)
    assert info.value.reason == "policy.unknown_name"
    assert "declared role" in str(info.value)


def test_a_rule_for_a_type_without_limits_is_refused_at_the_rule() -> None:
    start = POLICY.index("[types.handover]")
    text = POLICY[:start] + POLICY[POLICY.index("[types.feedback]") :]
    with pytest.raises(PolicyFileError) as info:
        parse_policy(text)
    assert info.value.reason == "policy.file_invalid"
    assert info.value.line == _line_of(text, 'types = ["referral", "handover"]')
    assert "[types.handover] sets no limits" in str(info.value)


def test_a_policy_without_flows_or_tables_is_refused() -> None:
    for text in ("", POLICY.split("[[flows]]")[0], "[policy]\nfederation = 'x'\n"):
        with pytest.raises(PolicyFileError):
            parse_policy(text)


# -- signed -----------------------------------------------------------------------------------


def test_signed_policy_round_trips_with_its_hash(fed: Federation) -> None:
    data, signed = signed_policy(fed, serial=3)
    loaded = load_policy(data, fed.anchor.public_record())
    assert loaded.hash == signed.hash
    assert len(loaded.hash) == 64
    assert (loaded.serial, loaded.federation, loaded.source) == (3, "kreis-unna", POLICY)
    with pytest.raises(AttributeError):
        loaded.rules = loaded.rules  # type: ignore[misc]
    # Another text, or the same text as another serial, is another version.
    assert signed_policy(fed, serial=4)[1].hash != loaded.hash


def test_tampered_foreign_and_misdirected_documents_are_refused(fed: Federation) -> None:
    data, _ = signed_policy(fed)
    anchor = fed.anchor.public_record()
    tampered = bytearray(data)
    tampered[len(data) // 3] ^= 1
    other_anchor = generate_key("kreis-unna", "sign", fed.now - DAY, fed.now + DAY)
    foreign, _ = sign_policy(POLICY, other_anchor, serial=1, now=fed.now)
    # A key-holding agency signs the same body: not the anchor.
    agency_signed, _ = sign_policy(POLICY, fed.key(f"{SENDER}/sign"), serial=1, now=fed.now)
    # The anchor's signature over a directory never passes as a policy.
    as_directory = MAGIC + fed.directory_bytes[4:]
    # Signed by the anchor under another context string.
    other_context = sign_document(MAGIC, b"bridge/directory/v1", data[25:-3373], fed.anchor)
    for bad, reason in (
        (bytes(tampered), "policy.signature_invalid"),
        (foreign, "policy.signature_invalid"),
        (agency_signed, "policy.signature_invalid"),
        (as_directory, "policy.signature_invalid"),
        (other_context, "policy.signature_invalid"),
        (fed.directory_bytes, "policy.malformed"),
        (data[:-1], "policy.malformed"),
    ):
        with pytest.raises(SignedPolicyError) as info:
            load_policy(bad, anchor)
        assert info.value.reason == reason
    # A signed body whose text is no valid policy (only a signing bug could make one).
    from bridge.policy import PolicyBody

    body = msgspec.msgpack.encode(
        PolicyBody(v=1, federation="kreis-unna", serial=1, issued_at=0, source="[x]")
    )
    with pytest.raises(SignedPolicyError) as info:
        load_policy(sign_document(MAGIC, CONTEXT, body, fed.anchor), anchor)
    assert info.value.reason == "policy.malformed"


_HEAD = 4 + 1 + 16 + 4  # magic, version, signer kid, body length
_ED25519, _MLDSA65 = 64, 3309


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        (lambda n: 0, "policy.malformed"),  # magic
        (lambda n: 5, "policy.signature_invalid"),  # signer kid: not the anchor
        (lambda n: _HEAD, "policy.signature_invalid"),  # the first byte of the body
        (lambda n: n - _MLDSA65 - _ED25519 - 1, "policy.signature_invalid"),  # its last
        (lambda n: n - _MLDSA65 - _ED25519, "policy.signature_invalid"),  # Ed25519
        (lambda n: n - _MLDSA65 - 1, "policy.signature_invalid"),
        (lambda n: n - _MLDSA65, "policy.signature_invalid"),  # ML-DSA-65
        (lambda n: n - 1, "policy.signature_invalid"),
    ],
    ids=["magic", "kid", "body-first", "body-last", "ed-first", "ed-last", "ml-first", "ml-last"],
)
def test_a_flipped_bit_anywhere_is_refused(fed: Federation, where: object, reason: str) -> None:
    data = bytearray(signed_policy(fed)[0])
    data[where(len(data))] ^= 1  # type: ignore[operator]
    with pytest.raises(SignedPolicyError) as info:
        load_policy(bytes(data), fed.anchor.public_record())
    assert info.value.reason == reason


def test_each_signature_algorithm_is_required_on_its_own(fed: Federation) -> None:
    """A valid Ed25519 signature does not carry a wrong ML-DSA-65 one, nor the other way round:
    each half is the anchor's own over another version, so only the pairing is wrong."""
    anchor = fed.anchor.public_record()
    one, _ = signed_policy(fed, serial=1)
    two, _ = signed_policy(fed, serial=2)
    assert len(one) == len(two)
    sigs = len(one) - _ED25519 - _MLDSA65
    body, ed, ml = one[:sigs], one[sigs : sigs + _ED25519], one[sigs + _ED25519 :]
    other_ed, other_ml = two[sigs : sigs + _ED25519], two[sigs + _ED25519 :]
    assert load_policy(body + ed + ml, anchor).serial == 1
    for spliced in (body + ed + other_ml, body + other_ed + ml):
        with pytest.raises(SignedPolicyError) as info:
            load_policy(spliced, anchor)
        assert info.value.reason == "policy.signature_invalid"


def test_rollback_is_refused_against_the_serial_state(tmp_path: Path, fed: Federation) -> None:
    anchor = fed.anchor.public_record()
    state = PolicySerialState(tmp_path / "policy.serial")
    path = tmp_path / "policy.bin"
    path.write_bytes(signed_policy(fed, serial=5)[0])
    assert load_policy_file(path, anchor, state=state).serial == 5
    assert state.highest() == 5
    path.write_bytes(signed_policy(fed, serial=4)[0])
    with pytest.raises(SignedPolicyError) as info:
        load_policy_file(path, anchor, state=state)
    assert info.value.reason == "policy.rollback"
    assert state.highest() == 5
    with pytest.raises(SignedPolicyError) as info:
        load_policy_file(tmp_path / "missing.bin", anchor, state=state)
    assert info.value.reason == "policy.missing"
    (tmp_path / "policy.serial").write_text("five\n")
    with pytest.raises(SignedPolicyError) as info:
        load_policy_file(path, anchor, state=state)
    assert info.value.reason == "policy.state"


def test_holder_keeps_its_last_good_policy(
    tmp_path: Path, fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    anchor = fed.anchor.public_record()
    path = tmp_path / "policy.bin"
    path.write_bytes(signed_policy(fed, serial=2)[0])
    state = PolicySerialState(tmp_path / "policy.serial")
    holder = PolicyHolder(path, anchor, state, federation=lambda: "kreis-unna")
    good = holder.current
    tampered = bytearray(signed_policy(fed, serial=3)[0])
    tampered[-5] ^= 1
    other = POLICY.replace('federation = "kreis-unna"', 'federation = "kreis-soest"')
    for bad, reason in (
        (signed_policy(fed, serial=1)[0], "policy.rollback"),
        (bytes(tampered), "policy.signature_invalid"),
        (signed_policy(fed, other, serial=9)[0], "policy.federation"),
        (b"not a policy", "policy.malformed"),
    ):
        _replace(path, bad)
        with caplog.at_level(logging.ERROR, logger="bridge.policy"):
            assert not holder.reload_if_changed()
        assert f"new policy refused, keeping serial 2 ({good.hash}): " in caplog.text
        assert caplog.text.rstrip().endswith(f"[{reason}]")
        assert holder.current is good
        caplog.clear()
    assert state.highest() == 2  # a refused policy never raised the bar
    newer = signed_policy(fed, POLICY.replace('"365d"', '"180d"'), serial=3)
    _replace(path, newer[0])
    assert holder.reload_if_changed()
    assert holder.current.hash == newer[1].hash
    assert holder.current.max_consent_validity == 180 * DAY
    assert state.highest() == 3
    assert not holder.reload_if_changed()  # unchanged file: nothing to do
    # A file that disappears: said once, the last good policy kept, taken again when back.
    path.unlink()
    with caplog.at_level(logging.ERROR, logger="bridge.policy"):
        assert not holder.reload_if_changed()
        assert not holder.reload_if_changed()
    assert [r.getMessage() for r in caplog.records] == [
        f"policy file is gone, keeping serial 3 ({newer[1].hash})"
    ]
    assert holder.current.hash == newer[1].hash
    _replace(path, newer[0])
    assert holder.reload_if_changed()
    assert holder.current.hash == newer[1].hash


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_holder_refuses_a_bad_policy_at_start(tmp_path: Path, fed: Federation) -> None:
    path = tmp_path / "policy.bin"
    path.write_bytes(signed_policy(fed)[0])
    with pytest.raises(SignedPolicyError) as info:
        PolicyHolder(
            path,
            fed.anchor.public_record(),
            PolicySerialState(tmp_path / "s"),
            federation=lambda: "kreis-soest",
        )
    assert info.value.reason == "policy.federation"


def test_the_documented_example_is_the_demo_policy() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "policy.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    demo = DEMO_POLICY.split("\n[policy]", 1)[1]
    assert example == "[policy]" + demo
