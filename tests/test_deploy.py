"""deploy/ and `bridge init`: every config is accepted by nats-server and by bridge's loaders.

`nats-server -t` parses a config the way the server would start from it (TLS files included),
so the checks run in a copy of the config's directory with a throwaway CA's files where the
config expects them. The example NATS configs in deploy/nats/ must be exactly what `bridge init`
renders for deploy/federation.example.toml, so the examples cannot drift from the code.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import aiohttp
import msgspec
import pytest
from pki import ThrowawayCA

from bridge.cli import main
from bridge.config import load_adapter_config, load_broker_config, load_provision_config
from bridge.deploy import init_deployment, load_spec
from bridge.errors import ConfigError
from bridge.http.auth import mint_token
from bridge.nats.provision import ProvisionSettings, provision_at
from bridge.nats.server import NatsServer, find_nats_server, free_port
from bridge.ops import Ops, load_ops_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SPEC = DEPLOY / "federation.example.toml"


def nats_server_accepts(config: Path) -> subprocess.CompletedProcess[str]:
    """Run `nats-server -t` on `config` from its directory (where its TLS paths start)."""
    return subprocess.run(
        [str(find_nats_server()), "-t", "-c", config.name],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def add_tls(nats_dir: Path, nodes: list[str]) -> None:
    ca = ThrowawayCA(nats_dir / "tls")
    for node in nodes:
        ca.issue(node)


def node_names() -> list[str]:
    return [node.name for node in load_spec(SPEC).nats.nodes]


def test_every_nats_config_in_deploy_is_accepted_by_nats_server(tmp_path: Path) -> None:
    copy = tmp_path / "nats"
    shutil.copytree(DEPLOY / "nats", copy)
    configs = sorted(copy.glob("*.conf"))
    nodes = [c for c in configs if c.name != "accounts.conf"]
    assert [c.stem for c in nodes] == node_names()
    # Without the certificates the server refuses: the check really reads the TLS files.
    refused = nats_server_accepts(nodes[0])
    assert refused.returncode != 0
    add_tls(copy, node_names())
    for config in nodes:
        result = nats_server_accepts(config)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_bridge_config_in_deploy_loads() -> None:
    load_spec(SPEC)
    broker = load_broker_config(DEPLOY / "config" / "broker.toml")
    assert broker.http is not None
    assert load_ops_config(DEPLOY / "config" / "ops.toml").agencies
    provision = load_provision_config(DEPLOY / "config" / "provision.toml")
    assert provision.replicas == 3
    modes = set()
    for path in sorted((DEPLOY / "config").glob("adapter-*.toml")):
        modes.add(load_adapter_config(path).delivery.mode)
    assert modes == {"webhook", "pull"}


def _without_keys(accounts: str) -> str:
    return re.sub(r'nkey: "U[A-Z2-7]{55}"', 'nkey: "<public key>"', accounts)


def test_deploy_nats_configs_are_what_bridge_init_renders(tmp_path: Path) -> None:
    result = init_deployment(load_spec(SPEC), tmp_path / "out")
    for rendered in result.nats_configs:
        assert rendered.read_text() == (DEPLOY / "nats" / rendered.name).read_text()
    # The permissions too; only the users' public keys differ from one init to the next.
    accounts = (tmp_path / "out" / "nats" / "accounts.conf").read_text()
    assert _without_keys(accounts) == _without_keys((DEPLOY / "nats" / "accounts.conf").read_text())
    assert _without_keys(accounts) != accounts
    for rendered in (result.broker_config, result.ops_config):
        assert rendered.read_text() == (DEPLOY / "config" / rendered.name).read_text()


def test_bridge_init_writes_a_deployment_every_part_accepts(tmp_path: Path) -> None:
    ca = ThrowawayCA(tmp_path / "pki")
    out = tmp_path / "out"
    assert main(["init", "--spec", str(SPEC), "--out", str(out), "--nats-ca", str(ca.ca_file)]) == 0

    nats_dir = out / "nats"
    assert (nats_dir / "tls" / "ca.pem").read_bytes() == ca.ca_file.read_bytes()
    for node in node_names():
        ca.issue(node)
        for suffix in (".pem", ".key"):
            shutil.copy(ca.directory / f"{node}{suffix}", nats_dir / "tls" / f"{node}{suffix}")
    for config in sorted(nats_dir.glob("nats-*.conf")):
        result = nats_server_accepts(config)
        assert result.returncode == 0, result.stdout + result.stderr
    spec = load_spec(SPEC)
    broker = load_broker_config(out / "broker" / "broker.toml")
    assert isinstance(broker.nats.url, list)
    assert len(broker.nats.url) == 3
    assert broker.path(broker.nats.seed_file).is_file()
    assert broker.http is not None
    assert (broker.http.host, broker.http.port) == (spec.broker.http_host, spec.broker.http_port)
    ops = load_ops_config(out / "ops" / "ops.toml")
    assert ops.agencies == sorted(a.id for a in spec.agencies)
    assert ops.nats.url == broker.nats.url
    assert ops.path(ops.nats.seed_file) == out / "ops" / "nats.nk"
    assert ops.path(ops.nats.tls_ca_file or "").is_file()  # copied from --nats-ca
    assert (ops.auth.issuer, ops.auth.audience) == (spec.token_issuer, "bridge:ops")
    assert ops.path(ops.auth.public_key_file or "").is_file()
    assert (ops.http.host, ops.http.port) == (spec.ops.http_host, spec.ops.http_port)
    assert ops.alerts.webhook_url == spec.ops.alert_webhook_url
    assert load_provision_config(out / "operator" / "provision.toml").agencies == sorted(
        a.id for a in load_spec(SPEC).agencies
    )

    agencies = sorted(p.name for p in (out / "agencies").iterdir())
    assert agencies == sorted(a.id for a in load_spec(SPEC).agencies)
    for agency in agencies:
        home = out / "agencies" / agency
        config = load_adapter_config(home / "adapter.toml")
        assert config.agency == agency
        for name in (
            "nats.nk",
            "token-signing.key",
            "local-ref.key",
            "directory.bin",
            "policy.bin",
            "anchor.pub.json",
        ):
            assert (home / name).is_file(), name
        assert config.path(config.nats.tls_ca_file or "").is_file()  # copied from --nats-ca
        # Only this agency's private parts: its keys, no other agency's, no operator secret.
        names = {p.name for p in home.rglob("*")}
        assert not any(other in name for name in names for other in agencies if other != agency)
        assert "anchor.key" not in names
        assert "nats-admin.nk" not in names

    secrets = [
        out / "operator" / "federation" / "anchor.key",
        out / "operator" / "nats-admin.nk",
        out / "broker" / "nats.nk",
        out / "broker" / "audit.key",
        out / "ops" / "nats.nk",
        out / "ops" / "token-signing.key",
        *(out / "agencies").glob("*/nats.nk"),
        *(out / "agencies").glob("*/keys/*.key"),
        *(out / "agencies").glob("*/webhook.secret"),
        *(out / "agencies").glob("*/local-ref.key"),
    ]
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for seed in [p for p in secrets if p.suffix == ".nk"]:
        # Each identity's seed exists exactly once in the whole deployment.
        text = seed.read_bytes()
        holders = [p for p in out.rglob("*") if p.is_file() and p.read_bytes() == text]
        assert holders == [seed]


def test_bridge_init_refuses_an_existing_directory_and_a_bad_spec(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConfigError) as exists:
        init_deployment(load_spec(SPEC), out)
    assert exists.value.reason == "init.exists"
    assert list(out.iterdir()) == []

    bad = tmp_path / "bad.toml"
    text = SPEC.read_text()
    bad.write_text(text.replace('webhook_url = "https://', 'webhook_urls = "https://'))
    with pytest.raises(ConfigError) as unknown:
        load_spec(bad)
    assert unknown.value.reason == "init.spec"
    bad.write_text(text.replace('name = "nats-3"', 'name = "nats-2"'))
    with pytest.raises(ConfigError):
        load_spec(bad)


def test_bridge_init_refuses_a_bad_policy_with_the_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = (DEPLOY / "policy.example.toml").read_text()
    spec = tmp_path / "federation.toml"
    spec.write_text(SPEC.read_text())
    assert 'policy = "policy.example.toml"' in spec.read_text()
    federation = load_spec(spec).federation
    out = tmp_path / "out"
    for text, reason in (
        (policy.replace("[[flows]]", "[[flows]", 1), "policy.syntax"),
        (policy.replace('from = "jobcenter"', 'from = "ministry"', 1), "policy.unknown_name"),
        (policy.replace(f'"{federation}"', '"kreis-soest"', 1), "policy.federation"),
    ):
        assert text != policy
        (tmp_path / "policy.example.toml").write_text(text)
        assert main(["init", "--spec", str(spec), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.strip().endswith(f"[{reason}]")
        if reason != "policy.federation":
            pairs = zip(policy.splitlines(), text.splitlines(), strict=True)
            changed = next(i for i, (a, b) in enumerate(pairs, 1) if a != b)
            assert f"policy.example.toml: line {changed}: " in err
        assert not out.exists()  # nothing half-written to trip over the next attempt


async def test_ops_starts_with_the_config_and_identity_bridge_init_writes(tmp_path: Path) -> None:
    """ops reads a real server with init's accounts, with only the cluster's address replaced
    (one local server without TLS instead of the three nodes), and serves an init ops token."""
    spec = load_spec(SPEC)
    out = tmp_path / "out"
    result = init_deployment(spec, out)
    nats_dir = tmp_path / "nats"
    nats_dir.mkdir()
    shutil.copy(out / "nats" / "accounts.conf", nats_dir / "accounts.conf")
    port = free_port()
    config_file = nats_dir / "local.conf"
    config_file.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'jetstream {{ store_dir: "{nats_dir / "store"}" }}\n'
        'include "accounts.conf"\n'
    )
    server = NatsServer(
        config_file=config_file,
        log_file=nats_dir / "nats.log",
        run_dir=nats_dir / "run",
        host="127.0.0.1",
        port=port,
    )
    await server.start()
    try:
        ids = sorted(a.id for a in spec.agencies)
        await provision_at(
            server.url, out / "operator" / "nats-admin.nk", ids, ProvisionSettings(replicas=1)
        )
        config = load_ops_config(result.ops_config)
        config = msgspec.structs.replace(
            config,
            nats=msgspec.structs.replace(config.nats, url=server.url, tls_ca_file=None),
            http=msgspec.structs.replace(config.http, host="127.0.0.1", port=0),
        )
        token = mint_token(
            out / "ops" / "token-signing.key",
            issuer=config.auth.issuer,
            audience=config.auth.audience,
            subject="operator",
            scopes=["ops:read"],
        )
        async with Ops(config) as ops, aiohttp.ClientSession() as session:
            end = time.monotonic() + 30
            while not ops.ready():
                assert time.monotonic() < end, "ops not ready within 30s"
                await asyncio.sleep(0.1)
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(f"{ops.url}/v1/health", headers=headers) as response:
                assert response.status == 200
                health = await response.json()
            assert [a["agency"] for a in health["agencies"]] == ids
            async with session.get(f"{ops.url}/v1/health") as response:
                assert response.status == 401
    finally:
        await server.stop()


def test_bridge_init_sets_up_an_agency_behind_its_own_leaf_node(tmp_path: Path) -> None:
    spec = load_spec(SPEC)
    leafy = "spdi-unna"
    nodes = [msgspec.structs.replace(n, leaf_port=7422) for n in spec.nats.nodes]
    spec = msgspec.structs.replace(
        spec,
        nats=msgspec.structs.replace(spec.nats, nodes=nodes),
        agencies=[msgspec.structs.replace(a, leaf=a.id == leafy) for a in spec.agencies],
    )
    ca = ThrowawayCA(tmp_path / "pki")
    out = tmp_path / "out"
    init_deployment(spec, out, nats_ca=ca.ca_file)

    nats_dir = out / "nats"
    shutil.copy(ca.ca_file, nats_dir / "tls" / "ca.pem")
    for node in node_names():
        ca.issue(node)
        for suffix in (".pem", ".key"):
            shutil.copy(ca.directory / f"{node}{suffix}", nats_dir / "tls" / f"{node}{suffix}")
    for config in sorted(nats_dir.glob("nats-*.conf")):
        assert "leafnodes {" in config.read_text()
        result = nats_server_accepts(config)
        assert result.returncode == 0, result.stdout + result.stderr
    assert f"leaf-{leafy}" in (nats_dir / "accounts.conf").read_text()
    assert load_provision_config(out / "operator" / "provision.toml").leaf_agencies == [leafy]

    home = out / "agencies" / leafy
    assert not (home / "nats.nk").exists()  # only the leaf talks to the hub
    assert stat.S_IMODE((home / "leaf-hub.nk").stat().st_mode) == 0o600
    adapter = load_adapter_config(home / "adapter.toml")
    assert adapter.nats.hub_domain == "hub"
    # The commands LEAF-SETUP.txt gives, as the agency runs them from its directory.
    setup = (home / "LEAF-SETUP.txt").read_text()
    assert "tls://nats-1.bridge.kreis-unna.example:7422" in setup
    leaf = home / "leaf"
    argv = ["nats", "leaf-config", "--state", str(leaf), "--agency", leafy, "--port", "4222"]
    argv += [f"--hub=tls://{node.host}:7422" for node in spec.nats.nodes]
    argv += ["--hub-seed", str(home / "leaf-hub.nk"), "--hub-ca", str(home / "nats-ca.pem")]
    assert main(argv) == 0
    assert adapter.path(adapter.nats.seed_file).is_file()  # the adapter's seed for the leaf
    result = nats_server_accepts(leaf / "nats" / "nats-server.conf")
    assert result.returncode == 0, result.stdout + result.stderr
