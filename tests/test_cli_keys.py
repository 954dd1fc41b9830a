"""`bridge keys` and `bridge federation`, driven in-process through `bridge.cli.main`.

Everything is real: keys, files, signatures. The one subprocess checks the installed entry point.
"""

from __future__ import annotations

import argparse
import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from bridge.cli import build_parser, main
from bridge.crypto import AgencyPublicKeys, Keyring, open_envelope, seal
from bridge.errors import BridgeError
from bridge.federation import operator as F
from bridge.federation.directory import Directory, SerialState, load_anchor

AGENCIES = {
    "jc-mitte": ("Jobcenter Mitte", "jobcenter"),
    "sucht-nord": ("Suchtberatung Nord", "counselling"),
    "spdi-sued": ("Sozialpsychiatrischer Dienst Süd", "social-psychiatric-service"),
}
PASSPHRASE = "pass-Quokka-93-never-printed"
T0 = 1_750_000_000
DAY = 86400


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def fails(capsys: pytest.CaptureFixture[str], reason: str, *argv: str | Path) -> str:
    """Run a command that must fail: exit 2, one line on stderr naming the reason."""
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    assert err.startswith("bridge: error: ")
    assert err.count("\n") == 1, err
    assert f"[{reason}]" in err, err
    assert PASSPHRASE not in out + err
    return err


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def seeds(directory: Path) -> list[str]:
    """The secret seeds of the plain key files in `directory`, to prove no output shows them."""
    found = []
    for path in directory.glob("*.key"):
        secret = json.loads(path.read_text())["secret"]
        found += [v for k, v in secret.items() if k in ("seed", "ciphertext") and v]
    return found


@pytest.fixture
def fed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """An initialised federation with three agencies added (not yet signed)."""
    directory = tmp_path / "fed"
    code, out, _ = run(capsys, "federation", "init", "--dir", directory, "--federation", "demo")
    assert code == 0
    assert "anchor.pub.json" in out
    for agency, (name, role) in AGENCIES.items():
        keys = tmp_path / "keys" / agency
        code, out, _ = run(capsys, "keys", "new", "--agency", agency, "--dir", keys)
        assert code == 0
        assert f"{agency}.pub.json" in out
        code, out, _ = run(
            capsys,
            "federation",
            "add-agency",
            "--dir",
            directory,
            "--id",
            agency,
            "--name",
            name,
            "--role",
            role,
            "--keys",
            keys / f"{agency}.pub.json",
        )
        assert code == 0
        assert f"added {agency}" in out
    return directory


# -- help -------------------------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def test_installed_entry_point_lists_every_command() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "bridge"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    commands = _subcommands(build_parser())
    assert {"keys", "federation"} <= set(commands)
    for command in commands:
        assert command in result.stdout


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        ("keys", ["new", "show", "rotate"]),
        ("federation", ["init", "add-agency", "revoke", "sign", "show"]),
    ],
)
def test_group_help_lists_subcommands(
    capsys: pytest.CaptureFixture[str], group: str, expected: list[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main([group, "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for name in expected:
        assert name in out


def test_passphrase_is_not_accepted_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["keys", "new", "--agency", "a", "--dir", str(tmp_path / "k"), "--passphrase", "x"])
    assert caught.value.code == 2
    assert not (tmp_path / "k").exists()
    capsys.readouterr()


# -- the whole flow ---------------------------------------------------------------------------


def test_init_keys_add_sign_rotate_sign(
    tmp_path: Path, fed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stat.S_IMODE((fed / "anchor.key").stat().st_mode) == 0o600
    for agency in AGENCIES:
        for path in (tmp_path / "keys" / agency).glob("*.key"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600

    code, out, _ = run(capsys, "federation", "sign", "--dir", fed)
    assert code == 0
    assert "signed serial 1: 3 agencies" in out
    anchor = load_anchor(fed / "anchor.pub.json")
    state = SerialState(tmp_path / "component-serial")
    first = Directory.load_file(fed / "directory.bin", anchor, state=state)
    assert first.serial == 1
    assert {a.id for a in first.agencies()} == set(AGENCIES)
    assert first.body.federation == "demo"
    shutil.copy(fed / "directory.bin", tmp_path / "serial-1.bin")

    code, out, _ = run(capsys, "federation", "show", "--dir", fed)
    assert code == 0
    assert "serial 1" in out
    assert "Suchtberatung Nord" in out

    # jc-mitte rotates; the operator merges the new bundle and signs again.
    jc = tmp_path / "keys" / "jc-mitte"
    old = Keyring.load(jc)
    code, out, _ = run(capsys, "keys", "rotate", "--dir", jc)
    assert code == 0
    assert out.count("new current") == 2
    rotated = Keyring.load(jc)
    assert len(rotated.keys()) == 4
    bundle = F.load_bundle(jc / "jc-mitte.pub.json")
    assert {r.kid for r in bundle.keys} == {r.kid for r in rotated.public().keys}

    code, out, _ = run(
        capsys,
        "federation",
        "add-agency",
        "--dir",
        fed,
        "--id",
        "jc-mitte",
        "--name",
        "Jobcenter Berlin Mitte",
        "--role",
        "jobcenter",
        "--keys",
        jc / "jc-mitte.pub.json",
    )
    assert code == 0
    assert "updated jc-mitte" in out
    assert "2 new keys, 4 in all" in out
    code, out, _ = run(capsys, "federation", "sign", "--dir", fed)
    assert code == 0
    assert "signed serial 2" in out

    second = Directory.load_file(fed / "directory.bin", anchor, state=state)
    assert second.serial == 2
    entry = second.agency("jc-mitte")
    assert entry is not None
    assert entry.name == "Jobcenter Berlin Mitte"
    assert {k.kid for k in entry.keys} == {r.kid for r in bundle.keys}
    old_keys = old.keys()
    for key in old_keys:
        assert second.key(key.kid) is not None  # old keys stay listed
    with pytest.raises(BridgeError) as caught:
        Directory.load_file(tmp_path / "serial-1.bin", anchor, state=state)
    assert caught.value.reason == "directory.rollback"

    # The files work for real messages: jc-mitte (rotated) to sucht-nord and back.
    sucht = Keyring.load(tmp_path / "keys" / "sucht-nord")
    data = seal(
        b"referral",
        message_type="referral",
        sender=rotated,
        recipients=["sucht-nord"],
        directory=second,
        consent="c-" + "1" * 32,
        purpose="referral",
        categories=["contact"],
        lifetime=DAY,
    )
    assert open_envelope(data, sucht, second).plaintext == b"referral"


def test_keys_show_lists_keys_and_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "k"
    assert run(capsys, "keys", "new", "--agency", "jc-mitte", "--dir", keys)[0] == 0
    ring = Keyring.load(keys)
    code, out, _ = run(capsys, "keys", "show", "--dir", keys)
    assert code == 0
    held = ring.keys()
    for key in held:
        assert key.kid.hex() in out
        assert key.seed.hex() not in out
    assert out.count("current") == 2
    for seed in seeds(keys):
        assert seed not in out

    code, out, _ = run(capsys, "keys", "show", "--dir", keys, "--public")
    assert code == 0
    public = msgspec.json.decode(out, type=AgencyPublicKeys).check()
    assert public == F.load_bundle(keys / "jc-mitte.pub.json")
    for seed in seeds(keys):
        assert seed not in out


def test_encrypted_keys_need_the_passphrase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "k"
    monkeypatch.setenv("BRIDGE_TEST_PASS", PASSPHRASE)
    code, _, _ = run(
        capsys,
        "keys",
        "new",
        "--agency",
        "jc-mitte",
        "--dir",
        keys,
        "--passphrase-env",
        "BRIDGE_TEST_PASS",
    )
    assert code == 0
    for path in keys.glob("*.key"):
        assert json.loads(path.read_text())["secret"]["alg"] == "scrypt-aes256gcm"
    assert stat.S_IMODE((keys / "jc-mitte.pub.json").stat().st_mode) == 0o644

    fails(capsys, "keyfile.invalid", "keys", "show", "--dir", keys)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-passphrase\n")
    err = fails(
        capsys, "keyfile.invalid", "keys", "show", "--dir", keys, "--passphrase-file", wrong
    )
    assert "wrong passphrase" in err
    assert "not-the-passphrase" not in err

    right = tmp_path / "right"
    right.write_text(PASSPHRASE + "\n")  # one trailing newline is not part of it
    code, out, _ = run(capsys, "keys", "show", "--dir", keys, "--passphrase-file", right)
    assert code == 0
    assert out.count("current") == 2


def test_federation_anchor_with_passphrase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = tmp_path / "fed"
    secret = tmp_path / "pass"
    secret.write_text(PASSPHRASE)
    code, _, _ = run(
        capsys,
        "federation",
        "init",
        "--dir",
        fed,
        "--federation",
        "demo",
        "--passphrase-file",
        secret,
    )
    assert code == 0
    assert run(capsys, "keys", "new", "--agency", "jc-mitte", "--dir", tmp_path / "k")[0] == 0
    add: list[str | Path] = [
        "--name",
        "JC",
        "--role",
        "jobcenter",
        "--keys",
        tmp_path / "k" / "jc-mitte.pub.json",
    ]
    assert run(capsys, "federation", "add-agency", "--dir", fed, "--id", "jc-mitte", *add)[0] == 0
    before = snapshot(fed)
    fails(capsys, "keyfile.invalid", "federation", "sign", "--dir", fed)
    assert snapshot(fed) == before
    code, out, _ = run(capsys, "federation", "sign", "--dir", fed, "--passphrase-file", secret)
    assert code == 0
    assert "signed serial 1" in out


# -- bad input: exit 2, one line, nothing written ---------------------------------------------


def test_keys_new_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "k"
    assert run(capsys, "keys", "new", "--agency", "jc-mitte", "--dir", keys)[0] == 0
    before = snapshot(keys)
    fails(capsys, "keys.exists", "keys", "new", "--agency", "jc-mitte", "--dir", keys)
    assert snapshot(keys) == before

    other = tmp_path / "other"
    fails(capsys, "id.agency_malformed", "keys", "new", "--agency", "JC.Mitte", "--dir", other)
    fails(
        capsys,
        "config.validity",
        "keys",
        "new",
        "--agency",
        "a",
        "--dir",
        other,
        "--valid-days",
        "0",
    )
    monkeypatch.delenv("BRIDGE_UNSET_VAR", raising=False)
    fails(
        capsys,
        "keys.passphrase",
        "keys",
        "new",
        "--agency",
        "a",
        "--dir",
        other,
        "--passphrase-env",
        "BRIDGE_UNSET_VAR",
    )
    empty = tmp_path / "empty"
    empty.write_text("\n")
    fails(
        capsys,
        "keys.passphrase",
        "keys",
        "new",
        "--agency",
        "a",
        "--dir",
        other,
        "--passphrase-file",
        empty,
    )
    assert not other.exists()
    fails(capsys, "keyfile.invalid", "keys", "rotate", "--dir", other)
    fails(capsys, "keyfile.invalid", "keys", "show", "--dir", other)


def test_federation_refusals(tmp_path: Path, fed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(fed)
    fails(capsys, "federation.exists", "federation", "init", "--dir", fed, "--federation", "demo")
    bundle = tmp_path / "keys" / "jc-mitte" / "jc-mitte.pub.json"

    def add(reason: str, agency: str, role: str, keys: Path, name: str = "Name") -> str:
        return fails(
            capsys,
            reason,
            "federation",
            "add-agency",
            "--dir",
            fed,
            "--id",
            agency,
            "--name",
            name,
            "--role",
            role,
            "--keys",
            keys,
        )

    add("id.agency_malformed", "jc.mitte", "jobcenter", bundle)
    add("federation.role_unknown", "jc-mitte", "police", bundle)
    add("federation.bundle_agency", "sucht-nord", "counselling", bundle)
    add("federation.name_invalid", "jc-mitte", "jobcenter", bundle, name="")
    add("federation.name_invalid", "jc-mitte", "jobcenter", bundle, name="Line\nbreak")
    bad = tmp_path / "bad.pub.json"
    bad.write_text("{not json")
    add("federation.bundle_invalid", "jc-mitte", "jobcenter", bad)
    add("federation.bundle_invalid", "jc-mitte", "jobcenter", tmp_path / "absent.pub.json")
    edited = json.loads(bundle.read_text())
    edited["keys"][0]["kid"] = "00" * 16
    bad.write_text(json.dumps(edited))
    add("federation.bundle_invalid", "jc-mitte", "jobcenter", bad)
    # A new agency that presents another agency's keys as its own.
    stolen = json.loads(bundle.read_text())
    stolen["agency"] = "thief"
    bad.write_text(json.dumps(stolen))
    add("federation.key_conflict", "thief", "other", bad)

    fails(
        capsys, "federation.unknown_kid", "federation", "revoke", "--dir", fed, "--kid", "ab" * 16
    )
    fails(capsys, "federation.unknown_kid", "federation", "revoke", "--dir", fed, "--kid", "xyz")
    fails(capsys, "config.validity", "federation", "sign", "--dir", fed, "--valid-days", "400")
    assert snapshot(fed) == before

    (fed / "draft.json").write_text('{"federation": "demo", "agencies": [}')
    fails(capsys, "federation.draft_invalid", "federation", "sign", "--dir", fed)
    assert not (fed / "directory.bin").exists()
    assert not (fed / "serial").exists()

    empty = tmp_path / "empty"
    fails(capsys, "federation.missing", "federation", "sign", "--dir", empty)
    fails(capsys, "directory.anchor", "federation", "show", "--dir", empty)
    assert not empty.exists()


def test_revoke_reaches_the_signed_directory(
    tmp_path: Path, fed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ring = Keyring.load(tmp_path / "keys" / "sucht-nord")
    enc = ring.current("enc", ring.keys()[0].not_before)
    code, out, _ = run(capsys, "federation", "revoke", "--dir", fed, "--kid", enc.kid.hex().upper())
    assert code == 0
    assert "sucht-nord revoked" in out
    code, out, _ = run(capsys, "federation", "revoke", "--dir", fed, "--kid", enc.kid.hex())
    assert code == 0
    assert "already revoked" in out
    assert run(capsys, "federation", "sign", "--dir", fed)[0] == 0
    directory = F.show_directory(fed)
    assert directory.is_revoked(enc.kid)
    assert directory.body.revoked == [enc.kid.hex()]


# -- bridge.federation.operator directly (time injected) -------------------------------------------


def _start(fed: Path) -> int:
    """When the CLI-made anchor (real clock) became valid: the tests' time zero."""
    return load_anchor(fed / "anchor.pub.json").not_before


def test_sign_serial_survives_a_lost_serial_file(tmp_path: Path, fed: Path) -> None:
    start = _start(fed)
    assert F.sign_draft(fed, now=start + 10)[0].serial == 1
    assert F.sign_draft(fed, now=start + 20)[0].serial == 2
    (fed / "serial").unlink()
    # The last signed directory still carries its serial, expired or not.
    directory, path = F.sign_draft(fed, now=start + 400 * DAY, days=1)
    assert directory.serial == 3
    assert path == fed / "directory.bin"
    assert SerialState(fed / "serial").highest() == 3


def test_sign_to_another_file(tmp_path: Path, fed: Path) -> None:
    start = _start(fed)
    out = tmp_path / "published.bin"
    directory, path = F.sign_draft(fed, out=out, now=start)
    assert path == out
    assert not (fed / "directory.bin").exists()
    assert F.show_directory(fed, path=out, now=start + 1).serial == directory.serial == 1
    assert F.sign_draft(fed, now=start + 1)[0].serial == 2


def test_sign_refuses_to_overwrite_a_foreign_file(tmp_path: Path, fed: Path) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("important")
    with pytest.raises(BridgeError) as caught:
        F.sign_draft(fed, out=out)
    assert caught.value.reason == "federation.signed_invalid"
    assert out.read_text() == "important"


def test_directory_may_not_outlive_the_anchor(tmp_path: Path) -> None:
    F.init_federation(tmp_path / "fed", "demo", days=10, now=T0)
    with pytest.raises(BridgeError) as caught:
        F.sign_draft(tmp_path / "fed", days=30, now=T0)
    assert caught.value.reason == "federation.anchor_expiring"
    assert F.sign_draft(tmp_path / "fed", days=5, now=T0)[0].serial == 1


def test_key_states_over_time(tmp_path: Path) -> None:
    keys = tmp_path / "k"
    F.new_keys(keys, "jc-mitte", days=10, now=T0)
    ring, made, _ = F.rotate_keys(keys, days=30, now=T0 + 5 * DAY)
    new = {k.kid.hex() for k in made}

    def states(at: int) -> dict[tuple[str, bool], str]:
        return {(s.use, s.kid in new): s.state for s in F.key_statuses(ring, at)}

    assert states(T0 + DAY) == {
        ("sign", False): "current",
        ("enc", False): "current",
        ("sign", True): "pending",
        ("enc", True): "pending",
    }
    assert states(T0 + 6 * DAY) == {
        ("sign", False): "superseded",
        ("enc", False): "opening-only",
        ("sign", True): "current",
        ("enc", True): "current",
    }
    assert states(T0 + 11 * DAY)[("enc", False)] == "expired"


def test_rotate_then_load_picks_the_new_keys(tmp_path: Path) -> None:
    keys = tmp_path / "k"
    first, _ = F.new_keys(keys, "jc-mitte", now=T0)
    ring, made, bundle = F.rotate_keys(keys, now=T0 + DAY)
    loaded = Keyring.load(keys)
    for use in ("sign", "enc"):
        assert loaded.current(use, T0 + 2 * DAY).kid in {k.kid for k in made}
    assert len(F.load_bundle(bundle).keys) == 4
    assert first.agency == ring.agency == "jc-mitte"


def test_read_passphrase(tmp_path: Path) -> None:
    assert F.read_passphrase() is None
    path = tmp_path / "p"
    path.write_bytes(b"secret\r\n")
    assert F.read_passphrase(file=path) == b"secret"
    path.write_bytes(b"two\nlines\n")
    assert F.read_passphrase(file=path) == b"two\nlines"
    assert F.read_passphrase(env="P", environ={"P": "from env"}) == b"from env"
    with pytest.raises(BridgeError):
        F.read_passphrase(env="P", environ={})
    with pytest.raises(BridgeError):
        F.read_passphrase(env="P", environ={"P": ""})
    with pytest.raises(BridgeError):
        F.read_passphrase(file=path, env="P", environ={"P": "x"})


def test_hand_edited_draft_is_checked(fed: Path) -> None:
    draft = json.loads((fed / "draft.json").read_text())
    draft["agencies"][1]["keys"] = draft["agencies"][0]["keys"]
    (fed / "draft.json").write_text(json.dumps(draft))
    with pytest.raises(BridgeError) as caught:
        F.load_draft(fed)
    assert caught.value.reason == "federation.draft_invalid"
    assert "listed twice" in str(caught.value)
