"""NATS identities of a federation: one nkey user per agency and per service, least privilege.

Every party authenticates to NATS with its own nkey. The server configuration holds only public
keys; each seed lives in its own file (mode 0600) in a credentials directory (mode 0700) and is
read by the one process that acts as that identity.

Permissions are allow-lists built from `bridge.nats.subjects`; whatever is not listed is denied. An
agency may publish only its own submissions, pull only from its own inbox and status consumers,
use only its own KV bucket, write only its own part of the consent registry (and read records
whose subject it names) and receive replies only on its own inbox prefix. It cannot create,
delete or inspect streams or consumers. The JetStream API subjects below are the exact requests
nats-py makes for those operations (`fetch` on a bound pull subscription, `msg.ack()`,
`js.key_value()` and `kv.get/put/create/update/delete`), checked against its source.
"""

from __future__ import annotations

import collections
import enum
import json
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nkeys

from .._files import write_private_file
from ..errors import ConfigError, ProtocolError
from ..ids import check_agency_id
from .subjects import (
    BROKER_CONSUMER,
    HUB_DOMAIN,
    REGISTRATION_CONSUMER,
    WITHDRAWAL_CONSUMER,
    agency_consent_publish_subjects,
    agency_inbox_prefix,
    attach_filter_all,
    attach_read_subjects,
    attach_write_subjects,
    audit_read_subjects,
    audit_stream_admin_subjects,
    audit_write_subjects,
    consent_read_subjects,
    consent_stream,
    disclosure_subject,
    disclosure_subjects_all,
    heartbeat_filter,
    heartbeat_subject,
    heartbeat_subjects_all,
    in_domain,
    inbox_consumer,
    inbox_edit_subjects,
    inbox_stream,
    inbox_subjects_all,
    js_api_prefix,
    kv_bucket_api_subjects,
    leaf_source_subjects,
    ops_read_api_subjects,
    pending_write_subjects,
    pull_consumer_api_subjects,
    report_filter,
    report_subjects_all,
    role_inbox_prefix,
    status_consumer,
    status_stream,
    status_subjects_all,
    stream_settings_subjects,
    submit_stream,
    submit_subject,
)

__all__ = [
    "ACCOUNT",
    "MAX_AGENCIES",
    "Credentials",
    "Identity",
    "Permissions",
    "Role",
    "adapter_on_leaf_permissions",
    "check_federation",
    "check_leaf_agencies",
    "leaf_permissions",
    "permissions_for",
    "public_key_of_seed_file",
    "render_accounts",
    "render_users",
]

ACCOUNT = "BRIDGE"
"""The one NATS account every bridge identity lives in; it has JetStream enabled."""

MAX_AGENCIES = 1000
"""Upper bound on a federation's size, so a typo cannot render a config of unbounded size."""

_SEED_SUFFIX = ".nk"
_MAX_SEED_FILE = 256  # a user seed is 58 characters; anything much longer is not a seed file
_AGENCY_FILE_PREFIX = "agency-"
_LEAF_FILE_PREFIX = "leaf-"


class Role(enum.StrEnum):
    AGENCY = "agency"
    LEAF = "leaf"  # an agency's leaf node, connected to the hub (docs/nats.md)
    BROKER = "broker"
    OPS = "ops"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who connects to NATS: a role, and for agencies the agency id."""

    role: Role
    agency: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.role, Role):
            raise TypeError("role must be a Role")
        if self.role in (Role.AGENCY, Role.LEAF):
            check_agency_id(self.agency)
        elif self.agency is not None:
            raise ValueError(f"a {self.role.value} identity has no agency id")

    @classmethod
    def for_agency(cls, agency: str) -> Identity:
        return cls(Role.AGENCY, check_agency_id(agency))

    @classmethod
    def leaf(cls, agency: str) -> Identity:
        """The leaf node of `agency`, as the hub knows it: its remote's nkey."""
        return cls(Role.LEAF, check_agency_id(agency))

    @classmethod
    def broker(cls) -> Identity:
        return cls(Role.BROKER)

    @classmethod
    def ops(cls) -> Identity:
        return cls(Role.OPS)

    @classmethod
    def admin(cls) -> Identity:
        return cls(Role.ADMIN)

    @property
    def name(self) -> str:
        """A stable name, also the seed file's stem and the connection name."""
        if self.role is Role.AGENCY:
            assert self.agency is not None
            return _AGENCY_FILE_PREFIX + self.agency
        if self.role is Role.LEAF:
            assert self.agency is not None
            return _LEAF_FILE_PREFIX + self.agency
        return self.role.value

    @property
    def inbox_prefix(self) -> str:
        """The reply-inbox prefix this identity must connect with (and may subscribe below)."""
        if self.role in (Role.AGENCY, Role.LEAF):  # a leaf carries its adapter's replies
            assert self.agency is not None
            return agency_inbox_prefix(self.agency)
        return role_inbox_prefix(self.role.value)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Permissions:
    """Subjects an identity may publish to and subscribe to; everything else is denied.

    `deny_publish` carves exceptions out of a broad allow (the admin's `>`).
    """

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    deny_publish: tuple[str, ...] = ()
    # May answer requests it received, on their reply subjects only (a service's replies go to
    # the asker's own inbox, which no allow-list could name in advance).
    allow_responses: bool = False


def permissions_for(identity: Identity, federation: Sequence[str]) -> Permissions:
    """The allow-lists of one identity in a federation; see docs/nats.md for the reasoning.

    The broker's list names each agency's submit stream, so it consumes exactly the streams
    of the federation's agencies (and nothing that merely has a consumer named `broker`).
    """
    own_replies = f"{identity.inbox_prefix}.>"
    if identity.role is Role.AGENCY:
        assert identity.agency is not None
        agency = identity.agency
        return Permissions(
            publish=(
                submit_subject(agency),
                report_filter(agency),
                heartbeat_subject("adapter", agency),
                *pull_consumer_api_subjects(inbox_stream(agency), inbox_consumer(agency)),
                *pull_consumer_api_subjects(status_stream(agency), status_consumer(agency)),
                *kv_bucket_api_subjects(agency),
                *agency_consent_publish_subjects(agency),
                *consent_read_subjects(),
                disclosure_subject(agency),
                *attach_write_subjects(agency),
                *attach_read_subjects(agency, check_federation(federation)),
            ),
            subscribe=(own_replies,),
        )
    if identity.role is Role.LEAF:
        assert identity.agency is not None
        return leaf_permissions(identity.agency, federation)
    if identity.role is Role.BROKER:
        return Permissions(
            publish=(
                *(
                    subject
                    for agency in check_federation(federation)
                    for subject in pull_consumer_api_subjects(
                        submit_stream(agency), BROKER_CONSUMER
                    )
                ),
                inbox_subjects_all(),
                status_subjects_all(),
                *audit_write_subjects(),
                *consent_read_subjects(),
                *(
                    subject
                    for agency in check_federation(federation)
                    for stream, consumer in (
                        (consent_stream(agency, "record"), REGISTRATION_CONSUMER),
                        (consent_stream(agency, "withdrawal"), WITHDRAWAL_CONSUMER),
                    )
                    for subject in pull_consumer_api_subjects(stream, consumer)
                ),
                *inbox_edit_subjects(check_federation(federation)),
                *pending_write_subjects(),
                *stream_settings_subjects(check_federation(federation)),
                heartbeat_filter("broker"),
            ),
            subscribe=(own_replies, disclosure_subjects_all()),
            allow_responses=True,
        )
    if identity.role is Role.OPS:
        # Read-only: the status, report and audit streams' state and single messages through the
        # direct-get API, the state of the submit and inbox consumers (backlogs), and listening
        # to status events, reports and heartbeats as they pass. No consumer, so ops can neither
        # take events from an agency's status consumer nor leave server-side state behind.
        return Permissions(
            publish=(*ops_read_api_subjects(check_federation(federation)), *audit_read_subjects()),
            subscribe=(
                own_replies,
                status_subjects_all(),
                report_subjects_all(),
                heartbeat_subjects_all(),
            ),
        )
    # The admin provisions everything, but may neither write audit records nor delete, purge
    # or remove the audit stream: the trail must hold against its operators too.
    return Permissions(publish=(">",), subscribe=(">",), deny_publish=audit_stream_admin_subjects())


def leaf_permissions(agency: str, federation: Sequence[str]) -> Permissions:
    """The leaf connection of an agency at the hub: what the agency may do, and no more.

    A leaf connection's publish list is what may flow from the leaf into the hub, its
    subscribe list what may flow from the hub to the leaf. The adapter behind the leaf asks
    the hub's JetStream under its domain (`$JS.hub.API...`), so its API subjects appear in
    both forms. Its submissions never go to the hub directly: they reach `bridge.submit.<id>`
    only by the hub sourcing the leaf's outbox (`leaf_source_subjects`), so a publish
    acknowledged by the leaf cannot also land at the hub a second way. Nor do its bucket's
    writes: the adapter's bucket lives on the leaf.
    """
    own = permissions_for(Identity.for_agency(agency), federation)
    local = {submit_subject(agency), *kv_bucket_api_subjects(agency)}
    # nats-server forwards the hub's interest in `bridge.report.*.*` to a leaf allowed only
    # `bridge.report.<id>.*` not at all (a trailing `*` does not reverse-match one), and
    # without that interest the leaf never sends a report. `.>` is forwarded; nothing stores
    # or hears a subject deeper than the message id.
    reports = report_filter(agency)
    direct = tuple(
        reports[:-1] + ">" if subject == reports else subject
        for subject in own.publish
        if subject not in local
    )
    source_publish, source_subscribe = leaf_source_subjects(agency)
    return Permissions(
        publish=(*direct, *in_domain(direct, HUB_DOMAIN), *source_publish),
        subscribe=(*own.subscribe, *source_subscribe),
    )


def adapter_on_leaf_permissions(agency: str) -> Permissions:
    """The adapter's identity on its agency's own leaf node: its submissions and bucket stay
    local; its hub-side requests (inbox, status, consent registry) go to the hub's domain."""
    own = permissions_for(Identity.for_agency(agency), ())
    hub_api = js_api_prefix(HUB_DOMAIN)
    hub = [s for s in leaf_permissions(agency, ()).publish if s.startswith(hub_api)]
    # Attachment chunks addressed to it, in whichever sender's stream at the hub: the leaf
    # does not know the federation, and the hub's user for the leaf names each sender.
    chunks = f"{hub_api}.DIRECT.GET.*.{attach_filter_all(agency)}"
    return Permissions(publish=(*own.publish, *hub, chunks), subscribe=own.subscribe)


# -- files --------------------------------------------------------------------------------------


def _check_private(path: Path, *, directory: bool) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} does not exist", reason="nats.creds_missing") from exc
    kind_ok = stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)
    if not kind_ok:
        what = "a directory" if directory else "a regular file"
        raise ConfigError(f"{path} must be {what}", reason="nats.creds_invalid")
    if st.st_mode & 0o077:
        wanted = "0700" if directory else "0600"
        raise ConfigError(
            f"{path} is accessible by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"it must be {wanted}",
            reason="nats.creds_permissions",
        )


def check_federation(agencies: Iterable[str]) -> tuple[str, ...]:
    """Validate a federation's agency ids: well formed, no duplicates, bounded, sorted."""
    checked: list[str] = []
    for agency in agencies:
        if len(checked) == MAX_AGENCIES:
            raise ConfigError(
                f"a federation may have at most {MAX_AGENCIES} agencies", reason="nats.too_many"
            )
        try:
            checked.append(check_agency_id(agency))
        except ProtocolError as exc:
            shown = repr(agency)[:80] if isinstance(agency, str) else type(agency).__name__
            raise ConfigError(f"agency id {shown}: {exc}", reason=exc.reason) from exc
    dupes = sorted(agency for agency, n in collections.Counter(checked).items() if n > 1)
    if dupes:
        raise ConfigError(f"agency ids repeated: {', '.join(dupes)}", reason="nats.duplicate")
    return tuple(sorted(checked))


class Credentials:
    """A directory (mode 0700) with one nkey seed file (mode 0600) per identity."""

    def __init__(self, directory: Path) -> None:
        """Open an existing credentials directory; see `create` to make one."""
        self._dir = Path(directory)
        _check_private(self._dir, directory=True)

    @classmethod
    def create(cls, directory: Path) -> Credentials:
        """Open `directory`, creating it (and its parents) with mode 0700 if missing."""
        directory = Path(directory)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create {directory}: {exc.strerror}", reason="file.write"
            ) from exc
        return cls(directory)

    @property
    def directory(self) -> Path:
        return self._dir

    def path(self, identity: Identity) -> Path:
        """Where `identity`'s seed file is (whether or not it exists yet)."""
        return self._dir / f"{identity.name}{_SEED_SUFFIX}"

    def exists(self, identity: Identity) -> bool:
        return self.path(identity).exists()

    def seed_file(self, identity: Identity) -> Path:
        """The seed file of `identity`, after checking it exists and only its owner can read it."""
        path = self.path(identity)
        if not path.exists():
            raise ConfigError(
                f"no NATS identity {identity.name!r} in {self._dir}; run `bridge nats config`",
                reason="nats.identity_missing",
            )
        _check_private(path, directory=False)
        return path

    def public_key(self, identity: Identity) -> str:
        """The public nkey (`U...`) of `identity`, derived from its seed."""
        return public_key_of_seed_file(self.seed_file(identity))

    def ensure(self, identity: Identity) -> bool:
        """Create `identity`'s seed if it has none; return whether one was created."""
        path = self.path(identity)
        if path.exists():
            self.seed_file(identity)  # check mode and kind
            return False
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        write_private_file(path, bytes(seed) + b"\n")
        return True

    def ensure_federation(self, agencies: Sequence[str]) -> tuple[Identity, ...]:
        """Create every missing identity of a federation; return those created."""
        federation = check_federation(agencies)
        wanted = [Identity.admin(), Identity.broker(), Identity.ops()]
        wanted += [Identity.for_agency(agency) for agency in federation]
        return tuple(identity for identity in wanted if self.ensure(identity))

    def agencies(self) -> tuple[str, ...]:
        """The agency ids that have an identity here, sorted."""
        found = []
        for entry in self._dir.iterdir():
            name = entry.name
            if name.startswith(_AGENCY_FILE_PREFIX) and name.endswith(_SEED_SUFFIX):
                agency = name[len(_AGENCY_FILE_PREFIX) : -len(_SEED_SUFFIX)]
                try:
                    found.append(check_agency_id(agency))
                except ProtocolError as exc:
                    raise ConfigError(
                        f"{entry} is not named after a well-formed agency id",
                        reason="nats.creds_invalid",
                    ) from exc
        return tuple(sorted(found))

    def __repr__(self) -> str:
        return f"Credentials({str(self._dir)!r})"


def public_key_of_seed_file(path: Path) -> str:
    """Derive the public key from a seed file without ever putting the seed into an error."""
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_SEED_FILE + 1)
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}", reason="nats.creds_invalid"
        ) from exc
    seed = bytearray(raw.strip())
    try:
        if len(raw) > _MAX_SEED_FILE or not seed.startswith(b"SU"):
            raise ValueError
        keypair = nkeys.from_seed(seed)
        public: bytes = keypair.public_key
        keypair.wipe()
    except Exception:
        # Deliberately no cause: nkeys errors could echo parts of the seed.
        raise ConfigError(
            f"{path} does not hold an nkey user seed", reason="nats.creds_invalid"
        ) from None
    finally:
        seed[:] = bytes(len(seed))
    return public.decode("ascii")


# -- server configuration ---------------------------------------------------------------------


def _quote(value: str) -> str:
    """A double-quoted string for the nats-server config (JSON escaping is valid there)."""
    return json.dumps(value, ensure_ascii=False)


def _render_list(items: Sequence[str], indent: str) -> str:
    inner = "".join(f"\n{indent}  {_quote(item)}" for item in items)
    return f"[{inner}\n{indent}]"


def render_accounts(
    credentials: Credentials, agencies: Sequence[str], leaf_agencies: Sequence[str] = ()
) -> str:
    """The `accounts` block of the server config for a federation: public keys only.

    `leaf_agencies` run leaf nodes of their own (docs/nats.md): each gets the user its leaf
    connects as (`Identity.leaf`). Every identity must already exist (see
    `Credentials.ensure_federation`); this function never creates one, so rendering cannot
    silently mint a new identity.
    """
    federation = check_federation(agencies)
    leaves = check_leaf_agencies(leaf_agencies, federation)
    identities = [Identity.admin(), Identity.broker(), Identity.ops()]
    identities += [Identity.for_agency(agency) for agency in federation]
    identities += [Identity.leaf(agency) for agency in leaves]
    return render_users(
        [(credentials.public_key(i), permissions_for(i, federation), i.name) for i in identities]
    )


def check_leaf_agencies(leaf_agencies: Iterable[str], federation: Sequence[str]) -> tuple[str, ...]:
    """Agencies behind leaf nodes: well formed, once each, and members of the federation."""
    leaves = check_federation(leaf_agencies)
    strangers = sorted(set(leaves) - set(federation))
    if strangers:
        raise ConfigError(
            f"leaf agencies not in the federation: {', '.join(strangers)}", reason="nats.leaf"
        )
    return leaves


def render_users(users: Sequence[tuple[str, Permissions, str]]) -> str:
    """The `accounts` block with the one bridge account and these users (public key,
    permissions, a name for the comment)."""
    lines = [
        "accounts {",
        f"  {_quote(ACCOUNT)}: {{",
        "    jetstream: enabled",
        "    users: [",
    ]
    for public_key, perms, name in users:
        lines += [
            f"      # {name}",
            f"      {{nkey: {_quote(public_key)}, permissions: {{",
            f"        publish: {{allow: {_render_list(perms.publish, ' ' * 8)}"
            + (f", deny: {_render_list(perms.deny_publish, ' ' * 8)}" if perms.deny_publish else "")
            + "}",
            f"        subscribe: {{allow: {_render_list(perms.subscribe, ' ' * 8)}}}",
            *(["        allow_responses: true"] if perms.allow_responses else []),
            "      }}",
        ]
    lines += ["    ]", "  }", "}"]
    return "\n".join(lines) + "\n"
