"""The compose file, the Kubernetes manifests and the systemd units in deploy/ fit the code.

`test_deploy.py` checks the configurations; this checks what starts the processes: every
manifest parses, every bridge command in it is one the CLI accepts, every file it takes from
`bridge init`'s output is one `bridge init` writes, and every NATS image is new enough for
what bridge asks of the server.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.cli import build_parser
from bridge.deploy import init_deployment, load_spec

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SPEC = DEPLOY / "federation.example.toml"
# Leaf nodes (docs/nats.md) need this on the hub too; per-message TTLs need 2.11.
NATS_MINIMUM = (2, 14)
# compose.yaml runs a second broker on a copy of broker/ the operator makes (its comment says so).
COPIES = {"generated/broker-b"}


def manifests() -> dict[str, list[dict[str, Any]]]:
    found = {}
    for path in [DEPLOY / "compose.yaml", *sorted((DEPLOY / "kubernetes").glob("*.yaml"))]:
        found[path.name] = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of a Kubernetes object, or the services of the compose file."""
    if "services" in doc:
        return [{"x-name": name, **service} for name, service in doc["services"].items()]
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {})
    pod = pod.get("template", {}).get("spec", pod)
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def bridge_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every bridge process deploy/ starts."""
    commands = []
    for name, docs in manifests().items():
        for doc in docs:
            for container in containers(doc):
                if container.get("image", "").startswith("bridge:"):
                    argv = container.get("args") or container.get("command")
                    assert isinstance(argv, list), (name, container)
                    commands.append(
                        (f"{name}:{container.get('name', container.get('x-name'))}", argv)
                    )
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart=") and "/bridge " in line:
                argv = shlex.split(line.removeprefix("ExecStart=").replace("%i", "spdi-unna"))
                commands.append((unit.name, argv[1:]))
    return commands


def test_every_manifest_parses_and_names_its_objects() -> None:
    found = manifests()
    assert set(found) >= {"compose.yaml", "nats.yaml", "broker.yaml", "adapter.yaml", "ops.yaml"}
    for name, docs in found.items():
        assert docs, name
        for doc in docs:
            if name == "compose.yaml":
                assert doc["services"]
                continue
            assert {"apiVersion", "kind", "metadata"} <= set(doc), name
            if doc["kind"] != "Namespace":
                assert doc["metadata"].get("namespace") == "bridge", (name, doc["kind"])


@pytest.mark.parametrize(("where", "argv"), bridge_commands(), ids=lambda v: str(v))
def test_every_bridge_command_in_deploy_is_one_the_cli_accepts(where: str, argv: list[str]) -> None:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as refused:  # argparse refuses by exiting
        pytest.fail(f"{where}: bridge {' '.join(argv)} refused ({refused.code})")
    assert args.command in {"adapter", "broker", "ops", "nats"}, where


def test_the_deployment_starts_every_role() -> None:
    started = {argv[0] for _, argv in bridge_commands()}
    assert started == {"adapter", "broker", "ops", "nats"}


def test_every_file_deploy_mounts_is_one_bridge_init_writes(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    init_deployment(load_spec(SPEC), out)
    wanted = set()
    for path in [DEPLOY / "compose.yaml", *sorted((DEPLOY / "kubernetes").glob("*.yaml"))]:
        wanted |= set(re.findall(r"(generated/[\w./-]+)", path.read_text()))
    assert wanted
    for mount in sorted(wanted - COPIES):
        target = tmp_path / mount.removeprefix("./")
        assert target.exists(), f"{mount} is not in what bridge init writes"
    for unit in sorted((DEPLOY / "systemd").glob("bridge-*.service")):
        for path in re.findall(r"/etc/bridge/([\w./%-]+\.(?:toml|conf))", unit.read_text()):
            # The units read init's directories as installed under /etc/bridge/.
            installed = path.replace("agencies/%i", "agencies/spdi-unna").replace("%i", "nats-1")
            assert (out / installed).is_file(), f"{unit.name}: {path}"


def test_every_nats_image_is_new_enough_for_bridge() -> None:
    images = []
    for docs in manifests().values():
        for doc in docs:
            images += [
                c["image"] for c in containers(doc) if c.get("image", "").startswith("nats:")
            ]
    assert len(images) >= 4  # three compose nodes and the StatefulSet
    for image in images:
        version = re.fullmatch(r"nats:(\d+)\.(\d+)(?:\.\d+)?(?:-alpine)?", image)
        assert version, image
        assert (int(version[1]), int(version[2])) >= NATS_MINIMUM, image


def test_the_adapter_service_keeps_a_client_on_one_instance() -> None:
    """Uploads in parts and pulled items live with the instance that took them (the spool is
    local): with two replicas, the Service must not spread one client's calls over both."""
    docs = manifests()["adapter.yaml"]
    (service,) = [doc for doc in docs if doc["kind"] == "Service"]
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] > 1  # the reason it matters
