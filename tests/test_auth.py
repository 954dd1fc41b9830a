"""Bearer tokens: pinned algorithm, issuer, audience, expiry and scopes; keys from PEM or JWKS.

The JWKS tests serve the key set from a real aiohttp server on a loopback port.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from bridge.config import AuthConfig
from bridge.errors import ConfigError
from bridge.http.auth import (
    AuthenticationFailed,
    Claims,
    InsufficientScope,
    TokenVerifier,
    generate_signing_key,
    mint_token,
)

ISSUER = "bridge-test"
AUDIENCE = "bridge:jobcenter-unna"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "token.key", tmp_path / "token.pub.pem"
    generate_signing_key(private, public)
    return private, public


def _verifier(public: Path, **overrides: object) -> TokenVerifier:
    options: dict[str, object] = {"issuer": ISSUER, "audience": AUDIENCE, "public_key_file": "x"}
    options.update(overrides)
    return TokenVerifier(AuthConfig(**options), public)  # type: ignore[arg-type]


def _token(private: Path, **overrides: object) -> str:
    options: dict[str, object] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "subject": "case-system",
        "scopes": ["messages:send", "messages:read"],
    }
    options.update(overrides)
    return mint_token(private, **options)  # type: ignore[arg-type]


async def test_valid_token_gives_subject_and_scopes(keys: tuple[Path, Path]) -> None:
    private, public = keys
    claims = await _verifier(public).verify("Bearer " + _token(private))
    assert claims == Claims("case-system", frozenset({"messages:send", "messages:read"}))
    claims.require("messages:send")
    with pytest.raises(InsufficientScope) as info:
        claims.require("inbox:ack")
    assert info.value.reason == "auth.insufficient_scope"


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (None, "required"),
        ("", "required"),
        ("Basic dXNlcjpwYXNz", "Bearer"),
        ("Bearer", "Bearer"),
        ("Bearer not.a.token", "not valid"),
        ("Bearer " + "a" * 9000, "Bearer"),
    ],
)
async def test_missing_or_malformed_header(
    keys: tuple[Path, Path], header: str | None, why: str
) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        await _verifier(keys[1]).verify(header)
    assert why in str(info.value)
    assert info.value.reason == "auth.invalid_token"


async def test_wrong_issuer_audience_expired_and_foreign_key(
    keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = keys
    verifier = _verifier(public)
    bad = {
        "issuer": _token(private, issuer="someone-else"),
        "audience": _token(private, audience="bridge:spdi-unna"),
        "expired": _token(private, now=int(time.time()) - 7200, lifetime_seconds=60),
    }
    generate_signing_key(tmp_path / "other.key", tmp_path / "other.pub.pem")
    bad["signature"] = _token(tmp_path / "other.key")
    for what, token in bad.items():
        with pytest.raises(AuthenticationFailed) as info:
            await verifier.verify("Bearer " + token)
        message = str(info.value)
        assert token not in message, what
        assert what in message.lower() or "expired" in message, (what, message)


async def test_algorithm_is_pinned(keys: tuple[Path, Path]) -> None:
    # An HS256 token "signed" with the public key bytes (the classic confusion attack) and an
    # unsigned one are refused, whatever their claims say.
    _, public = keys
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "iat": 1, "exp": 2**40, "scope": ""}

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    # pyjwt refuses to mint this forgery, so it is assembled by hand.
    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    mac = hmac.new(public.read_bytes(), signing_input.encode(), hashlib.sha256).digest()
    forged = signing_input + "." + b64(mac)
    unsigned = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    for token in (forged, unsigned):
        with pytest.raises(AuthenticationFailed):
            await _verifier(public).verify("Bearer " + token)


async def test_required_claims(keys: tuple[Path, Path]) -> None:
    private, public = keys
    key = load_pem_private_key(private.read_bytes(), password=None)
    now = int(time.time())
    full = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "iat": now, "exp": now + 60}
    for missing in ("exp", "iat", "sub"):
        claims = {k: v for k, v in full.items() if k != missing}
        token = jwt.encode(claims, key, algorithm="EdDSA")  # type: ignore[arg-type]
        with pytest.raises(AuthenticationFailed):
            await _verifier(public).verify("Bearer " + token)
    token = jwt.encode({**full, "scope": ["not", "a", "string"]}, key, algorithm="EdDSA")  # type: ignore[arg-type]
    with pytest.raises(AuthenticationFailed):
        await _verifier(public).verify("Bearer " + token)


def test_mint_refuses_unknown_scopes(keys: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError):
        _token(keys[0], scopes=["messages:send", "admin"])


def test_unreadable_or_bad_public_key_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        _verifier(tmp_path / "missing.pem")
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(ConfigError):
        _verifier(tmp_path / "bad.pem")


# -- JWKS -------------------------------------------------------------------------------------


@pytest.fixture
async def jwks_server(
    unused_tcp_port: int,
) -> AsyncIterator[tuple[str, ed25519.Ed25519PrivateKey, dict[str, int]]]:
    key = ed25519.Ed25519PrivateKey.generate()
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "use": "sig", "alg": "EdDSA"})
    hits = {"count": 0}

    async def serve(request: web.Request) -> web.Response:
        hits["count"] += 1
        return web.json_response({"keys": [jwk]})

    app = web.Application()
    app.router.add_get("/jwks.json", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", unused_tcp_port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{unused_tcp_port}/jwks.json", key, hits
    finally:
        await runner.cleanup()


def _jwks_token(key: ed25519.Ed25519PrivateKey, kid: str = "k1", **claims: object) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "case-system", "iat": now, "exp": now + 60}
    body.update(claims)
    body["scope"] = "inbox:read"
    return jwt.encode(body, key, algorithm="EdDSA", headers={"kid": kid})


async def test_jwks_keys_verify_tokens(
    jwks_server: tuple[str, ed25519.Ed25519PrivateKey, dict[str, int]],
) -> None:
    url, key, hits = jwks_server
    verifier = TokenVerifier(AuthConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=url))
    claims = await verifier.verify("Bearer " + _jwks_token(key))
    assert claims.scopes == {"inbox:read"}
    await verifier.verify("Bearer " + _jwks_token(key))
    assert hits["count"] == 1  # the key set is cached, not fetched per request
    with pytest.raises(AuthenticationFailed):
        await verifier.verify("Bearer " + _jwks_token(key, kid="unknown"))
    other = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(AuthenticationFailed):
        await verifier.verify("Bearer " + _jwks_token(other))
    with pytest.raises(AuthenticationFailed):
        await verifier.verify("Bearer " + _jwks_token(key, aud="bridge:other"))


async def test_unreachable_jwks_is_a_401_not_a_crash(unused_tcp_port: int) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}/jwks.json"
    verifier = TokenVerifier(AuthConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=url))
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(AuthenticationFailed):
        await verifier.verify("Bearer " + _jwks_token(key))
