"""`bridge policy sign`: the operator signs a reviewed policy file as the next serial.

The signed policy lives in the federation directory beside the key directory (`policy.bin`
next to `directory.bin`) and travels the same way to every broker and adapter host. The serial
is recorded (`policy.serial`) before the file is written: a lost serial is harmless, two
different policies with one serial are not.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final

from .._files import write_file
from ..errors import BridgeError, ConfigError, PolicyFileError
from ..federation.directory import load_anchor
from ..federation.operator import ANCHOR_PUB, load_anchor_pair, load_draft
from ._parse import MAX_POLICY_BYTES
from ._signed import Policy, PolicySerialState, load_policy, load_policy_file, sign_policy

__all__ = ["POLICY_SERIAL", "SIGNED_POLICY", "read_policy_source", "sign_policy_file"]

SIGNED_POLICY: Final = "policy.bin"
POLICY_SERIAL: Final = "policy.serial"


def read_policy_source(path: Path) -> str:
    """The text of a policy file, bounded and decoded; `PolicyFileError` if it cannot be."""
    try:
        if path.stat().st_size > MAX_POLICY_BYTES:
            raise PolicyFileError(f"{path}: a policy file may be at most {MAX_POLICY_BYTES} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyFileError(
            f"cannot read policy file {path}: {exc.strerror}", reason="policy.missing"
        ) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyFileError(f"{path}: the policy file is not UTF-8") from exc


def _signed_serial(path: Path, directory: Path) -> int:
    """The serial of a policy we signed before (0 if none), refusing a foreign file there."""
    if not path.exists():
        return 0
    try:
        return load_policy_file(path, load_anchor(directory / ANCHOR_PUB)).serial
    except BridgeError as exc:
        raise ConfigError(
            f"{path} exists but is not a policy signed by this anchor; move it away",
            reason="policy.signed_invalid",
        ) from exc


def sign_policy_file(
    directory: Path,
    source_path: Path,
    *,
    passphrase: bytes | None = None,
    out: Path | None = None,
    now: int | None = None,
) -> tuple[Policy, Path]:
    """Check the policy file, sign it as the next serial and write it; return what was written."""
    source = read_policy_source(source_path)
    target = directory / SIGNED_POLICY if out is None else out
    anchor, record = load_anchor_pair(directory, passphrase)
    state = PolicySerialState(directory / POLICY_SERIAL)
    previous = max(
        state.highest(),
        *(_signed_serial(p, directory) for p in {directory / SIGNED_POLICY, target}),
    )
    at = int(time.time()) if now is None else now
    data, unchecked = sign_policy(source, anchor, serial=previous + 1, now=at)
    federation = load_draft(directory).federation
    if unchecked.federation != federation:
        raise ConfigError(
            f"the policy is for federation {unchecked.federation}, this directory signs for "
            f"{federation}",
            reason="policy.federation",
        )
    # Load it as every component will, so a policy they would refuse is never written.
    policy = load_policy(data, record)
    state.record(policy.serial)
    write_file(target, data, mode=0o644)
    return policy, target
