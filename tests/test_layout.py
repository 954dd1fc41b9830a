"""The code layout of /work/shared/architecture.md, checked: services import capabilities,
capabilities the ground floor, nothing imports upward, and the former top-level modules are gone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import bridge

ROOT = Path(bridge.__file__).parent
CAPABILITIES = ("nats", "federation", "policy", "consent", "audit")
GROUND = ("crypto", "wire", "ids", "errors")
ABOVE = ("broker", "adapters", "ops", "up", "bench", "cli", "deploy", "demo", "config")


def _imports(package: str) -> set[str]:
    """The top-level parts of `bridge` that the modules of `package` import."""
    found: set[str] = set()
    paths = [ROOT / f"{package}.py"] if (ROOT / f"{package}.py").exists() else []
    paths += sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else []
    for path in paths:
        depth = len(path.relative_to(ROOT).parts) - 1  # packages between bridge/ and the module
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > depth:
                names = [node.module] if node.module else [a.name for a in node.names]
                found.update(name.split(".")[0] for name in names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bridge."):
                found.add((node.module or "").split(".")[1])
            elif isinstance(node, ast.Import):
                found.update(
                    a.name.split(".")[1] for a in node.names if a.name.startswith("bridge.")
                )
    found.discard(package)
    return found


def test_capabilities_never_import_a_service_or_the_command_line() -> None:
    for package in (*CAPABILITIES, *GROUND):
        assert _imports(package).isdisjoint(ABOVE), package
    for package in GROUND:
        assert _imports(package).isdisjoint(CAPABILITIES), package


def test_the_broker_and_the_adapters_use_the_policy_and_consent_packages() -> None:
    for service in ("broker", "adapters"):
        assert {"policy", "consent", "nats", "federation"} <= _imports(service), service
    assert "ops" not in _imports("broker") | _imports("adapters")


def test_the_former_top_level_modules_are_gone() -> None:
    for name in ("natsd", "natsauth", "provision", "transport", "subjects", "federation"):
        assert not (ROOT / f"{name}.py").exists(), name
    assert not (ROOT / "directory.py").exists()
    for package in (*CAPABILITIES, "broker", "adapters", "ops"):
        assert (ROOT / package / "__init__.py").exists(), package
