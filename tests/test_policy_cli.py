"""`bridge policy check / sign / explain` as an operator runs them; `explain --message-id`
against a real nats-server whose audit trail a real broker wrote."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import pytest
from envelope_helpers import FEDERATION_ID, RECIPIENTS, SENDER, Federation, federation
from policy_helpers import POLICY, signed_policy
from test_broker import Agency, make_broker, referral, wait_for, write_config

from bridge.cli import main
from bridge.errors import PolicyFileError
from bridge.federation.operator import ANCHOR_PUB, SIGNED, init_federation
from bridge.ids import new_message_id
from bridge.nats.identities import Identity
from bridge.policy import POLICY_SERIAL, SIGNED_POLICY

if TYPE_CHECKING:
    from conftest import NatsEnv

COUNSELLING, SPDI = RECIPIENTS


def _fed_dir(tmp_path: Path, fed: Federation) -> Path:
    """A federation directory as `explain` reads it: anchor, key directory, signed policy."""
    directory = tmp_path / "federation"
    directory.mkdir()
    (directory / ANCHOR_PUB).write_bytes(msgspec.json.encode(fed.anchor.public_record()))
    (directory / SIGNED).write_bytes(fed.directory_bytes)
    (directory / SIGNED_POLICY).write_bytes(signed_policy(fed)[0])
    return directory


def test_check_prints_what_the_policy_allows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    assert main(["policy", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "not signed" in out
    assert "everything else is denied" in out
    rows = [line.split() for line in out.splitlines()]
    # Every (rule, sender role, recipient role) is one row of the flows table, with its types
    # and consent rule; every type one row of the limits table.
    for rule, sender, recipient, types in (
        ("jobcenter-refers", "jobcenter", "counselling", "referral, handover"),
        ("jobcenter-refers", "jobcenter", "social-psychiatric-service", "referral, handover"),
        ("services-answer", "counselling", "jobcenter", "feedback"),
        ("services-answer", "social-psychiatric-service", "jobcenter", "feedback"),
    ):
        assert [rule, sender, recipient, *types.split(), "required,", "from", "sender"] in rows
    assert ["referral", "1048576", "bytes", "30d", "14d", "7d"] in rows
    assert ["feedback", "262144", "bytes", "30d", "14d", "7d"] in rows
    assert ["receipt", "65536", "bytes", "14d", "7d", "7d"] in rows
    assert ["audit", "730d"] in rows
    assert ["purposes:", "counselling,", "integration-support,", "treatment-coordination"] in rows


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ('[[flows]]\nname = "services', '[[flows]\nname = "services', "policy.syntax"),
        ('to = "jobcenter"', 'to = "ministry"', "policy.unknown_name"),  # an undeclared role
        ("counselling = ", "ministry = ", "policy.unknown_name"),  # outside the vocabulary
        ('types = ["feedback"]', 'types = ["letter"]', "policy.unknown_name"),
        ('"case-handover"]', '"marketing"]', "policy.unknown_name"),  # a purpose code
        ('categories = ["health",', 'categories = ["hobbies",', "policy.unknown_name"),
        (  # a second rule for a flow the first already covers
            'from = ["counselling", "social-psychiatric-service"]\nto = "jobcenter"\n'
            'types = ["feedback"]',
            'from = "jobcenter"\nto = "counselling"\ntypes = ["referral"]',
            "policy.contradiction",
        ),
    ],
    ids=["syntax", "role", "vocabulary", "type", "purpose", "category", "contradiction"],
)
def test_check_refuses_a_bad_file_with_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, reason: str
) -> None:
    assert old in POLICY
    path = tmp_path / "policy.toml"
    path.write_text(POLICY.replace(old, new, 1))
    assert main(["policy", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing of what it would allow
    err = captured.err.strip()
    assert len(err.splitlines()) == 1
    # The line at fault: where the replacement starts, or (a rule against another) the
    # [[flows]] that opens the second rule.
    at = POLICY[: POLICY.index(old)].count("\n") + 1
    if reason == "policy.contradiction":
        at = [i for i, s in enumerate(POLICY.splitlines(), 1) if s == "[[flows]]"][1]
    assert err.startswith(f"bridge: error: line {at}: "), err
    assert err.endswith(f"[{reason}]")


def test_sign_publishes_the_next_version_and_refuses_bad_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed_dir = tmp_path / "fed"
    init_federation(fed_dir, FEDERATION_ID)
    source = tmp_path / "policy.toml"
    source.write_text(POLICY)
    for serial in (1, 2):
        assert main(["policy", "sign", "--dir", str(fed_dir), str(source)]) == 0
        assert f"serial {serial}" in capsys.readouterr().out
    signed = (fed_dir / SIGNED_POLICY).read_bytes()
    anchor = str(fed_dir / ANCHOR_PUB)
    assert main(["policy", "check", str(fed_dir / SIGNED_POLICY), "--anchor", anchor]) == 0
    assert "serial 2, signed" in capsys.readouterr().out
    # A broken text, and a policy of another federation: nothing written, no serial used.
    source.write_text(POLICY.replace("[[flows]]", "[[flows]", 1))
    assert main(["policy", "sign", "--dir", str(fed_dir), str(source)]) == 2
    assert "[policy.syntax]" in capsys.readouterr().err
    source.write_text(POLICY.replace(FEDERATION_ID, "kreis-soest", 1))
    assert main(["policy", "sign", "--dir", str(fed_dir), str(source)]) == 2
    assert "[policy.federation]" in capsys.readouterr().err
    assert (fed_dir / SIGNED_POLICY).read_bytes() == signed
    assert (fed_dir / POLICY_SERIAL).read_text().strip() == "2"
    # A signed file needs the anchor to be read at all.
    assert main(["policy", "check", str(fed_dir / SIGNED_POLICY)]) == 2
    assert "--anchor" in capsys.readouterr().err


def _header(tmp_path: Path, **changes: object) -> str:
    header = {
        "type": "referral",
        "sender": SENDER,
        "recipients": [COUNSELLING, SPDI],
        "purpose": "counselling",
        "categories": ["contact", "addiction"],
        "lifetime_seconds": 86400,
        "size": 20000,
    }
    header.update(changes)
    path = tmp_path / "header.json"
    path.write_text(json.dumps(header))
    return str(path)


def test_explain_names_the_rule_behind_each_decision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed_dir = str(_fed_dir(tmp_path, federation()))
    assert main(["policy", "explain", "--dir", fed_dir, "--header", _header(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("rule 'jobcenter-refers'") == 2
    assert "ALLOWED" in out
    assert "needs a consent issued by jobcenter-unna" in out
    denied = _header(tmp_path, purpose="delivery-confirmation")
    assert main(["policy", "explain", "--dir", fed_dir, "--header", denied]) == 1
    out = capsys.readouterr().out
    assert "DENIED [policy.purpose_denied]" in out
    assert "jobcenter-refers" in out
    onward = _header(tmp_path, sender=COUNSELLING, recipients=[SPDI])
    assert main(["policy", "explain", "--dir", fed_dir, "--header", onward]) == 1
    out = capsys.readouterr().out
    assert "DENIED [policy.route_denied]" in out
    assert "recipient: spdi-unna (social-psychiatric-service)" in out
    # A draft can be tried against the same directory before it is signed.
    draft = tmp_path / "draft.toml"
    draft.write_text(POLICY.replace('"counselling", "treatment-coordination", "case', '"case', 1))
    args = ["policy", "explain", "--dir", fed_dir, "--policy", str(draft)]
    assert main([*args, "--header", _header(tmp_path)]) == 1
    assert "not signed (a draft)" in capsys.readouterr().out
    (tmp_path / "header.json").write_text('{"type": "referral"}')
    assert main([*args, "--header", str(tmp_path / "header.json")]) == 2
    assert "[cli.usage]" in capsys.readouterr().err


async def test_explain_a_message_from_the_audit_trail(
    nats_env: NatsEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = federation()
    jobcenter = await Agency.connect(nats_env, SENDER)
    good, bad = new_message_id(), new_message_id()
    await jobcenter.submit(referral(fed, good, recipients=[COUNSELLING]), good)
    await jobcenter.submit(referral(fed, bad, purpose="delivery-confirmation"), bad)
    async with make_broker(write_config(tmp_path, nats_env, fed)) as broker:
        await wait_for("both decided", lambda: broker.statistics().routed == 1)
        await wait_for("rejected", lambda: broker.statistics().rejected_total == 1)
    fed_dir = str(_fed_dir(tmp_path, fed))
    where = ["--nats-url", nats_env.url, "--seed", str(nats_env.seed_file(Identity.ops()))]
    args = ["policy", "explain", "--dir", fed_dir, *where, "--message-id"]
    assert await asyncio.to_thread(main, [*args, good]) == 0
    out = capsys.readouterr().out
    assert f"routed {SENDER} -> {COUNSELLING} referral" in out
    assert "rule: 'jobcenter-refers'" in out
    assert f"decided under policy {broker.statistics().policy_hash}" in out
    # The broker ran a stricter test policy than the demo one `_fed_dir` shows.
    assert "another policy version" in out
    assert await asyncio.to_thread(main, [*args, bad]) == 0
    out = capsys.readouterr().out
    assert "[policy.purpose_denied]" in out
    # The rule it was measured against, with the purposes that rule allows.
    line = next(i for i, s in enumerate(POLICY.splitlines(), 1) if s == "[[flows]]")
    assert f"measured against rule 'jobcenter-refers' (line {line}), to counselling, " in out
    assert "purposes case-handover, counselling, integration-support" in out
    assert await asyncio.to_thread(main, [*args, new_message_id()]) == 1
    assert "not on the audit trail" in capsys.readouterr().out


def test_explain_and_check_with_the_embedded_stacks_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridge.up.state import prepare

    stack = prepare(tmp_path / "state", port_base=0)
    header = _header(tmp_path, recipients=["suchtberatung-unna", "spdi-unna"])
    state = str(stack.layout.root)
    assert main(["policy", "explain", "--state", state, "--header", header]) == 0
    out = capsys.readouterr().out
    assert "policy of federation demo-unna: serial 1" in out
    assert "ALLOWED" in out
    assert main(["policy", "check", str(stack.layout.policy_source)]) == 0
    capsys.readouterr()
    # docs/policy.md's example of `explain --header` is what it prints for the demo stack.
    doc = (Path(__file__).parent.parent / "docs" / "policy.md").read_text()
    example = doc.split("  ```json\n", 1)[1]
    documented_header, rest = example.split("  ```\n", 1)
    documented = rest.split("  ```\n", 1)[1].split("  ```\n", 1)[0]
    (tmp_path / "doc-header.json").write_text(documented_header)
    doc_args = ["policy", "explain", "--state", state, "--header"]
    assert main([*doc_args, str(tmp_path / "doc-header.json")]) == 0
    printed = capsys.readouterr().out.split("\n", 1)[1]  # below the version, hash and time
    assert printed.split() == documented.split("\n", 1)[1].split()
    # Editing the text and preparing again signs it as the next serial.
    source = stack.layout.policy_source
    source.write_text(source.read_text().replace('"365d"', '"180d"'))
    prepare(tmp_path / "state")
    assert main(["policy", "explain", "--state", state, "--header", header]) == 0
    assert "serial 2" in capsys.readouterr().out
    # A text `check` refuses stops the stack at start-up, naming the line; nothing is signed.
    text = source.read_text()
    source.write_text(text.replace('to = "jobcenter"', 'to = "ministry"', 1))
    with pytest.raises(PolicyFileError) as info:
        prepare(tmp_path / "state")
    assert info.value.reason == "policy.unknown_name"
    assert info.value.line == text[: text.index('to = "jobcenter"')].count("\n") + 1
    assert main(["policy", "explain", "--state", state, "--header", header]) == 0
    assert "serial 2" in capsys.readouterr().out
