"""The files behind `bridge keys` and `bridge federation`, as functions tests can call.

Two kinds of directory live on disk:

- an agency's key directory: its private key files (`*.key`, mode 0600) and its public bundle
  `<agency>.pub.json`, which the agency hands to the federation operator;
- the federation operator's directory: the trust anchor's private key `anchor.key` (0600), its
  public record `anchor.pub.json` (what every component pins), the human-editable draft
  `draft.json`, the last signed serial `serial` and the signed key directory `directory.bin`.

Every function checks all of its input before it writes anything, and every write is atomic
(a temporary file in the same directory, fsync, rename), so a refused command leaves the files
as they were. Errors name files and fields, never a passphrase or a seed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from .._files import write_file
from ..crypto import (
    AgencyPublicKeys,
    Keyring,
    PrivateKey,
    PublicKeyRecord,
    generate_key,
    kid_hex,
    load_key_file,
    verify_document,
    write_key_file,
)
from ..errors import BridgeError, ConfigError
from ..ids import AGENCY_ID_PATTERN, check_agency_id
from .directory import (
    CONTEXT,
    MAGIC,
    MAX_DIRECTORY_BYTES,
    ROLES,
    AgencyEntry,
    Directory,
    DirectoryBody,
    SerialState,
    load_anchor,
    sign_directory,
)

__all__ = [
    "ANCHOR_KEY",
    "ANCHOR_PUB",
    "DRAFT",
    "SERIAL",
    "SIGNED",
    "AgencyChange",
    "Draft",
    "KeyStatus",
    "add_agency",
    "bundle_path",
    "init_federation",
    "key_statuses",
    "load_anchor_pair",
    "load_bundle",
    "load_draft",
    "new_keys",
    "read_passphrase",
    "revoke_key",
    "rotate_keys",
    "show_directory",
    "sign_draft",
    "write_bundle",
]

ANCHOR_KEY: Final = "anchor.key"
ANCHOR_PUB: Final = "anchor.pub.json"
DRAFT: Final = "draft.json"
SERIAL: Final = "serial"
SIGNED: Final = "directory.bin"

DAY: Final = 86400
# Upper bounds keep a typo (`--valid-days 36500`) from minting a key or directory that outlives
# any sensible rotation; the defaults are what an operator gets without thinking.
DEFAULT_KEY_DAYS: Final = 365
MAX_KEY_DAYS: Final = 3 * 365
DEFAULT_ANCHOR_DAYS: Final = 5 * 365
MAX_ANCHOR_DAYS: Final = 10 * 365
DEFAULT_DIRECTORY_DAYS: Final = 30
MAX_DIRECTORY_DAYS: Final = 366
_MAX_JSON_BYTES: Final = 4 * 1024 * 1024
_MAX_PASSPHRASE_BYTES: Final = 4096

_Agency = Annotated[str, msgspec.Meta(pattern=AGENCY_ID_PATTERN)]


class Draft(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The operator's working copy of the directory: what `sign` turns into a signed body."""

    federation: _Agency
    agencies: list[AgencyEntry] = msgspec.field(default_factory=list)
    revoked: list[str] = msgspec.field(default_factory=list)


@dataclass(frozen=True)
class AgencyChange:
    """What `add_agency` did: the agency's entry now, the key ids it added, whether it is new."""

    entry: AgencyEntry
    added: list[str]
    created: bool


KeyState = Literal["current", "opening-only", "superseded", "pending", "expired"]


@dataclass(frozen=True)
class KeyStatus:
    """One key of a keyring as `bridge keys show` lists it: metadata only, never the seed."""

    use: str
    kid: str
    not_before: int
    not_after: int
    state: KeyState


# -- files ------------------------------------------------------------------------------------


def _write_public(path: Path, data: bytes) -> None:
    write_file(path, data, mode=0o644)


def _read_bounded(path: Path, what: str, reason: str) -> bytes:
    try:
        if path.stat().st_size > _MAX_JSON_BYTES:
            raise ConfigError(f"{what} {path} is too large", reason=reason)
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}", reason=reason) from exc


def _json(value: object) -> bytes:
    return msgspec.json.format(msgspec.json.encode(value), indent=2) + b"\n"


def _check_days(days: int, maximum: int, what: str) -> int:
    if not 1 <= days <= maximum:
        raise ConfigError(f"{what} validity must be 1 to {maximum} days", reason="config.validity")
    return days * DAY


def _now(now: int | None) -> int:
    return int(time.time()) if now is None else now


def read_passphrase(
    *,
    file: Path | None = None,
    env: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> bytes | None:
    """The passphrase from a file or an environment variable (never argv: `ps` shows argv).

    A file's one trailing newline is dropped, so `echo secret > f` works. None when neither is
    given; an empty passphrase is refused rather than silently meaning "no encryption".
    """
    if file is not None and env is not None:
        raise ConfigError("give a passphrase file or variable, not both", reason="keys.passphrase")
    if file is not None:
        try:
            if file.stat().st_size > _MAX_PASSPHRASE_BYTES:
                raise ConfigError(f"passphrase file {file} is too large", reason="keys.passphrase")
            value = file.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read passphrase file {file}: {exc.strerror}", reason="keys.passphrase"
            ) from exc
        value = value.removesuffix(b"\n").removesuffix(b"\r")
        source = f"passphrase file {file}"
    elif env is not None:
        text = (os.environ if environ is None else environ).get(env)
        if text is None:
            raise ConfigError(f"environment variable {env} is not set", reason="keys.passphrase")
        value = text.encode()
        source = f"environment variable {env}"
    else:
        return None
    if not value:
        raise ConfigError(f"{source} holds an empty passphrase", reason="keys.passphrase")
    return value


# -- agency keys ------------------------------------------------------------------------------


def bundle_path(directory: Path, agency: str) -> Path:
    return directory / f"{check_agency_id(agency)}.pub.json"


def write_bundle(directory: Path, keyring: Keyring) -> Path:
    """Write the keyring's public half as `<agency>.pub.json` (readable: nothing secret)."""
    path = bundle_path(directory, keyring.agency)
    _write_public(path, _json(keyring.public()))
    return path


def new_keys(
    directory: Path,
    agency: str,
    *,
    days: int = DEFAULT_KEY_DAYS,
    passphrase: bytes | None = None,
    now: int | None = None,
) -> tuple[Keyring, Path]:
    """Create an agency's first signing and encryption key and its public bundle."""
    check_agency_id(agency)
    valid = _check_days(days, MAX_KEY_DAYS, "key")
    if directory.is_dir() and any(directory.glob("*.key")):
        raise ConfigError(
            f"{directory} already holds keys; use `bridge keys rotate`", reason="keys.exists"
        )
    keys = Keyring.create(
        directory, agency, now=_now(now), valid_seconds=valid, passphrase=passphrase
    )
    keyring = Keyring(agency, keys)
    return keyring, write_bundle(directory, keyring)


def rotate_keys(
    directory: Path,
    *,
    days: int = DEFAULT_KEY_DAYS,
    passphrase: bytes | None = None,
    now: int | None = None,
) -> tuple[Keyring, list[PrivateKey], Path]:
    """Add a new signing and encryption key valid from now; the old ones stay for opening.

    The new keys become current at once, so the agency's signatures use a key the directory
    does not list until the operator adds the new bundle and signs again (docs/keys.md).
    """
    valid = _check_days(days, MAX_KEY_DAYS, "key")
    # Loading first proves the passphrase and the keyring before anything is written.
    old = Keyring.load(directory, passphrase)
    made = Keyring.create(
        directory, old.agency, now=_now(now), valid_seconds=valid, passphrase=passphrase
    )
    keyring = Keyring(old.agency, [*old.keys(), *made])
    return keyring, made, write_bundle(directory, keyring)


def key_statuses(keyring: Keyring, now: int | None = None) -> list[KeyStatus]:
    at = _now(now)
    current: set[bytes] = set()
    for use in ("sign", "enc"):
        # No current key of a use (all expired) is a state to show, not an error.
        with contextlib.suppress(BridgeError):
            current.add(keyring.current(use, at).kid)
    statuses = []
    held = keyring.keys()
    for key in held:
        state: KeyState
        if key.kid in current:
            state = "current"
        elif at >= key.not_after:
            state = "expired"
        elif at < key.not_before:
            state = "pending"
        else:
            state = "opening-only" if key.use == "enc" else "superseded"
        statuses.append(KeyStatus(key.use, kid_hex(key.kid), key.not_before, key.not_after, state))
    return statuses


# -- federation directory ---------------------------------------------------------------------


def init_federation(
    directory: Path,
    federation: str,
    *,
    days: int = DEFAULT_ANCHOR_DAYS,
    passphrase: bytes | None = None,
    now: int | None = None,
) -> PublicKeyRecord:
    """Create the trust anchor, its pinned public record and an empty draft."""
    check_agency_id(federation)
    valid = _check_days(days, MAX_ANCHOR_DAYS, "trust anchor")
    for name in (ANCHOR_KEY, ANCHOR_PUB, DRAFT, SERIAL, SIGNED):
        if (directory / name).exists():
            raise ConfigError(
                f"{directory / name} exists; this directory already holds a federation",
                reason="federation.exists",
            )
    start = _now(now)
    anchor = generate_key(federation, "sign", start, start + valid)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_key_file(directory / ANCHOR_KEY, anchor, passphrase)
    record = anchor.public_record()
    _write_public(directory / ANCHOR_PUB, _json(record))
    _write_public(directory / DRAFT, _json(Draft(federation=federation)))
    return record


def _draft_error(directory: Path, message: str) -> ConfigError:
    return ConfigError(f"{directory / DRAFT}: {message}", reason="federation.draft_invalid")


def load_draft(directory: Path) -> Draft:
    """Read and check `draft.json`: what `sign` would refuse is refused here already."""
    path = directory / DRAFT
    if not path.exists():
        raise ConfigError(
            f"no {DRAFT} in {directory}; run `bridge federation init` first",
            reason="federation.missing",
        )
    raw = _read_bounded(path, "draft", "federation.draft_invalid")
    try:
        draft = msgspec.json.decode(raw, type=Draft)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _draft_error(directory, f"malformed: {exc}") from exc
    owners: dict[str, str] = {}
    seen: set[str] = set()
    for entry in draft.agencies:
        if entry.id in seen:
            raise _draft_error(directory, f"agency {entry.id} is listed twice")
        seen.add(entry.id)
        for key in entry.keys:
            try:
                key.check()
            except BridgeError as exc:
                raise _draft_error(directory, f"agency {entry.id}: {exc}") from exc
            if key.kid in owners:
                raise _draft_error(directory, f"key {key.kid} is listed twice")
            owners[key.kid] = entry.id
    for kid in draft.revoked:
        if kid not in owners:
            raise _draft_error(directory, f"revoked key {kid} belongs to no agency")
    return draft


def _save_draft(directory: Path, draft: Draft) -> None:
    _write_public(directory / DRAFT, _json(draft))


def load_bundle(path: Path) -> AgencyPublicKeys:
    """Read an agency's public bundle and check every key id against its key."""
    raw = _read_bounded(path, "public bundle", "federation.bundle_invalid")
    try:
        return msgspec.json.decode(raw, type=AgencyPublicKeys).check()
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"public bundle {path} is malformed: {exc}", reason="federation.bundle_invalid"
        ) from exc
    except BridgeError as exc:
        raise ConfigError(
            f"public bundle {path}: {exc}", reason="federation.bundle_invalid"
        ) from exc


def add_agency(
    directory: Path, agency: str, name: str, role: str, bundle: AgencyPublicKeys
) -> AgencyChange:
    """Add an agency to the draft, or update one: keys merge, so rotated-out keys stay listed."""
    check_agency_id(agency)
    if role not in ROLES:
        raise ConfigError(
            f"unknown role {role!r}; one of: {', '.join(ROLES)}", reason="federation.role_unknown"
        )
    if not 1 <= len(name) <= 200 or not name.isprintable() or name != name.strip():
        raise ConfigError(
            "agency name must be 1 to 200 printable characters without surrounding spaces",
            reason="federation.name_invalid",
        )
    bundle.check()
    if bundle.agency != agency:
        raise ConfigError(
            f"the public bundle is for agency {bundle.agency}, not {agency}",
            reason="federation.bundle_agency",
        )
    draft = load_draft(directory)
    existing = next((e for e in draft.agencies if e.id == agency), None)
    owners = {k.kid: e.id for e in draft.agencies for k in e.keys}
    keys = list(existing.keys) if existing else []
    known = {k.kid: k for k in keys}
    added = []
    for record in bundle.keys:
        owner = owners.get(record.kid)
        if owner is not None and owner != agency:
            raise ConfigError(
                f"key {record.kid} already belongs to agency {owner}",
                reason="federation.key_conflict",
            )
        if record.kid in known:
            if known[record.kid] != record:
                raise ConfigError(
                    f"key {record.kid} is listed with another validity",
                    reason="federation.key_conflict",
                )
            continue
        keys.append(record)
        known[record.kid] = record
        added.append(record.kid)
    for use in ("sign", "enc"):
        if not any(k.use == use for k in keys):
            raise ConfigError(
                f"agency {agency} would have no {use} key", reason="federation.bundle_invalid"
            )
    entry = AgencyEntry(id=agency, name=name, role=role, keys=keys)  # type: ignore[arg-type]
    agencies = [entry if e.id == agency else e for e in draft.agencies]
    if existing is None:
        agencies.append(entry)
    _save_draft(directory, msgspec.structs.replace(draft, agencies=agencies))
    return AgencyChange(entry=entry, added=added, created=existing is None)


def revoke_key(directory: Path, kid: str) -> tuple[str, bool]:
    """Mark a key id revoked in the draft; return its agency and whether it was newly revoked."""
    wanted = kid.strip().lower()
    draft = load_draft(directory)
    owner = next((e.id for e in draft.agencies for k in e.keys if k.kid == wanted), None)
    if owner is None:
        raise ConfigError(
            "that key id belongs to no agency in the draft", reason="federation.unknown_kid"
        )
    if wanted in draft.revoked:
        return owner, False
    _save_draft(directory, msgspec.structs.replace(draft, revoked=[*draft.revoked, wanted]))
    return owner, True


def load_anchor_pair(
    directory: Path, passphrase: bytes | None
) -> tuple[PrivateKey, PublicKeyRecord]:
    """The trust anchor's private key and its pinned public record, checked to belong together."""
    key = load_key_file(directory / ANCHOR_KEY, passphrase)
    record = load_anchor(directory / ANCHOR_PUB)
    if key.use != "sign" or kid_hex(key.kid) != record.kid:
        raise ConfigError(
            f"{ANCHOR_KEY} and {ANCHOR_PUB} in {directory} do not belong together",
            reason="federation.anchor_mismatch",
        )
    return key, record


def _signed_serial(path: Path, anchor: PublicKeyRecord) -> int:
    """The serial of a directory we signed before, whether or not it has expired since."""
    if not path.exists():
        return 0
    data = path.read_bytes()

    def anchor_key(kid: bytes) -> bytes | None:
        return anchor.public_bytes if kid == anchor.kid_bytes else None

    try:
        _, raw = verify_document(data, MAGIC, CONTEXT, anchor_key, max_bytes=MAX_DIRECTORY_BYTES)
        return msgspec.msgpack.decode(raw, type=DirectoryBody).serial
    except (BridgeError, msgspec.DecodeError) as exc:
        raise ConfigError(
            f"{path} exists but is not a directory signed by this anchor; move it away",
            reason="federation.signed_invalid",
        ) from exc


def sign_draft(
    directory: Path,
    *,
    days: int = DEFAULT_DIRECTORY_DAYS,
    passphrase: bytes | None = None,
    out: Path | None = None,
    now: int | None = None,
) -> tuple[Directory, Path]:
    """Sign the draft as the next serial and write it; return the loaded result and its path.

    The serial is recorded before the directory is written: a lost serial is harmless, two
    different directories with one serial are not (a loader accepts an equal serial).
    """
    valid = _check_days(days, MAX_DIRECTORY_DAYS, "directory")
    target = directory / SIGNED if out is None else out
    draft = load_draft(directory)
    anchor, record = load_anchor_pair(directory, passphrase)
    at = _now(now)
    if at + valid > anchor.not_after:
        raise ConfigError(
            "the directory would outlive the trust anchor; use fewer --valid-days or a new anchor",
            reason="federation.anchor_expiring",
        )
    state = SerialState(directory / SERIAL)
    previous = max(
        state.highest(), *(_signed_serial(p, record) for p in {directory / SIGNED, target})
    )
    body = DirectoryBody(
        v=1,
        federation=draft.federation,
        serial=previous + 1,
        issued_at=at,
        expires_at=at + valid,
        agencies=sorted(draft.agencies, key=lambda e: e.id),
        revoked=sorted(draft.revoked),
    )
    data = sign_directory(body, anchor)
    # Load it as every component will, so a directory they would refuse is never written.
    loaded = Directory.load(data, record, now=at)
    state.record(body.serial)
    _write_public(target, data)
    return loaded, target


def show_directory(
    directory: Path, *, path: Path | None = None, now: int | None = None
) -> Directory:
    """Verify a signed directory against the anchor in `directory`, as a component would."""
    anchor = load_anchor(directory / ANCHOR_PUB)
    return Directory.load_file(directory / SIGNED if path is None else path, anchor, now=now)
