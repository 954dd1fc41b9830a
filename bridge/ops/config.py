"""The ops service's configuration: one frozen struct parsed from a TOML file.

    [nats]        url, seed_file (the ops identity: read-only)
    [auth]        issuer, audience, public_key_file or jwks_url (tokens need scope ops:read)
    [http]        host, port; metrics_port to serve /metrics on a listener of its own
    agencies      the federation's agency ids (whose adapters and inboxes to watch)
    [thresholds]  when a message is stuck or close to expiry, when a component is silent
    [alerts]      webhook_url, webhook_secret_file, evaluate_seconds, [[alerts.rules]]

Relative paths are resolved against the file's directory; unknown keys are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from ..config import AuthConfig, NatsClientConfig
from ..errors import ConfigError
from ..ids import AGENCY_ID_PATTERN

__all__ = [
    "DEFAULT_RULES",
    "AlertRule",
    "AlertsConfig",
    "OpsConfig",
    "OpsHttpConfig",
    "Thresholds",
    "load_ops_config",
]

_Agency = Annotated[str, msgspec.Meta(pattern=AGENCY_ID_PATTERN)]
_Seconds = Annotated[int, msgspec.Meta(ge=1, le=90 * 86400)]
_Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
_Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]{0,47}$")]
_MAX_CONFIG_BYTES: Final = 1024 * 1024

RuleKind = Literal["stuck", "near_expiry", "expired", "rejections", "silent", "backlog"]


class OpsHttpConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: _Port = 8405
    metrics_host: str | None = None
    metrics_port: _Port | None = None


class Thresholds(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`stuck_after_seconds`: undelivered this long is stuck. `redelivered_max`: delivered from
    the inbox more often than this is stuck. `near_expiry_seconds`: undelivered and expiring
    within this is near expiry. `silent_after_seconds`: no heartbeat this long is down."""

    stuck_after_seconds: _Seconds = 900
    redelivered_max: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 5
    near_expiry_seconds: _Seconds = 86400
    silent_after_seconds: _Seconds = 60


class AlertRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One rule. `stuck`: messages undelivered longer than `seconds` (per recipient).
    `near_expiry`: undelivered messages that expire within `seconds` (per recipient).
    `expired`: messages expired undelivered within the last `seconds` (per recipient).
    `rejections`: at least `threshold` rejections within the last `seconds`.
    `silent`: an adapter or broker without heartbeat for `seconds`.
    `backlog`: an inbox, or the submissions, with at least `threshold` messages waiting."""

    name: _Name
    kind: RuleKind
    seconds: _Seconds | None = None
    threshold: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] | None = None


DEFAULT_RULES: Final = (
    AlertRule(name="stuck", kind="stuck", seconds=900),
    AlertRule(name="near_expiry", kind="near_expiry", seconds=86400),
    AlertRule(name="expired", kind="expired", seconds=3600),
    AlertRule(name="rejections", kind="rejections", seconds=300, threshold=10),
    AlertRule(name="silent", kind="silent", seconds=60),
    AlertRule(name="backlog", kind="backlog", threshold=100),
)

_NEEDS: Final = {
    "stuck": ("seconds",),
    "near_expiry": ("seconds",),
    "expired": ("seconds",),
    "rejections": ("seconds", "threshold"),
    "silent": ("seconds",),
    "backlog": ("threshold",),
}


class AlertsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    webhook_url: str | None = None
    webhook_secret_file: str | None = None  # signs each post like the adapters' webhooks
    webhook_timeout_seconds: Annotated[int, msgspec.Meta(ge=1, le=60)] = 5
    evaluate_seconds: Annotated[float, msgspec.Meta(ge=0.1, le=300)] = 5.0
    rules: list[AlertRule] = msgspec.field(default_factory=lambda: list(DEFAULT_RULES))


class OpsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    nats: NatsClientConfig
    auth: AuthConfig
    agencies: list[_Agency]
    http: OpsHttpConfig = msgspec.field(default_factory=OpsHttpConfig)
    thresholds: Thresholds = msgspec.field(default_factory=Thresholds)
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)
    max_messages: Annotated[int, msgspec.Meta(ge=100, le=5_000_000)] = 100_000
    backlog_seconds: Annotated[float, msgspec.Meta(ge=0.1, le=300)] = 5.0
    base_dir: str = ""

    def path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() or not self.base_dir else Path(self.base_dir) / path


def load_ops_config(path: Path) -> OpsConfig:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read config {path}: {exc.strerror}", reason="config.missing"
        ) from exc
    if len(data) > _MAX_CONFIG_BYTES:
        raise ConfigError(f"config {path} is too large", reason="config.invalid")
    try:
        config = msgspec.toml.decode(data, type=OpsConfig)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path}: {exc}", reason="config.invalid") from exc
    config = msgspec.structs.replace(config, base_dir=str(path.resolve().parent))
    check_ops_config(config, str(path))
    return config


def check_ops_config(config: OpsConfig, where: str = "ops config") -> None:
    def bad(message: str) -> ConfigError:
        return ConfigError(f"{where}: {message}", reason="config.invalid")

    auth = config.auth
    if (auth.public_key_file is None) == (auth.jwks_url is None):
        raise bad("[auth] needs exactly one of public_key_file and jwks_url")
    if len(set(config.agencies)) != len(config.agencies):
        raise bad("agencies are repeated")
    names = [rule.name for rule in config.alerts.rules]
    if len(set(names)) != len(names):
        raise bad("alert rule names are repeated")
    for rule in config.alerts.rules:
        for needed in _NEEDS[rule.kind]:
            if getattr(rule, needed) is None:
                raise bad(f"alert rule {rule.name!r} ({rule.kind}) needs {needed}")
    if config.alerts.webhook_secret_file is not None and config.alerts.webhook_url is None:
        raise bad("[alerts] webhook_secret_file needs webhook_url")
