"""Configuration of the broker and the adapters: frozen structs parsed once from a TOML file.

Nothing reads configuration from globals or the environment behind the caller's back: a
component gets its config object and passes it on. Relative paths in a file are resolved against
the file's own directory, so a state directory can be moved as a whole. Durations are whole
seconds. Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from .crypto import Limits
from .errors import ConfigError
from .ids import AGENCY_ID_PATTERN

__all__ = [
    "AdapterConfig",
    "AuditConfig",
    "AuthConfig",
    "BrokerConfig",
    "ConsentConfig",
    "DeliveryConfig",
    "DirectoryConfig",
    "ExpiryConfig",
    "HttpConfig",
    "NatsClientConfig",
    "PolicyConfig",
    "ProbeConfig",
    "ProvisionConfig",
    "ProvisionPolicyConfig",
    "StoreQuotaConfig",
    "load_adapter_config",
    "load_broker_config",
    "load_provision_config",
    "nats_tls_context",
]

_Agency = Annotated[str, msgspec.Meta(pattern=AGENCY_ID_PATTERN)]
_Seconds = Annotated[int, msgspec.Meta(ge=1)]
_MAX_CONFIG_BYTES: Final = 1024 * 1024
_C = TypeVar("_C", "BrokerConfig", "AdapterConfig", "ProvisionConfig")


class NatsClientConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a component reaches NATS: a URL and its own nkey seed file (mode 0600).

    `url` is one URL or a list of them (the nodes of a cluster: the client connects to one and
    fails over to the others). For `tls://` URLs the system's trusted CAs verify the server
    unless `tls_ca_file` names a private CA; `tls_cert_file` and `tls_key_file` add a client
    certificate (mutual TLS). `hub_domain` is set only for an adapter behind a leaf node.
    """

    url: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=16)]
    seed_file: str
    connect_timeout_seconds: _Seconds = 5
    request_timeout_seconds: _Seconds = 10
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Only for an adapter behind its agency's own leaf node (docs/nats.md, "Agencies behind
    # leaf nodes"): `url` is the leaf, and the hub's JetStream answers under this domain.
    hub_domain: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None


class DirectoryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where the signed key directory and the pinned trust anchor are."""

    file: str
    anchor: str
    serial_state: str
    reload_seconds: _Seconds = 30


class PolicyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where the signed routing policy is (docs/policy.md).

    It is verified against the trust anchor of `[directory]` and reloaded on the directory's
    schedule; `serial_state` keeps the highest serial accepted, so it cannot be rolled back.
    """

    file: str
    serial_state: str


class AuditConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The broker as the audit writer: its checkpoint signing key, and how often it signs.

    A checkpoint is signed after `checkpoint_every` records, and at the latest
    `checkpoint_seconds` after the first record it does not yet cover.
    """

    key_file: str
    checkpoint_every: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    checkpoint_seconds: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 60


class ConsentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Consent enforcement (docs/consent.md). On unless a config turns it off explicitly;
    `enforce = false` exists for tests and migrations and is logged loudly at start-up."""

    enforce: bool = True


class QuotaConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How many rejections one sender may cause at this broker (docs/broker.md, "Quotas"):
    `rejection_burst` at once, then `rejections_per_minute`; beyond that its submissions wait."""

    rejections_per_minute: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 60
    rejection_burst: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 600


class ExpiryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How the broker watches undelivered inbox copies (docs/broker.md, "Expiry").

    Every `check_seconds` it looks at each copy; one that still waits after `warn_fraction` of
    its time in the inbox gets an `expiring` warning to the recipient.
    """

    check_seconds: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 30
    warn_fraction: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.5


class ProbeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where a process without an API of its own serves `/healthz`, `/readyz` and `/metrics`."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0


class BrokerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    nats: NatsClientConfig
    directory: DirectoryConfig
    http: ProbeConfig | None = None  # health and metrics; none served without it
    audit: AuditConfig
    policy: PolicyConfig
    expiry: ExpiryConfig = msgspec.field(default_factory=ExpiryConfig)
    consent: ConsentConfig = msgspec.field(default_factory=ConsentConfig)
    quota: QuotaConfig = msgspec.field(default_factory=QuotaConfig)
    limits: Limits = msgspec.field(default_factory=Limits)
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=256)] = 32
    publish_timeout_seconds: _Seconds = 10
    base_dir: str = ""

    def path(self, value: str) -> Path:
        return _resolve(self.base_dir, value)


class HttpConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The adapter's HTTP API. `/metrics` is served there too, unless `metrics_port` gives it a
    listener of its own (on `metrics_host`, by default the API's host)."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8400
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 768 * 1024
    metrics_host: str | None = None
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None


class AuthConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How callers of the adapter's API prove who they are: JWT bearer tokens.

    Exactly one of `public_key_file` (PEM) and `jwks_url` names the verification keys.
    """

    issuer: str
    audience: str
    algorithms: list[Literal["EdDSA", "ES256", "RS256", "PS256"]] = msgspec.field(
        default_factory=lambda: ["EdDSA"]
    )
    public_key_file: str | None = None
    jwks_url: str | None = None
    leeway_seconds: Annotated[int, msgspec.Meta(ge=0, le=300)] = 30


class DeliveryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How opened messages reach the local system: pushed to a webhook, or pulled by it.

    Webhook requests are signed with HMAC-SHA256 under the secret in `webhook_secret_file`, and
    while `webhook_old_secret_file` is set also under that one (a second `v1` in the header), so
    a receiver can move to a new secret without a moment where calls fail to verify.
    """

    mode: Literal["webhook", "pull"]
    webhook_url: str | None = None
    webhook_secret_file: str | None = None
    webhook_old_secret_file: str | None = None
    webhook_timeout_seconds: _Seconds = 10
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 8
    backoff_initial_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.5
    backoff_max_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    pull_max_pending: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class AdapterConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    agency: _Agency
    keys_dir: str
    nats: NatsClientConfig
    directory: DirectoryConfig
    policy: PolicyConfig
    auth: AuthConfig
    delivery: DeliveryConfig
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    passphrase_env: str | None = None
    default_lifetime_seconds: _Seconds = 14 * 86400
    idempotency_ttl_seconds: _Seconds = 86400
    consent: ConsentConfig = msgspec.field(default_factory=ConsentConfig)
    # Seals the local references of this agency's consents in its KV bucket (localref.py);
    # created if missing, the same file for every instance of the adapter.
    local_ref_key_file: str = "local-ref.key"
    limits: Limits = msgspec.field(default_factory=Limits)
    # Plaintext bytes per encrypted attachment chunk: a power of two (docs/envelope.md).
    attachment_chunk_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1024 * 1024)] = 256 * 1024
    # An upload not finished within this long was abandoned by an adapter that stopped midway:
    # its chunks are removed (an upload cut off while the adapter runs is removed at once).
    attachment_upload_limit_seconds: Annotated[int, msgspec.Meta(ge=1, le=86400)] = 3600
    # Where `POST /v1/uploads` spools files until a message sends them (local disk, 0700);
    # by default `uploads` beside `keys_dir`.
    upload_dir: str | None = None
    base_dir: str = ""

    def upload_path(self) -> Path:
        if self.upload_dir is not None:
            return self.path(self.upload_dir)
        return self.path(self.keys_dir).parent / "uploads"

    def path(self, value: str) -> Path:
        return _resolve(self.base_dir, value)


def nats_tls_context(
    config: NatsClientConfig, resolve: Callable[[str], Path]
) -> ssl.SSLContext | None:
    """The TLS context for `config`, or None to let the client use the system's defaults."""
    if config.tls_ca_file is None and config.tls_cert_file is None:
        return None
    try:
        context = ssl.create_default_context(
            cafile=str(resolve(config.tls_ca_file)) if config.tls_ca_file else None
        )
        if config.tls_cert_file is not None:
            context.load_cert_chain(
                str(resolve(config.tls_cert_file)),
                str(resolve(config.tls_key_file)) if config.tls_key_file else None,
            )
    except (OSError, ssl.SSLError) as exc:
        # NOTE: ssl's messages name the file and the problem, never key material.
        raise ConfigError(f"[nats] TLS files cannot be used: {exc}", reason="config.tls") from exc
    return context


def _resolve(base: str, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() or not base else Path(base) / path


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read config {path}: {exc.strerror}", reason="config.missing"
        ) from exc
    if len(data) > _MAX_CONFIG_BYTES:
        raise ConfigError(f"config {path} is too large", reason="config.invalid")
    return data


def _decode(path: Path, kind: type[_C]) -> _C:
    try:
        config = msgspec.toml.decode(_read(path), type=kind)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        for replaced in ("routes", "retention"):
            if f"unknown field `{replaced}`" in str(exc):
                raise ConfigError(
                    f"config {path}: `{replaced}` is replaced by the signed routing policy; "
                    "name its file under [policy] (docs/policy.md)",
                    reason="config.invalid",
                ) from exc
        raise ConfigError(f"config {path}: {exc}", reason="config.invalid") from exc
    return msgspec.structs.replace(config, base_dir=str(path.resolve().parent))


class ProvisionPolicyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The signed routing policy whose retention limits provisioning sets, and the federation's
    trust anchor (its public record) that verifies it."""

    file: str
    anchor: str


_Positive = Annotated[int, msgspec.Meta(ge=1)]


class StoreQuotaConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Per-agency quotas the store enforces (docs/nats.md, "Quotas"); one left out keeps its
    default (`bridge.nats.provision.ProvisionSettings`). Sizes in bytes."""

    submit_max_msgs: _Positive | None = None  # per sender, in its submit stream
    submit_max_bytes: _Positive | None = None
    inbox_max_msgs_per_recipient: _Positive | None = None  # per recipient, from all senders
    inbox_max_bytes_per_recipient: _Positive | None = None
    consent_max_msgs_per_issuer: _Positive | None = None  # withdrawals: twice these
    consent_max_bytes_per_issuer: _Positive | None = None

    def settings(self) -> dict[str, Any]:
        """The quotas set here, as `ProvisionSettings` fields."""
        return {
            name: value
            for name in self.__struct_fields__
            if (value := getattr(self, name)) is not None
        }


class ProvisionConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What `bridge nats provision --config` needs for a deployment: where NATS is, the admin
    identity's seed, the agencies, how many copies JetStream keeps (1, 3 or 5), the signed
    policy every age limit comes from (required: nothing else may set them), and the quotas."""

    nats: NatsClientConfig
    policy: ProvisionPolicyConfig
    agencies: Annotated[list[_Agency], msgspec.Meta(min_length=1)]
    replicas: Literal[1, 3, 5] = 3
    # Agencies behind leaf nodes of their own: their submit streams source the leaves'
    # outboxes (docs/nats.md, "Agencies behind leaf nodes").
    leaf_agencies: list[_Agency] = msgspec.field(default_factory=list)
    quotas: StoreQuotaConfig = msgspec.field(default_factory=StoreQuotaConfig)
    base_dir: str = ""

    def path(self, value: str) -> Path:
        return _resolve(self.base_dir, value)


def load_provision_config(path: Path) -> ProvisionConfig:
    from .nats.provision import ProvisionSettings  # the NATS client only where it is needed

    config = _decode(path, ProvisionConfig)
    _check_nats(path, config.nats)
    try:
        ProvisionSettings(**config.quotas.settings())  # out of range, or smaller than a message
    except ConfigError as exc:
        raise ConfigError(f"config {path}: [quotas] {exc}", reason="config.invalid") from exc
    return config


def load_broker_config(path: Path) -> BrokerConfig:
    config = _decode(path, BrokerConfig)
    _check_nats(path, config.nats)
    return config


def _check_nats(path: Path, nats: NatsClientConfig) -> None:
    if nats.tls_key_file is not None and nats.tls_cert_file is None:
        raise ConfigError(
            f"config {path}: [nats] tls_key_file needs tls_cert_file", reason="config.invalid"
        )


def load_adapter_config(path: Path) -> AdapterConfig:
    config = _decode(path, AdapterConfig)
    _check_nats(path, config.nats)
    auth = config.auth
    if (auth.public_key_file is None) == (auth.jwks_url is None):
        raise ConfigError(
            f"config {path}: [auth] needs exactly one of public_key_file and jwks_url",
            reason="config.invalid",
        )
    delivery = config.delivery
    if delivery.mode == "webhook" and not (delivery.webhook_url and delivery.webhook_secret_file):
        raise ConfigError(
            f"config {path}: webhook delivery needs webhook_url and webhook_secret_file",
            reason="config.invalid",
        )
    if delivery.backoff_max_seconds < delivery.backoff_initial_seconds:
        raise ConfigError(
            f"config {path}: backoff_max_seconds is below backoff_initial_seconds",
            reason="config.invalid",
        )
    return config
