"""Private key files, public key records and the keyring, with real keys and real envelopes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import msgspec
import pytest

from bridge.crypto import (
    AgencyPublicKeys,
    Keyring,
    PrivateKey,
    PublicKeyRecord,
    generate_key,
    key_id,
    kid_hex,
    load_key_file,
    open_envelope,
    seal,
    write_key_file,
)
from bridge.errors import BridgeError, KeyExpired, KeyFileError, ProtocolError, UnknownKey
from bridge.federation.directory import AgencyEntry, Directory, DirectoryBody, sign_directory

T0 = 1_750_000_000
DAY = 86400
CONSENT = "c-" + "0" * 32


@pytest.fixture(scope="module")
def sign_key() -> PrivateKey:
    return generate_key("jc-mitte", "sign", T0, T0 + 365 * DAY)


@pytest.fixture(scope="module")
def enc_key() -> PrivateKey:
    return generate_key("jc-mitte", "enc", T0, T0 + 365 * DAY)


def _edit(path: Path, **changes: object) -> None:
    document = json.loads(path.read_text())
    for name, value in changes.items():
        if name.startswith("secret_"):
            document["secret"][name.removeprefix("secret_")] = value
        else:
            document[name] = value
    path.write_text(json.dumps(document))
    path.chmod(0o600)


# -- key ids and public records ---------------------------------------------------------------


def test_key_id_is_the_documented_hash(sign_key: PrivateKey, enc_key: PrivateKey) -> None:
    import hashlib

    for key, use_byte in ((sign_key, b"\x01"), (enc_key, b"\x02")):
        expected = hashlib.sha256(b"bridge/kid/v1" + use_byte + key.public_bytes).digest()[:16]
        assert key.kid == expected == key_id(key.use, key.public_bytes)
    assert len(sign_key.public_bytes) == 32 + 1952
    assert len(enc_key.public_bytes) == 1184 + 32


def test_public_record_checks(sign_key: PrivateKey) -> None:
    record = sign_key.public_record()
    assert record.check() is record
    other = generate_key("jc-mitte", "sign", T0, T0 + DAY).public_record()
    with pytest.raises(KeyFileError):
        msgspec.structs.replace(record, kid=other.kid).check()
    with pytest.raises(KeyFileError):
        msgspec.structs.replace(record, use="enc").check()  # wrong length for an enc key
    with pytest.raises(KeyFileError):
        msgspec.structs.replace(record, not_after=record.not_before).check()
    with pytest.raises(KeyFileError):
        msgspec.structs.replace(record, public="not base64!").check()


@pytest.mark.parametrize("spelling", ["upper", "spaced"])
def test_public_record_kid_must_be_canonical_hex(sign_key: PrivateKey, spelling: str) -> None:
    # bytes.fromhex accepts both; two spellings of one kid would pass a string-keyed
    # duplicate check, so only the canonical lowercase form is accepted.
    record = sign_key.public_record()
    pairs = [record.kid[i : i + 2] for i in range(0, len(record.kid), 2)]
    kid = record.kid.upper() if spelling == "upper" else " ".join(pairs)
    assert bytes.fromhex(kid) == record.kid_bytes
    with pytest.raises(KeyFileError):
        msgspec.structs.replace(record, kid=kid).check()


def test_agency_bundle_checks_agency_id(sign_key: PrivateKey) -> None:
    AgencyPublicKeys("jc-mitte", [sign_key.public_record()]).check()
    with pytest.raises(ProtocolError) as caught:
        AgencyPublicKeys("JC.Mitte", [sign_key.public_record()]).check()
    assert caught.value.reason == "id.agency_malformed"


def test_private_key_repr_shows_no_seed(sign_key: PrivateKey) -> None:
    text = repr(sign_key)
    assert sign_key.seed.hex() not in text
    assert kid_hex(sign_key.kid) in text


# -- key files --------------------------------------------------------------------------------


def test_key_file_mode_is_0600_and_round_trips(tmp_path: Path, sign_key: PrivateKey) -> None:
    path = tmp_path / "sign.key"
    write_key_file(path, sign_key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_key_file(path)
    assert loaded.seed == sign_key.seed
    assert loaded.kid == sign_key.kid
    assert (loaded.not_before, loaded.not_after) == (sign_key.not_before, sign_key.not_after)
    assert not list(tmp_path.glob(".*.tmp"))


def test_key_file_is_never_overwritten(tmp_path: Path, sign_key: PrivateKey) -> None:
    path = tmp_path / "sign.key"
    write_key_file(path, sign_key)
    before = path.read_bytes()
    with pytest.raises(KeyFileError):
        write_key_file(path, generate_key("jc-mitte", "sign", T0, T0 + DAY))
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_key_file_readable_by_others_is_refused(
    tmp_path: Path, enc_key: PrivateKey, mode: int
) -> None:
    path = tmp_path / "enc.key"
    write_key_file(path, enc_key)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600") as caught:
        load_key_file(path)
    assert caught.value.reason == "keyfile.invalid"


def test_encrypted_key_file_round_trip_and_wrong_passphrase(
    tmp_path: Path, sign_key: PrivateKey
) -> None:
    path = tmp_path / "sign.key"
    write_key_file(path, sign_key, b"correct horse")
    text = path.read_text()
    assert sign_key.seed.hex() not in text
    assert json.loads(text)["secret"]["alg"] == "scrypt-aes256gcm"
    assert load_key_file(path, b"correct horse").seed == sign_key.seed
    with pytest.raises(KeyFileError, match="wrong passphrase") as caught:
        load_key_file(path, b"battery staple")
    assert "battery" not in str(caught.value)
    with pytest.raises(KeyFileError, match="passphrase is needed"):
        load_key_file(path)


def test_empty_passphrase_is_refused(tmp_path: Path, enc_key: PrivateKey) -> None:
    with pytest.raises(KeyFileError):
        write_key_file(tmp_path / "enc.key", enc_key, b"")
    assert not (tmp_path / "enc.key").exists()


def test_edited_metadata_of_encrypted_file_fails_to_open(
    tmp_path: Path, enc_key: PrivateKey
) -> None:
    # The metadata is the AES-GCM associated data: extending validity breaks the tag.
    path = tmp_path / "enc.key"
    write_key_file(path, enc_key, b"pw")
    _edit(path, not_after=enc_key.not_after + 365 * DAY)
    with pytest.raises(KeyFileError, match="altered"):
        load_key_file(path, b"pw")


def test_edited_kid_in_plain_file_is_refused(tmp_path: Path, enc_key: PrivateKey) -> None:
    path = tmp_path / "enc.key"
    write_key_file(path, enc_key)
    _edit(path, kid="00" * 16)
    with pytest.raises(KeyFileError, match="key id does not match"):
        load_key_file(path)


def test_edited_validity_in_plain_file_is_refused(tmp_path: Path, enc_key: PrivateKey) -> None:
    path = tmp_path / "enc.key"
    write_key_file(path, enc_key)
    _edit(path, not_after=enc_key.not_before)
    with pytest.raises(KeyFileError, match="validity"):
        load_key_file(path)


def test_unknown_format_is_refused(tmp_path: Path, enc_key: PrivateKey) -> None:
    path = tmp_path / "enc.key"
    write_key_file(path, enc_key)
    _edit(path, format="bridge-private-key/v2")
    with pytest.raises(KeyFileError, match="unknown format"):
        load_key_file(path)


def test_unknown_secret_algorithm_is_refused(tmp_path: Path, enc_key: PrivateKey) -> None:
    path = tmp_path / "enc.key"
    write_key_file(path, enc_key)
    _edit(path, secret_alg="rot13")
    with pytest.raises(KeyFileError, match="malformed"):
        load_key_file(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b'{"format": "bridge-private-key/v1"}', b"\xff\xfe"],
)
def test_malformed_json_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="malformed"):
        load_key_file(path)


def test_unknown_field_is_refused(tmp_path: Path, enc_key: PrivateKey) -> None:
    path = tmp_path / "enc.key"
    write_key_file(path, enc_key)
    _edit(path, comment="hello")
    with pytest.raises(KeyFileError, match="malformed"):
        load_key_file(path)


def test_missing_file_is_a_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        load_key_file(tmp_path / "absent.key")


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.key"
    path.write_bytes(b" " * (64 * 1024 + 1))
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="too large"):
        load_key_file(path)


def test_key_of_wrong_use(tmp_path: Path, sign_key: PrivateKey, enc_key: PrivateKey) -> None:
    # An encryption key cannot sign and a signing key cannot decrypt...
    with pytest.raises(KeyFileError, match="not a signing key"):
        enc_key.signer()
    with pytest.raises(KeyFileError, match="not an encryption key"):
        sign_key.decrypter()
    # ...and a file that relabels a signing seed as an encryption key does not load.
    path = tmp_path / "sign.key"
    write_key_file(path, sign_key)
    _edit(path, use="enc")
    with pytest.raises(KeyFileError, match="wrong length"):
        load_key_file(path)
    _edit(path, use="decrypt")
    with pytest.raises(KeyFileError, match="malformed"):
        load_key_file(path)


def test_malformed_agency_in_file_is_refused(tmp_path: Path, enc_key: PrivateKey) -> None:
    path = tmp_path / "enc.key"
    write_key_file(path, enc_key)
    _edit(path, agency="jc.mitte")
    with pytest.raises(BridgeError) as caught:
        load_key_file(path)
    assert caught.value.reason == "id.agency_malformed"


# -- keyring ----------------------------------------------------------------------------------


def test_keyring_create_and_load(tmp_path: Path) -> None:
    made = Keyring.create(tmp_path / "ring", "jc-mitte", now=T0, valid_seconds=DAY)
    assert sorted(k.use for k in made) == ["enc", "sign"]
    assert stat.S_IMODE((tmp_path / "ring").stat().st_mode) == 0o700
    keyring = Keyring.load(tmp_path / "ring")
    assert keyring.agency == "jc-mitte"
    held = keyring.keys()
    assert {k.kid for k in held} == {k.kid for k in made}
    public = keyring.public().check()
    assert {r.kid for r in public.keys} == {kid_hex(k.kid) for k in made}


def test_keyring_load_refusals(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no key files"):
        Keyring.load(tmp_path)
    ring = tmp_path / "ring"
    Keyring.create(ring, "jc-mitte", now=T0)
    write_key_file(ring / "other.key", generate_key("sucht-nord", "sign", T0, T0 + DAY))
    with pytest.raises(KeyFileError, match="several agencies"):
        Keyring.load(ring)
    with pytest.raises(KeyFileError, match="another agency"):
        Keyring("jc-mitte", [generate_key("sucht-nord", "sign", T0, T0 + DAY)])


def test_encrypted_keyring_needs_its_passphrase(tmp_path: Path) -> None:
    Keyring.create(tmp_path, "jc-mitte", now=T0, passphrase=b"pw")
    with pytest.raises(KeyFileError, match="passphrase is needed"):
        Keyring.load(tmp_path)
    assert len(Keyring.load(tmp_path, b"pw").keys()) == 2


def test_current_key_is_the_newest_valid_one() -> None:
    old = generate_key("jc-mitte", "sign", T0, T0 + 10 * DAY)
    new = generate_key("jc-mitte", "sign", T0 + 5 * DAY, T0 + 20 * DAY)
    future = generate_key("jc-mitte", "sign", T0 + 30 * DAY, T0 + 40 * DAY)
    keyring = Keyring("jc-mitte", [future, new, old])
    assert keyring.current("sign", T0 + DAY) is old
    assert keyring.current("sign", T0 + 6 * DAY) is new
    assert keyring.current("sign", T0 + 15 * DAY) is new  # old has expired
    with pytest.raises(UnknownKey):
        keyring.current("sign", T0 + 25 * DAY)  # between new's end and future's start
    assert keyring.current("sign", T0 + 35 * DAY) is future
    with pytest.raises(UnknownKey):
        keyring.current("enc", T0)
    with pytest.raises(UnknownKey):
        keyring.current("sign", T0 - 1)


def test_decryption_key_only_for_valid_enc_keys() -> None:
    enc = generate_key("jc-mitte", "enc", T0, T0 + DAY)
    sign = generate_key("jc-mitte", "sign", T0, T0 + DAY)
    keyring = Keyring("jc-mitte", [enc, sign])
    assert keyring.decryption_key(enc.kid, T0) is enc
    assert keyring.decryption_key(enc.kid, T0 + DAY) is None
    assert keyring.decryption_key(sign.kid, T0) is None
    assert keyring.decryption_key(b"\x00" * 16, T0) is None


def _directory(anchor: PrivateKey, keyrings: list[Keyring], now: int) -> Directory:
    body = DirectoryBody(
        v=1,
        federation="test",
        serial=1,
        issued_at=now,
        expires_at=now + 365 * DAY,
        agencies=[
            AgencyEntry(id=k.agency, name=k.agency, role="other", keys=k.public().keys)
            for k in keyrings
        ],
        revoked=[],
    )
    return Directory.load(sign_directory(body, anchor), anchor.public_record(), now=now)


def test_rotation_keeps_old_enc_key_for_opening_until_it_expires(tmp_path: Path) -> None:
    anchor = generate_key("test", "sign", T0 - DAY, T0 + 1000 * DAY)
    Keyring.create(tmp_path / "a", "jc-mitte", now=T0, valid_seconds=500 * DAY)
    Keyring.create(tmp_path / "b", "sucht-nord", now=T0, valid_seconds=10 * DAY)
    sender = Keyring.load(tmp_path / "a")
    recipient = Keyring.load(tmp_path / "b")
    old_enc = recipient.current("enc", T0)

    def sealed(at: int, directory: Directory) -> bytes:
        return seal(
            b"referral body",
            message_type="referral",
            sender=sender,
            recipients=["sucht-nord"],
            directory=directory,
            consent=CONSENT,
            purpose="referral",
            categories=["contact"],
            lifetime=20 * DAY,
            now=at,
        )

    before = sealed(T0 + DAY, _directory(anchor, [sender, recipient], T0 + DAY))

    # Rotate the recipient on day 2; the operator publishes the new keys alongside the old.
    new_keys = Keyring.create(tmp_path / "b", "sucht-nord", now=T0 + 2 * DAY)
    rotated = Keyring.load(tmp_path / "b")
    assert len(rotated.keys()) == 4
    new_enc = next(k for k in new_keys if k.use == "enc")
    assert rotated.current("enc", T0 + 3 * DAY).kid == new_enc.kid
    assert rotated.current("sign", T0 + 3 * DAY).kid != recipient.current("sign", T0).kid
    directory = _directory(anchor, [sender, rotated], T0 + 3 * DAY)

    # What was sealed before the rotation still opens with the old key...
    opened = open_envelope(before, rotated, directory, now=T0 + 3 * DAY)
    assert opened.plaintext == b"referral body"
    assert opened.header.recipients[0].kid == old_enc.kid
    # ...and new messages go to the new key.
    after = sealed(T0 + 3 * DAY, directory)
    opened = open_envelope(after, rotated, directory, now=T0 + 3 * DAY)
    assert opened.header.recipients[0].kid == new_enc.kid

    # Once the old key has expired (day 10), the old envelope no longer opens.
    late = T0 + 11 * DAY
    assert rotated.decryption_key(old_enc.kid, late) is None
    with pytest.raises(KeyExpired):
        open_envelope(before, rotated, directory, now=late)
    assert open_envelope(after, rotated, directory, now=late).plaintext == b"referral body"


def test_keyring_repr_shows_no_secret(tmp_path: Path) -> None:
    made = Keyring.create(tmp_path, "jc-mitte", now=T0)
    keyring = Keyring("jc-mitte", made)
    text = repr(keyring) + repr(made)
    for key in made:
        assert key.seed.hex() not in text


def test_public_record_json_round_trip(enc_key: PrivateKey) -> None:
    record = enc_key.public_record()
    data = msgspec.json.encode(record)
    assert msgspec.json.decode(data, type=PublicKeyRecord).check() == record
    assert enc_key.seed.hex() not in data.decode()


def test_sender_signs_with_the_newest_key_the_directory_publishes(tmp_path: Path) -> None:
    anchor = generate_key("test", "sign", T0 - DAY, T0 + 1000 * DAY)
    Keyring.create(tmp_path / "a", "jc-mitte", now=T0)
    Keyring.create(tmp_path / "b", "sucht-nord", now=T0)
    recipient = Keyring.load(tmp_path / "b")
    published = Keyring.load(tmp_path / "a")
    directory = _directory(anchor, [published, recipient], T0 + DAY)
    old_sign = published.current("sign", T0 + DAY)

    # Rotate the sender; the federation has not published the new keys yet.
    Keyring.create(tmp_path / "a", "jc-mitte", now=T0 + 2 * DAY)
    rotated = Keyring.load(tmp_path / "a")
    at = T0 + 3 * DAY
    assert rotated.current("sign", at).kid != old_sign.kid

    def sealed(directory: Directory) -> bytes:
        return seal(
            b"body",
            message_type="referral",
            sender=rotated,
            recipients=["sucht-nord"],
            directory=directory,
            consent=CONSENT,
            purpose="referral",
            categories=["contact"],
            lifetime=DAY,
            now=at,
        )

    # Until then the old, published key keeps signing, so peers can still verify.
    envelope = sealed(directory)
    assert envelope[6:22] == old_sign.kid
    assert open_envelope(envelope, recipient, directory, now=at).plaintext == b"body"
    # Once published, the new key signs.
    republished = _directory(anchor, [rotated, recipient], at)
    assert sealed(republished)[6:22] == rotated.current("sign", at).kid
    # A keyring none of whose signing keys is published cannot seal at all.
    stranger = Keyring("jc-mitte", [generate_key("jc-mitte", "sign", T0, T0 + 9 * DAY)])
    with pytest.raises(UnknownKey):
        stranger.current_published("sign", at, directory)


def test_equal_not_before_is_decided_by_the_greatest_kid() -> None:
    """docs/keys.md and docs/envelope.md (Sealing): among keys of one use valid at once with the
    same `not_before`, the current one has the greatest kid, as 16 bytes (= lowercase hex);
    the keyring, seal's choice of signing key and the directory agree."""
    anchor = generate_key("test", "sign", T0 - DAY, T0 + 1000 * DAY)
    signs = [generate_key("jc-mitte", "sign", T0, T0 + 9 * DAY) for _ in range(4)]
    encs = [generate_key("sucht-nord", "enc", T0, T0 + 9 * DAY) for _ in range(4)]
    sender = Keyring("jc-mitte", signs)
    recipient = Keyring("sucht-nord", [*encs, generate_key("sucht-nord", "sign", T0, T0 + DAY)])
    directory = _directory(anchor, [sender, recipient], T0)
    greatest_sign = max(signs, key=lambda k: k.kid)
    greatest_enc = max(encs, key=lambda k: k.kid)
    assert greatest_sign.kid.hex() == max(k.kid.hex() for k in signs)  # the same order as hex
    assert sender.current("sign", T0) is greatest_sign
    assert sender.current_published("sign", T0, directory) is greatest_sign
    assert directory.current_key("sucht-nord", "enc", T0).kid == greatest_enc.kid.hex()
    envelope = seal(
        b"body",
        message_type="referral",
        sender=sender,
        recipients=["sucht-nord"],
        directory=directory,
        consent=CONSENT,
        purpose="referral",
        categories=["contact"],
        lifetime=DAY,
        now=T0,
    )
    assert envelope[6:22] == greatest_sign.kid
    # A later not_before wins over any kid.
    later = generate_key("jc-mitte", "sign", T0 + 1, T0 + 9 * DAY)
    assert Keyring("jc-mitte", [*signs, later]).current("sign", T0 + 1) is later
