"""Reaching an existing NATS deployment over TLS with a private CA, as configured in [nats].

The CA and the server certificate are made here with cryptography's x509 API; the server is a
real nats-server (from the wheel) with a hand-written TLS config on a free loopback port.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.config import NatsClientConfig, nats_tls_context
from bridge.errors import ConfigError, TransportError
from bridge.nats.server import find_nats_server, free_port
from bridge.nats.transport import connect


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _make_pki(directory: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("bridge test CA"))
        .issuer_name(_name("bridge test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(_pem_key(server_key))


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    _make_pki(tmp_path)
    seed = nkeys.encode_seed(bytes(32), nkeys.PREFIX_BYTE_USER)
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed + b"\n")
    seed_file.chmod(0o600)
    public = nkeys.from_seed(seed).public_key.decode()
    port = free_port()
    (tmp_path / "tls.conf").write_text(
        f"listen: 127.0.0.1:{port}\n"
        f'tls {{ cert_file: "{tmp_path / "server.pem"}", key_file: "{tmp_path / "server.key"}" }}\n'
        f'authorization {{ users: [ {{ nkey: "{public}" }} ] }}\n'
    )
    proc = await asyncio.create_subprocess_exec(
        str(find_nats_server()),
        "-c",
        str(tmp_path / "tls.conf"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        yield f"tls://127.0.0.1:{port}", seed_file
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def test_private_ca_from_config_reaches_a_tls_server(
    tls_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, seed_file = tls_server
    config = NatsClientConfig(url=url, seed_file=str(seed_file), tls_ca_file="ca.pem")
    context = nats_tls_context(config, lambda name: tmp_path / name)
    assert context is not None
    nc = await connect(url, seed_file, "_INBOX.test", "tls-test", tls=context)
    try:
        await nc.flush(timeout=5)
    finally:
        await nc.close()
    # Without the private CA the server's certificate is not trusted, so nothing connects.
    with pytest.raises(TransportError):
        await connect(url, seed_file, "_INBOX.test", "tls-test", first_connect_timeout=3)


def test_tls_settings_are_optional_and_bad_files_are_config_errors(tmp_path: Path) -> None:
    def resolve(name: str) -> Path:
        return tmp_path / name

    plain = NatsClientConfig(url="nats://127.0.0.1:4222", seed_file="s.nk")
    assert nats_tls_context(plain, resolve) is None
    (tmp_path / "garbage.pem").write_text("not a certificate")
    for config in (
        NatsClientConfig(url="tls://x:1", seed_file="s.nk", tls_ca_file="missing.pem"),
        NatsClientConfig(url="tls://x:1", seed_file="s.nk", tls_ca_file="garbage.pem"),
        NatsClientConfig(url="tls://x:1", seed_file="s.nk", tls_cert_file="garbage.pem"),
    ):
        with pytest.raises(ConfigError) as info:
            nats_tls_context(config, resolve)
        assert info.value.reason == "config.tls"
