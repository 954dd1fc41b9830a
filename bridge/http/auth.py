"""JWT bearer tokens for bridge's HTTP APIs (the adapter's and ops').

Callers (the agency's own systems) present `Authorization: Bearer <jwt>`. The token must be
signed with a pinned algorithm by a key from the configured public key file or JWKS URL, and
carry the configured issuer and audience, an expiry, and the scopes the endpoint needs in the
space-separated `scope` claim (RFC 8693 style). pyjwt does all the checking; this module only
chooses its options and turns its errors into ours.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from .._files import write_private_file
from ..config import AuthConfig
from ..errors import ConfigError, PolicyError

__all__ = [
    "OPS_SCOPES",
    "SCOPES",
    "AuthenticationFailed",
    "Claims",
    "InsufficientScope",
    "TokenVerifier",
    "generate_signing_key",
    "mint_token",
]

SCOPES: Final = (
    "messages:send",
    "messages:read",
    "inbox:read",
    "inbox:ack",
    "consents:read",
    "consents:write",
)
OPS_SCOPES: Final = ("ops:read",)
"""The ops role: read-only access to the ops service's dashboard and API (another audience)."""
_MAX_TOKEN_BYTES: Final = 8192
_TIME_CLAIMS: Final = ("exp", "iat", "nbf")


class AuthenticationFailed(PolicyError):
    """No token, or one that does not verify (401). The message never echoes the token."""

    reason = "auth.invalid_token"


class InsufficientScope(PolicyError):
    """A valid token without the scope the endpoint needs (403)."""

    reason = "auth.insufficient_scope"


@dataclass(frozen=True)
class Claims:
    subject: str
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise InsufficientScope(f"this call needs the scope {scope!r}")


class TokenVerifier:
    """Checks bearer tokens against one issuer, audience and set of pinned algorithms."""

    def __init__(self, config: AuthConfig, public_key_path: Path | None = None) -> None:
        self._config = config
        self._algorithms = list(config.algorithms)
        self._key: object | None = None
        self._jwks: jwt.PyJWKClient | None = None
        if config.jwks_url is not None:
            self._jwks = jwt.PyJWKClient(config.jwks_url, cache_keys=True, lifespan=300)
        else:
            if public_key_path is None:
                raise ConfigError("a public key file is needed", reason="config.invalid")
            try:
                pem = public_key_path.read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read token public key {public_key_path}: {exc.strerror}",
                    reason="config.missing",
                ) from exc
            try:
                self._key = jwt.algorithms.get_default_algorithms()[
                    self._algorithms[0]
                ].prepare_key(pem)
            except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
                raise ConfigError(
                    f"token public key {public_key_path} is not a valid key",
                    reason="config.invalid",
                ) from exc

    async def verify(self, authorization: str | None) -> Claims:
        """Check an `Authorization` header value; return the caller's claims or raise."""
        if not authorization:
            raise AuthenticationFailed("a bearer token is required")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN_BYTES:
            raise AuthenticationFailed("the Authorization header must be 'Bearer <token>'")
        key = self._key
        if self._jwks is not None:
            try:
                key = (await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)).key
            except jwt.PyJWKClientConnectionError as exc:
                raise AuthenticationFailed("token keys cannot be fetched right now") from exc
            except jwt.PyJWTError as exc:
                raise AuthenticationFailed("the token's key is unknown") from exc
        try:
            claims = jwt.decode(
                token,
                key=key,  # type: ignore[arg-type]
                algorithms=self._algorithms,
                audience=self._config.audience,
                issuer=self._config.issuer,
                leeway=self._config.leeway_seconds,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationFailed("the token has expired") from exc
        except jwt.PyJWTError as exc:
            # NOTE: pyjwt's messages name the failed check (audience, issuer, signature), never
            # the token itself, so they are safe to pass on and help the caller fix it.
            raise AuthenticationFailed(f"the token is not valid: {exc}") from exc
        # NOTE: pyjwt checks the times with int(), which also takes "1795000000" (a string) and
        # True; RFC 7519 says NumericDate, a JSON number. iss, sub, aud and jti it type-checks.
        for name in _TIME_CLAIMS:
            value = claims.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise AuthenticationFailed(f"the token's {name!r} claim is not a number")
        scope = claims.get("scope", "")
        subject = claims.get("sub")
        if not isinstance(scope, str) or not isinstance(subject, str) or not subject:
            raise AuthenticationFailed("the token's scope or subject is malformed")
        return Claims(subject=subject, scopes=frozenset(scope.split()))


def generate_signing_key(private_path: Path, public_path: Path) -> None:
    """An Ed25519 token-signing key pair for the embedded default (`bridge token`)."""
    key = ed25519.Ed25519PrivateKey.generate()
    write_private_file(
        private_path, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    public_path.write_bytes(
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )


def mint_token(
    private_key_path: Path,
    *,
    issuer: str,
    audience: str,
    subject: str,
    scopes: Iterable[str],
    lifetime_seconds: int = 3600,
    now: int | None = None,
) -> str:
    """Sign a token for the embedded default's Ed25519 key (EdDSA)."""
    wanted = list(scopes)
    known = SCOPES + OPS_SCOPES
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise ConfigError(f"unknown scopes {unknown}; known: {list(known)}", reason="auth.scope")
    try:
        key = load_pem_private_key(private_key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"cannot load token signing key {private_key_path}", reason="config.invalid"
        ) from exc
    at = int(time.time()) if now is None else now
    return jwt.encode(
        {
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "scope": " ".join(wanted),
            "iat": at,
            "nbf": at,
            "exp": at + lifetime_seconds,
            "jti": str(uuid.uuid4()),
        },
        key,  # type: ignore[arg-type]
        algorithm="EdDSA",
    )
